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


def test_opening_connections_have_their_own_places_under_the_same_limits():
    limiter = ConnectionLimiter(max_total=10, max_per_ip=2)
    limiter.acquire("1.2.3.4")
    limiter.acquire("1.2.3.4")
    # An address at its client limit may still send its sessions' requests...
    assert limiter.refusal("1.2.3.4") is not None and limiter.refusal("1.2.3.4", opening=True) is None
    limiter.acquire("1.2.3.4", opening=True)
    limiter.acquire("1.2.3.4", opening=True)
    # ...but no more half-open connections than clients.
    refusal = limiter.refusal("1.2.3.4", opening=True)
    assert refusal is not None and "still sending their request" in refusal and "--max-connections-per-ip" in refusal
    assert (limiter.total, limiter.opening) == (2, 2)
    limiter.release("1.2.3.4", opening=True)
    limiter.release("1.2.3.4", opening=True)
    assert limiter.opening == 0 and limiter.opening_per_ip == {} and limiter.per_ip == {"1.2.3.4": 2}
