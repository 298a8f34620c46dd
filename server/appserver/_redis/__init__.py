"""
The Redis backplane, by job. Imported only with C{--backplane redis://}
(or its TLS and Sentinel forms).

From the bottom up (each module imports only those above it in this list):

  - L{location <appserver._redis.location>}: the C{redis://} URL (and
    C{rediss://}, C{redis+sentinel://}, C{rediss+sentinel://});
  - L{resp <appserver._redis.resp>}: Redis's wire protocol;
  - L{tls <appserver._redis.tls>}: TLS settings from the URL's files;
  - L{sentinel <appserver._redis.sentinel>}: finding and checking the
    primary on every connection (Sentinels, TLS);
  - L{scripts <appserver._redis.scripts>}: the Lua scripts and the key
    layout they share;
  - L{keys <appserver._redis.keys>}: node ids, key and channel names;
  - L{codec <appserver._redis.codec>}: what nodes send each other;
  - L{startup <appserver._redis.startup>}: the blocking check before
    listening;
  - L{connection <appserver._redis.connection>}: the txredisapi
    connections, kept up;
  - L{presence <appserver._redis.presence>}: counts, rooms, heartbeats,
    reaping;
  - L{replay <appserver._redis.replay>}: catch-up and recovery from
    Redis's Streams;
  - L{outbox <appserver._redis.outbox>}: what a node published while
    Redis could not position it, kept (bounded) until Redis is back;
  - L{routing <appserver._redis.routing>}: Ajax requests carried to their
    session's node;
  - L{backplane <appserver._redis.backplane>}: L{RedisBackplane
    <appserver._redis.backplane.RedisBackplane>}, which composes them.

Private: applications import from L{appserver}.

Tests: tests/test_redis_codec.py, tests/test_redis_decisions.py,
tests/test_redis_outbox.py (no server); tests/test_redis_cluster.py,
tests/test_redis_cluster_browser.py, tests/test_redis_outage.py,
tests/test_redis_sentinel.py, tests/test_redis_tls.py (real Redis);
tests/test_redis_script_loading.py (both).
"""

__all__: list[str] = []
