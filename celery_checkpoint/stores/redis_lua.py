"""The Lua scripts of the Redis store, each opening with its contract.

Times come from the server's ``TIME`` so that leases do not depend on the
clocks of the workers' hosts. Keys arrive in KEYS, except the save hash of a
record whose fence the caller cannot know (CLAIM, READ, DELETE build it from
the prefix in ARGV): on Redis Cluster the store needs a key prefix with a hash
tag, e.g. ``{checkpoint}:``, which puts every key of the store in one slot.

Record hash (``task:<id>``) fields: name status owner pid fence resumes
created_at ectype ecenc parked_at resend_at resends: what changes only when a run starts,
stops or changes hands. The recorded call (the envelope a resume sends) is a
string of its own (``call:<id>``): it is the one long value of a record, and
a hash holding a value longer than ``hash-max-listpack-value`` (64 bytes by
default) is kept as a hash table, ~20 allocations to build and as many to
free on every task instead of one listpack (figure 5: +2.2-2.5 % in
interleaved A/B runs of real workers; BENCHMARKS.md). Records written before
that keep ``env`` in the hash, and readers take either. The last save lives
in a hash of its own named after the fence of the run that owns the record
(``save:<id>:<fence>``): state ctype cenc progress saved_at saves. A save
writes it with plain commands and no script (see ``RedisStore.update``): a value passed to a script is copied
into the Lua VM and out again, ~1.5 ns per byte (~100 us for 64 KB against
~2 us for a plain write), and a script call costs ~10 us of server time
whatever it does. A run that lost its fence writes into a key no one reads.
Every script that moves the fence renames the save hash along with it.
"""

from .base import MAX_RESEND_DOUBLINGS

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

# with_save: the record's and its save's fields and its call ('env'), flat,
# appended to ``out`` (a missing save leaves its fields out, which the reader reports).
# move_save: carry the save hash from one fence to the next.
SAVES = """
local function with_save(record, save, call, out)
  for _, v in ipairs(redis.call('HGETALL', record)) do out[#out + 1] = v end
  for _, v in ipairs(redis.call('HGETALL', save)) do out[#out + 1] = v end
  local env = redis.call('GET', call)
  if env then
    out[#out + 1] = 'env'
    out[#out + 1] = env
  end
  return out
end
local function move_save(from, to)
  if redis.call('EXISTS', from) == 1 then redis.call('RENAME', from, to) end
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
# KEYS[4] released set, KEYS[5] owners set,
# KEYS[6] save at the expected fence, KEYS[7] save at the next one, KEYS[8] call,
# KEYS[9] waiting index
# ARGV[1] task id, ARGV[2] expected fence, ARGV[3] new owner, ARGV[4] pid
# -> the record and its save (see SAVES), or false when the fence moved
TAKEOVER = (
    SAVES
    + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return false end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'pid', ARGV[4], 'status', 'running')
redis.call('HDEL', KEYS[1], 'resends')
move_save(KEYS[6], KEYS[7])
return with_save(KEYS[1], KEYS[7], KEYS[8], {})
"""
)

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] owners set, KEYS[4] save at the first fence,
# KEYS[5] done marker, KEYS[6] call
# ARGV[1] task id, ARGV[2] owner, ARGV[3] pid, ARGV[4] task name,
# ARGV[5..7] state/ctype/cenc, ARGV[8..10] envelope/ectype/ecenc,
# ARGV[11] progress ('' for none), ARGV[12] saved_at, ARGV[13] the first fence
# -> 1 when created, 0 when a record already exists or the task id is done
# Constants are strings: a Lua number passed to redis.call is formatted with
# printf on every call (~1.5 us of this script's ~13 us server time).
CREATE = """
if redis.call('EXISTS', KEYS[1], KEYS[5]) > 0 then return 0 end
redis.call('HSET', KEYS[1],
  'name', ARGV[4], 'status', 'running', 'owner', ARGV[2], 'pid', ARGV[3],
  'fence', ARGV[13], 'resumes', '0', 'created_at', ARGV[12], 'ectype', ARGV[9], 'ecenc', ARGV[10])
redis.call('SET', KEYS[6], ARGV[8])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'state', ARGV[5], 'ctype', ARGV[6], 'cenc', ARGV[7],
  'progress', ARGV[11], 'saved_at', ARGV[12], 'saves', '1')
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] done marker, KEYS[4] released set,
# KEYS[5] save at the fence, KEYS[6] call
# ARGV[1] task id, ARGV[2] fence, ARGV[3] done marker TTL in ms
# -> 1 when deleted, 0 when fenced out
# The done marker is written first: on a full server (maxmemory) that write
# is the one refused, and then nothing else has changed.
FINISH = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""

# FINISH's keys and its first two arguments; KEYS[3], the done marker, is left
# alone: FINISH without the marker (``self.replace()``: the replacement runs
# under the same task id and must not be dropped as a late delivery).
# -> 1 when deleted, 0 when fenced out
DISCARD = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] unowned set,
# KEYS[4] save at the fence, KEYS[5] save at the next one, KEYS[6] waiting index,
# KEYS[7] call
# ARGV[1] task id, ARGV[2] fence, ARGV[3] new status
#   ('waiting' | 'released' | 'queued' | 'poisoned'); a parked record has no owner.
#   Released and queued records join the unowned set the scan reads.
# ARGV[4] (waiting) ms after which the record may be re-sent ('' = never):
#   it joins the waiting index, scored with that time, which the scan reads
#   up to now, so pending retries cost the scan nothing until they are overdue.
# ARGV[5..7] a new recorded call and its ectype/ecenc ('' = keep the recorded one)
# ARGV[8] the resume count to put back ('' = unchanged)
# -> 1 when parked, 0 when fenced out
PARK = (
    NOW_MS
    + SAVES
    + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
local now = now_ms()
redis.call('HINCRBY', KEYS[1], 'fence', 1)
move_save(KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'owner', '', 'pid', 0, 'parked_at', now)
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[3] == 'released' or ARGV[3] == 'queued' then
  redis.call('SADD', KEYS[3], ARGV[1])
else
  redis.call('SREM', KEYS[3], ARGV[1])
end
if ARGV[3] == 'waiting' and ARGV[4] ~= '' then
  local at = now + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'resend_at', at)
  redis.call('ZADD', KEYS[6], at, ARGV[1])
else
  redis.call('HDEL', KEYS[1], 'resend_at')
  redis.call('ZREM', KEYS[6], ARGV[1])
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[7], ARGV[5])
  redis.call('HSET', KEYS[1], 'ectype', ARGV[6], 'ecenc', ARGV[7])
  redis.call('HDEL', KEYS[1], 'env')
end
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'resumes', ARGV[8])
end
return 1
"""
)

# KEYS[1] waiting index  -> the task ids whose resend time has passed
DUE = (
    NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms())
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

# malformed(h, save, call): why CLAIM cannot read the record whose HMGET is
# ``h`` (status owner resumes parked_at fence resend_at resends), its save hash
# ``save`` and its call ``call``; nil when it can. Integers must be what
# HINCRBY takes (no leading zero, within 64 bits); the keys of the right type.
MALFORMED = """
local function not_integer(name, value, required)
  if value == false then
    if required then return name .. ' is missing' end
    return nil
  end
  if value == '0' or (#value < 19 and string.match(value, '^%-?[1-9]%d*$')) then return nil end
  return name .. ' is not an integer: ' .. value
end
local function not_number(name, value)
  if value == false or tonumber(value) ~= nil then return nil end
  return name .. ' is not a number: ' .. value
end
local function not_a(kind, key)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == kind then return nil end
  return key .. ' is a ' .. found .. ', not a ' .. kind
end
local function malformed(h, save, call)
  return not_integer('fence', h[5], true) or not_integer('resumes', h[3], true)
    or not_integer('resends', h[7], false) or not_number('parked_at', h[4])
    or not_number('resend_at', h[6]) or not_a('hash', save) or not_a('string', call)
end
"""

# KEYS[1] record, KEYS[2] expected owner's set, KEYS[3] claimer's set,
# KEYS[4] released set, KEYS[5] owners set, KEYS[6] workers hash, KEYS[7] call,
# KEYS[8] waiting index
# ARGV[1] task id, ARGV[2] expected owner, ARGV[3] claimer, ARGV[4] max resumes,
# ARGV[5] released grace in ms, ARGV[6] queued grace in ms ('' = never): how long
# after it was parked an unowned released / queued record becomes claimable,
# ARGV[7] the record's save hash name without its fence ('<prefix>save:<id>:'),
# ARGV[8] the fence the caller's peek saw ('' = any): a record whose fence moved
# since is not claimed and not changed (a pool process of the claimer's own worker
# may have taken it over: same owner, new fence).
# Claiming an unowned queued record again is a re-send, not a resume; so is
# claiming a waiting one past its resend_at (its retry message was lost), which
# ARGV[6] = '' forbids too. Each re-send doubles the grace before the next one
# (up to 2^MAX_RESEND_DOUBLINGS times; 'resends' counts them until a run takes
# the record over): a queue no worker reads gets a few copies, not one per grace.
# Index entries of records that are not waiting any more are dropped here.
# A script that fails halfway keeps the writes it made (Redis has no rollback),
# so everything CLAIM compares, counts with or reads back is checked before its
# first write: a record it cannot read is reported and left as it was.
# -> {0} gone or not claimable, {1, record...} claimed, {2, record...} poisoned,
#    {3, reason} malformed (nothing changed)
CLAIM = (
    NOW_MS
    + SAVES
    + MALFORMED
    + f"local MAX_RESEND_DOUBLINGS = {MAX_RESEND_DOUBLINGS}\n"
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'owner', 'resumes', 'parked_at', 'fence', 'resend_at',
  'resends')
if not h[1] then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  return {0}
end
local save_now = ARGV[7] .. (h[5] or '')
local bad = malformed(h, save_now, KEYS[7])
if bad then return {3, bad} end
if ARGV[8] ~= '' and h[5] ~= ARGV[8] then return {0} end
local now = now_ms()
local parked_for = now - tonumber(h[4] or 0)
local save_next = ARGV[7] .. (tonumber(h[5]) + 1)
local resend = false
local resends = tonumber(h[7] or 0)
if h[1] == 'queued' and h[2] == '' then
  resend = ARGV[6] ~= '' and parked_for >= tonumber(ARGV[6]) * 2 ^ math.min(resends, MAX_RESEND_DOUBLINGS)
  if not resend then return {0} end
elseif h[1] == 'waiting' and h[2] == '' then
  resend = ARGV[6] ~= '' and h[6] ~= false and now >= tonumber(h[6])
  if not resend then return {0} end
  redis.call('ZREM', KEYS[8], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('HDEL', KEYS[1], 'resend_at')
end
if resend then
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'fence', 1)
  redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'resends', resends + 1)
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[3])
  move_save(save_now, save_next)
  return with_save(KEYS[1], save_next, KEYS[7], {1})
end
local claimable = false
if h[1] == 'released' then
  claimable = parked_for >= tonumber(ARGV[5])
elseif (h[1] == 'running' or h[1] == 'queued') and h[2] ~= '' and h[2] == ARGV[2] then
  -- a worker may always claim its own runs: it knows when one was lost
  claimable = h[2] == ARGV[3] or not alive(KEYS[6], h[2])
end
local outcome = tonumber(h[3]) >= tonumber(ARGV[4]) and 2 or 1
-- Every check that can fail is behind: the writes start (an index entry of a record not waiting goes).
redis.call('ZREM', KEYS[8], ARGV[1])
if not claimable then return {0} end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
move_save(save_now, save_next)
if outcome == 2 then
  redis.call('HSET', KEYS[1], 'status', 'poisoned')
else
  redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', ARGV[3], 'pid', 0)
  redis.call('HDEL', KEYS[1], 'resends')
  redis.call('HINCRBY', KEYS[1], 'resumes', 1)
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[3])
end
return with_save(KEYS[1], save_next, KEYS[7], {outcome})
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

# KEYS[1] record, KEYS[2] owner's set, KEYS[3] released set, KEYS[4] call,
# KEYS[5] waiting index
# ARGV[1] task id, ARGV[2] owner the caller read, ARGV[3] save hash name without fence
# -> 1 deleted, 0 absent, -1 the owner changed (read again)
DELETE = """
local h = redis.call('HMGET', KEYS[1], 'owner', 'fence')
if not h[1] then return 0 end
if h[1] ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1], ARGV[3] .. (h[2] or ''), KEYS[4])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
"""

# KEYS[1] record, KEYS[2] call
# ARGV[1] the record's save hash name without its fence ('<prefix>save:<id>:')
# -> the record and its save (see SAVES), empty when there is no record
READ = (
    SAVES
    + """
local fence = redis.call('HGET', KEYS[1], 'fence')
if not fence then return redis.call('HGETALL', KEYS[1]) end
return with_save(KEYS[1], ARGV[1] .. fence, KEYS[2], {})
"""
)
