"""
The Lua scripts the Redis backplane runs: each is one round trip and atomic,
so a position, its history entry and its fan-out can never be seen apart.

Keys (C{P} is the prefix, C{appserver} by default):

  - C{P:epoch}, C{P:pos}: the cluster's epoch and last position.
  - C{P:floor}: Redis's history starts after this position (it is the
    position at which Redis last started without data).
  - C{P:streams}: a hash, C{l:<stream>} the stream's last position and
    C{g:<stream>} the highest of its positions no longer kept.
  - C{P:global}, C{P:s:<channel>}: a Stream per stream; entry id C{<pos>-0},
    fields C{p} (the JSON envelope, C{pos} included), C{k} (the conflation
    key as JSON) and C{t} (milliseconds since the epoch when published).
  - C{P:i:<length of stream>:<stream>:<idempotency key>}: the position of
    the message published on that stream with that idempotency key; it
    expires after the history age.
  - C{P:nodes}: a sorted set, node id scored by its last heartbeat (Redis's
    clock, in milliseconds).
  - C{P:node:<id>}: a hash, C{counts} (JSON, clients per transport) and
    C{r:<room>} (JSON list of the node's members' names in that room).

Their names for one cluster are in L{appserver._redis.keys}; the formats of
what they write, in L{appserver._redis.codec}.

Tests: tests/test_redis_cluster.py (they need a real Redis);
tests/test_redis_decisions.py for L{proposed_start}.
"""

from __future__ import annotations

import hashlib

__all__ = ["Script", "INIT", "PUBLISH", "REPLAY", "SYNC_NODE", "CLUSTER_VIEW", "REAP", "LEAVE", "GAP", "ALL",
           "POSITION_GAP", "proposed_start"]

#: Positions restart this far above what the proposing node has seen when
#: Redis comes back without its data, so that a message in flight at the time
#: cannot share a position with a new one.
POSITION_GAP = 1000


def proposed_start(position: int) -> int:
    """
    The start position a node proposes to L{INIT} and L{PUBLISH} (used only
    when Redis has no epoch): C{0} for a node that has seen nothing, else
    L{POSITION_GAP} above its last position.

    @param position: the last position this node handed out or saw.
    """
    return position + POSITION_GAP if position else 0


class Script:
    """
    A Lua script and its SHA1, for C{EVALSHA}.
    """

    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source.strip()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


# Shared by INIT and PUBLISH: a Redis without an epoch (new, or restarted
# without its data) gets the proposing node's epoch, and positions restart
# above what that node has seen, so no client ever sees a position twice.
_ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  local start = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2]))
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], start)
  redis.call('SET', KEYS[3], start)
end
"""

#: KEYS epoch, pos, floor. ARGV proposed epoch, proposed start position.
#: Returns {epoch, pos, floor}.
INIT = Script("init", _ENSURE_EPOCH + """
return {epoch, redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]) or '0'}
""")

#: KEYS epoch, pos, floor, streams hash, stream key[, idempotency key]. ARGV
#: proposed epoch, proposed start, stream name, key JSON, envelope JSON
#: without pos, created (ms), history size, history age (ms), bus channel.
#: Returns {epoch, pos}. With an idempotency key that names a publish of the
#: history age, it publishes nothing and returns that publish's position.
PUBLISH = Script("publish", _ENSURE_EPOCH + """
if KEYS[6] then
  local first = redis.call('GET', KEYS[6])
  if first then return {epoch, first} end
end
local pos = redis.call('INCR', KEYS[2])
if KEYS[6] then redis.call('SET', KEYS[6], pos, 'PX', ARGV[8]) end
local payload = string.sub(ARGV[5], 1, -2) .. ',"pos":' .. pos .. '}'
local stream = ARGV[3]
local maxlen = tonumber(ARGV[7])
if maxlen > 0 then
  if redis.call('EXISTS', KEYS[5]) == 0 then
    -- Expired after history-age without a message: what it held is gone.
    local last = redis.call('HGET', KEYS[4], 'l:' .. stream)
    if last then redis.call('HSET', KEYS[4], 'g:' .. stream, last) end
  else
    local n = redis.call('XLEN', KEYS[5])
    if n >= maxlen then
      local old = redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', n - maxlen + 1)
      redis.call('XTRIM', KEYS[5], 'MAXLEN', maxlen - 1)
      redis.call('HSET', KEYS[4], 'g:' .. stream, string.match(old[#old][1], '^%d+'))
    end
  end
  redis.call('XADD', KEYS[5], pos .. '-0', 'p', payload, 'k', ARGV[4], 't', ARGV[6])
  redis.call('PEXPIRE', KEYS[5], ARGV[8])
else
  redis.call('HSET', KEYS[4], 'g:' .. stream, pos)
end
redis.call('HSET', KEYS[4], 'l:' .. stream, pos)
redis.call('PUBLISH', ARGV[9], epoch .. '\\n' .. pos .. '\\n' .. stream .. '\\n' .. ARGV[4] .. '\\n' .. payload)
return {epoch, pos}
""")

#: KEYS epoch, pos, floor, streams hash, then one stream key per stream.
#: ARGV since, upper bound of the first stream (a position or +), then the
#: stream names. Returns {epoch, pos, floor, {last, gone, exists, entries}...}.
REPLAY = Script("replay", """
local since = tonumber(ARGV[1])
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0',
             redis.call('GET', KEYS[3]) or '0'}
for i = 5, #KEYS do
  local stream = ARGV[i - 2]
  local last = tonumber(redis.call('HGET', KEYS[4], 'l:' .. stream) or '0')
  local gone = tonumber(redis.call('HGET', KEYS[4], 'g:' .. stream) or '0')
  local exists = 1
  local entries = {}
  if last > since then
    exists = redis.call('EXISTS', KEYS[i])
    local upper = '+'
    if i == 5 and ARGV[2] ~= '+' then upper = ARGV[2] .. '-0' end
    entries = redis.call('XRANGE', KEYS[i], string.format('%d-0', since + 1), upper)
  end
  out[#out + 1] = {last, gone, exists, entries}
end
return out
""")

#: KEYS nodes, node hash. ARGV node id, hash TTL (ms), full (1: replace
#: everything), counts JSON, then room field / value pairs (an empty value
#: deletes). Returns 0 when an incremental update finds the hash gone (the
#: caller then sends everything), else 1.
SYNC_NODE = Script("sync_node", """
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local now = redis.call('TIME')
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], 'counts', ARGV[4])
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), ARGV[1])
return 1
""")

#: KEYS nodes. ARGV node hash prefix, liveness (ms), asking node, field.
#: Returns {node, value, node, value...} for every other live node (value ''
#: when the node has none).
CLUSTER_VIEW = Script("cluster_view", """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[2]), '+inf')) do
  if node ~= ARGV[3] then
    out[#out + 1] = node
    out[#out + 1] = redis.call('HGET', ARGV[1] .. node, ARGV[4]) or ''
  end
end
return out
""")

#: KEYS nodes. ARGV node hash prefix, liveness (ms). Removes the nodes whose
#: heartbeat is older than the liveness bound and returns
#: {{node, room, names JSON, room, names JSON...}...} so that their members'
#: departure can be announced (by whichever node ran this first).
REAP = Script("reap", """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (ms - tonumber(ARGV[2])))) do
  local fields = redis.call('HGETALL', ARGV[1] .. node)
  local dead = {node}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'r:' then
      dead[#dead + 1] = string.sub(fields[i], 3)
      dead[#dead + 1] = fields[i + 1]
    end
  end
  redis.call('DEL', ARGV[1] .. node)
  redis.call('ZREM', KEYS[1], node)
  out[#out + 1] = dead
end
return out
""")

#: KEYS pos, streams hash. ARGV control channel, control head (C{gap@<node>}),
#: then stream names. Publications of these streams never reached Redis (a
#: node's outbox overflowed during an outage): their last and gone positions
#: move up to the present one, so that no replay across the gap says
#: complete, and every node is told on the control channel, one message per
#: stream (payload C{{"position":P}}). Returns the position.
GAP = Script("gap", """
local pos = tonumber(redis.call('GET', KEYS[1]) or '0')
for i = 3, #ARGV do
  local stream = ARGV[i]
  for _, field in ipairs({'l:' .. stream, 'g:' .. stream}) do
    if tonumber(redis.call('HGET', KEYS[2], field) or '0') < pos then redis.call('HSET', KEYS[2], field, pos) end
  end
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. stream .. '\\n{"position":' .. pos .. '}')
end
return pos
""")

#: KEYS nodes, node hash. ARGV node id. A node leaving on purpose.
LEAVE = Script("leave", """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
""")

#: Every script, loaded into Redis (C{SCRIPT LOAD}) on each connection so
#: that C{EVALSHA} finds them after a Redis restart too.
ALL = (INIT, PUBLISH, REPLAY, SYNC_NODE, CLUSTER_VIEW, REAP, LEAVE, GAP)
