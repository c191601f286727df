"""Lua scripts of the checkpointer. Every script touches the keys of one thread only, all under
the thread's hash tag, so each runs in one slot of a Redis Cluster.

Every script takes the same KEYS, in this order (see ``ThreadKeys.all``):
  [1] cp      hash  member -> checkpoint record           (member = ns US checkpoint id)
  [2] refs    hash  member -> blob fields joined by RS    (what the checkpoint's channels hold)
  [3] ix      zset  members, score 0, ordered by lex      (newest = last in its namespace)
  [4] blobs   hash  ns US channel US version -> blob      (written once per version)
  [5] chain   hash  blob field -> base blob field         (a list blob holding an append only)
  [6] writes  hash  member US task id US idx -> write
  [7] wix     zset  write fields, ordered by lex          (a checkpoint's writes are one range)
  [8] runs    zset  run id US member                      (for delete_for_runs)
  [9] the run's key set (the ledger's), [10] the run hash, [11] the steps hash
US is the byte 0x1f, RS the byte 0x1e.
"""

from __future__ import annotations

__all__ = ["DROP", "LOAD", "LOAD_MANY", "PUT", "PUT_WRITES"]

# Register the thread's keys with the ledger (so delete_run and the run's TTL reach them) and
# refresh the thread's TTL. SADD of known members is cheap and keeps working after another
# process deleted the thread, which a per-process "already tracked" cache would not.
_TOUCH = """
local function touch(ttl)
  redis.call('SADD', KEYS[9], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
             KEYS[8])
  if ttl > 0 then
    for i = 1, 11 do redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
"""

_LOAD_ONE = """
local function load_one(member)
  local rec = redis.call('HGET', KEYS[1], member)
  if not rec then return false end
  local blobs = {}
  local refs = redis.call('HGET', KEYS[2], member) or ''
  for f in string.gmatch(refs, '[^\\30]+') do
    local cur = f
    local hops = 0
    while cur do
      local base = redis.call('HGET', KEYS[5], cur)
      blobs[#blobs + 1] = cur
      blobs[#blobs + 1] = redis.call('HGET', KEYS[4], cur)
      blobs[#blobs + 1] = base or ''
      cur = base
      hops = hops + 1
      if hops > 1000000 then return redis.error_reply('blob chain loop at ' .. f) end
    end
  end
  local wf = redis.call('ZRANGEBYLEX', KEYS[7], '[' .. member .. '\\31',
                        '[' .. member .. '\\31\\255')
  local wv = {}
  if #wf > 0 then wv = redis.call('HMGET', KEYS[6], unpack(wf)) end
  return {member, rec, blobs, wf, wv}
end
"""

# ARGV[1] ttl ms (0: none), ARGV[2] member, ARGV[3] record, ARGV[4] refs, ARGV[5] run index
# member ('' for none), then (blob field, blob, base field or '') triples.
# -> {'OK', {1 if the blob was new else 0, ...}} | {'NOBASE', field}
PUT = _TOUCH + """
local ttl = tonumber(ARGV[1])
for i = 6, #ARGV, 3 do
  local base = ARGV[i + 2]
  if base ~= '' and redis.call('HEXISTS', KEYS[4], base) == 0 then return {'NOBASE', base} end
end
local fresh = {}
for i = 6, #ARGV, 3 do
  local new = redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
  if new == 1 and ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 2]) end
  fresh[#fresh + 1] = new
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[8], 0, ARGV[5]) end
touch(ttl)
return {'OK', fresh}
"""

# ARGV[1] ttl ms, then (write field, write, '1' to overwrite | '0' to keep the first) triples.
PUT_WRITES = _TOUCH + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  if ARGV[i + 2] == '1' then
    redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
  else
    redis.call('HSETNX', KEYS[6], ARGV[i], ARGV[i + 1])
  end
  redis.call('ZADD', KEYS[7], 0, ARGV[i])
end
touch(ttl)
return 1
"""

# ARGV[1] namespace followed by US, ARGV[2] checkpoint id ('' for the namespace's newest)
# -> false | {member, record, {field, blob, base, ...}, {write field, ...}, {write, ...}}
LOAD = _LOAD_ONE + """
local member
if ARGV[2] == '' then
  local r = redis.call('ZREVRANGEBYLEX', KEYS[3], '[' .. ARGV[1] .. '\\255', '[' .. ARGV[1],
                       'LIMIT', 0, 1)
  if #r == 0 then return false end
  member = r[1]
else
  member = ARGV[1] .. ARGV[2]
end
return load_one(member)
"""

# ARGV members -> {load_one(member) or false, ...}
LOAD_MANY = _LOAD_ONE + """
local out = {}
for i = 1, #ARGV do out[i] = load_one(ARGV[i]) end
return out
"""

# ARGV[1] 'latest' (keep each namespace's newest checkpoint) | 'members' (drop ARGV[2..]).
# Drops the checkpoints with their writes, then every blob no remaining checkpoint reaches
# (following the chains of append-only blobs). -> number of checkpoints dropped
DROP = """
local drop = {}
if ARGV[1] == 'members' then
  for i = 2, #ARGV do drop[#drop + 1] = ARGV[i] end
else
  local all = redis.call('ZRANGEBYLEX', KEYS[3], '-', '+')
  local newest = {}
  for _, m in ipairs(all) do newest[string.match(m, '^(.*)\\31') or ''] = m end
  local keep = {}
  for _, m in pairs(newest) do keep[m] = true end
  for _, m in ipairs(all) do if not keep[m] then drop[#drop + 1] = m end end
end
local n = 0
for _, m in ipairs(drop) do
  n = n + redis.call('ZREM', KEYS[3], m)
  redis.call('HDEL', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  local wf = redis.call('ZRANGEBYLEX', KEYS[7], '[' .. m .. '\\31', '[' .. m .. '\\31\\255')
  for _, f in ipairs(wf) do
    redis.call('HDEL', KEYS[6], f)
    redis.call('ZREM', KEYS[7], f)
  end
end
if n == 0 then return 0 end
for _, r in ipairs(redis.call('ZRANGEBYLEX', KEYS[8], '-', '+')) do
  local m = string.match(r, '^[^\\31]*\\31(.*)$')
  if not m or not redis.call('ZSCORE', KEYS[3], m) then redis.call('ZREM', KEYS[8], r) end
end
local live = {}
for _, refs in ipairs(redis.call('HVALS', KEYS[2])) do
  for f in string.gmatch(refs, '[^\\30]+') do
    local cur = f
    while cur and not live[cur] do
      live[cur] = true
      cur = redis.call('HGET', KEYS[5], cur)
    end
  end
end
for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
  if not live[f] then
    redis.call('HDEL', KEYS[4], f)
    redis.call('HDEL', KEYS[5], f)
  end
end
return n
"""
