"""
Rate and connection limits.
"""

from appserver._server.limits import ConnectionLimiter, TokenBucket


def test_a_token_bucket_allows_a_burst_then_refuses():
    now = [0.0]
    bucket = TokenBucket(2, 3, lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]


def test_a_token_bucket_refills_at_its_rate_up_to_the_burst():
    now = [0.0]
    bucket = TokenBucket(2, 3, lambda: now[0])
    for _ in range(3):
        bucket.allow()
    now[0] += 0.5
    assert bucket.allow() and not bucket.allow()
    now[0] += 100
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]


def test_a_rate_of_zero_allows_everything():
    bucket = TokenBucket(0, 0, lambda: 0.0)
    assert all(bucket.allow() for _ in range(1000))


def test_the_total_connection_limit_refuses_with_the_option_name():
    limiter = ConnectionLimiter(2, 0)
    limiter.acquire("a")
    limiter.acquire("b")
    assert "--max-connections" in limiter.refusal("c")


def test_the_per_ip_limit_refuses_only_that_address():
    limiter = ConnectionLimiter(0, 1)
    limiter.acquire("a")
    assert "--max-connections-per-ip" in limiter.refusal("a")
    assert limiter.refusal("b") is None


def test_release_frees_the_slot_and_forgets_idle_addresses():
    limiter = ConnectionLimiter(1, 1)
    limiter.acquire("a")
    limiter.release("a")
    assert limiter.refusal("a") is None
    assert limiter.total == 0 and limiter.per_ip == {}


def test_zero_limits_mean_no_limit():
    limiter = ConnectionLimiter(0, 0)
    for _ in range(1000):
        limiter.acquire("a")
    assert limiter.refusal("a") is None
