"""The Lua scripts of the Redis store, each opening with its contract.

Every key a script touches arrives in KEYS (none is built inside Lua), so on
Redis Cluster the store works when the key prefix carries a hash tag, e.g.
``{checkpoint}:``. Times come from the server's ``TIME`` so that leases do
not depend on the clocks of the workers' hosts.

Record hash fields: name status owner pid fence saves resumes progress
saved_at created_at ctype cenc env ectype ecenc parked_at. The state's bytes
live in a string key of their own, so that a save can write them with a plain
``SET`` and the fenced script only ``RENAME``-s them into place: a value
passed to a script is copied into the Lua VM and back, ~1.5 ns per byte
(~100 us for 64 KB, against ~2 us for the ``SET``).
"""

NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(workers, owner)
  local expires = redis.call('HGET', workers, owner)
  return expires ~= false and tonumber(expires) > now_ms()
end
"""

# The record as HGETALL, with the state appended as its 'state' field
# (left out when the state key is missing, which the reader reports).
WITH_STATE = """
local function with_state(record, state_key, out)
  for _, v in ipairs(redis.call('HGETALL', record)) do out[#out + 1] = v end
  local state = redis.call('GET', state_key)
  if state then
    out[#out + 1] = 'state'
    out[#out + 1] = state
  end
  return out
end
"""

# KEYS[1] record, KEYS[2] done marker, KEYS[3] workers hash
# -> {0, done(0|1)} when there is no record
# -> {1, status, owner, pid, fence, owner_alive(0|1)}
PEEK = (
    NOW_MS
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'owner', 'pid', 'fence')
if not h[1] then
  return {0, redis.call('EXISTS', KEYS[2])}
end
return {1, h[1], h[2], h[3], h[4], alive(KEYS[3], h[2]) and 1 or 0}
"""
)

# KEYS[1] record, KEYS[2] old owner's set, KEYS[3] new owner's set,
# KEYS[4] released set, KEYS[5] owners set, KEYS[6] state
# ARGV[1] task id, ARGV[2] expected fence, ARGV[3] new owner, ARGV[4] pid
# -> the record (see WITH_STATE), or false when the fence moved
TAKEOVER = (
    WITH_STATE
    + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return false end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'pid', ARGV[4], 'status', 'running')
return with_state(KEYS[1], KEYS[6], {})
"""
)

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] owners set, KEYS[4] state
# ARGV[1] task id, ARGV[2] owner, ARGV[3] pid, ARGV[4] task name,
# ARGV[5..7] state/ctype/cenc, ARGV[8..10] envelope/ectype/ecenc,
# ARGV[11] progress ('' for none), ARGV[12] saved_at
# -> 1 (fence) when created, 0 when a record already exists
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1],
  'name', ARGV[4], 'status', 'running', 'owner', ARGV[2], 'pid', ARGV[3],
  'fence', 1, 'saves', 1, 'resumes', 0, 'progress', ARGV[11],
  'saved_at', ARGV[12], 'created_at', ARGV[12], 'ctype', ARGV[6], 'cenc', ARGV[7],
  'env', ARGV[8], 'ectype', ARGV[9], 'ecenc', ARGV[10])
redis.call('SET', KEYS[4], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# Sent right behind "SET <incoming> <state bytes> PX <ttl>", in the same write.
# KEYS[1] record, KEYS[2] incoming (named after the writer's fence, so a
# fenced-out writer never touches the current owner's), KEYS[3] state
# ARGV[1] fence, ARGV[2] ctype, ARGV[3] cenc, ARGV[4] progress, ARGV[5] saved_at
# -> the new save count, or false when fenced out (the incoming bytes are dropped)
UPDATE = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
  return false
end
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('PERSIST', KEYS[3])
redis.call('HSET', KEYS[1], 'ctype', ARGV[2], 'cenc', ARGV[3], 'progress', ARGV[4], 'saved_at', ARGV[5])
return redis.call('HINCRBY', KEYS[1], 'saves', 1)
"""

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] done marker, KEYS[4] released set,
# KEYS[5] state
# ARGV[1] task id, ARGV[2] fence, ARGV[3] done marker TTL in ms
# -> 1 when deleted, 0 when fenced out
FINISH = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return 1
"""

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] unowned set
# ARGV[1] task id, ARGV[2] fence, ARGV[3] new status
#   ('waiting' | 'released' | 'queued' | 'poisoned'); a parked record has no owner.
#   Released and queued records join the unowned set the scan reads.
# -> 1 when parked, 0 when fenced out
PARK = (
    NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'owner', '', 'pid', 0, 'parked_at', now_ms())
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[3] == 'released' or ARGV[3] == 'queued' then
  redis.call('SADD', KEYS[3], ARGV[1])
else
  redis.call('SREM', KEYS[3], ARGV[1])
end
return 1
"""
)

# KEYS[1] workers hash
# ARGV[1] worker id, ARGV[2] TTL in ms, ARGV[3] '<node name>|' (1 = first start)
# A worker's first lease ends the leases of its earlier starts on the same node.
LEASE = (
    NOW_MS
    + """
if ARGV[3] ~= '' then
  for _, worker in ipairs(redis.call('HKEYS', KEYS[1])) do
    if worker ~= ARGV[1] and string.sub(worker, 1, #ARGV[3]) == ARGV[3] then
      redis.call('HSET', KEYS[1], worker, 0)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], now_ms() + tonumber(ARGV[2]))
return 1
"""
)

# KEYS[1] workers hash  -> {now_ms, worker, expires_ms, worker, expires_ms, ...}
LEASES = (
    NOW_MS
    + """
local out = {tostring(now_ms())}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
"""
)

# KEYS[1] record, KEYS[2] expected owner's set, KEYS[3] claimer's set,
# KEYS[4] released set, KEYS[5] owners set, KEYS[6] workers hash, KEYS[7] state
# ARGV[1] task id, ARGV[2] expected owner, ARGV[3] claimer, ARGV[4] max resumes,
# ARGV[5] released grace in ms, ARGV[6] queued grace in ms ('' = never): how long
# after it was parked an unowned released / queued record becomes claimable.
# Claiming an unowned queued record again is a re-send, not a resume.
# -> {0} gone or not claimable, {1, record...} claimed, {2, record...} poisoned
CLAIM = (
    NOW_MS
    + WITH_STATE
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'owner', 'resumes', 'parked_at')
if not h[1] then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  return {0}
end
local parked_for = now_ms() - tonumber(h[4] or 0)
if h[1] == 'queued' and h[2] == '' then
  if ARGV[6] == '' or parked_for < tonumber(ARGV[6]) then return {0} end
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'fence', 1)
  redis.call('HSET', KEYS[1], 'owner', ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[3])
  return with_state(KEYS[1], KEYS[7], {1})
end
local claimable = false
if h[1] == 'released' then
  claimable = parked_for >= tonumber(ARGV[5])
elseif (h[1] == 'running' or h[1] == 'queued') and h[2] ~= '' and h[2] == ARGV[2] then
  -- a worker may always claim its own runs: it knows when one was lost
  claimable = h[2] == ARGV[3] or not alive(KEYS[6], h[2])
end
if not claimable then return {0} end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
local outcome = 1
if tonumber(h[3]) >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', 'poisoned')
  outcome = 2
else
  redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', ARGV[3], 'pid', 0)
  redis.call('HINCRBY', KEYS[1], 'resumes', 1)
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[3])
end
return with_state(KEYS[1], KEYS[7], {outcome})
"""
)

# KEYS[1] owner's set, KEYS[2] owners set, KEYS[3] workers hash
# ARGV[1] worker id
# Forgets a dead owner that owns nothing any more.
FORGET = (
    NOW_MS
    + """
if redis.call('SCARD', KEYS[1]) > 0 or alive(KEYS[3], ARGV[1]) then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""
)

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] released set, KEYS[4] state
# ARGV[1] task id, ARGV[2] owner the caller read
# -> 1 deleted, 0 absent, -1 the owner changed (read again)
DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
if owner ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""
