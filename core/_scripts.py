"""Lua scripts of the ledger, one atomic round trip each.

Each script touches only the keys of one run (one hash tag, so one Cluster slot). Times are the
Redis server's clock (``TIME``), so the lease does not depend on the clients' clocks agreeing.
Step metadata (``m:<key>``) is small JSON of strings and integers that the scripts read and
update with cjson; outcomes (``r:<key>``) are opaque to Lua, so their numbers never pass
through cjson's float formatting.
"""

from __future__ import annotations

__all__ = ["ACQUIRE_RUN", "CLAIM_STEP", "COMPLETE_STEP", "DECIDE_STEP", "DELETE_RUN",
           "FINISH_RUN", "PUT_BLOB", "RENEW_LEASE", "SUSPEND_STEP"]

_NOW = """
local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)
"""

# KEYS[1] run hash, KEYS[2] steps hash, KEYS[3] key set
# ARGV[1] owner, ARGV[2] lease ms, ARGV[3] '1' to take over a live lease, ARGV[4] kind,
# ARGV[5] run id, ARGV[6] '1' to return the run's step records, ARGV[7] the owner whose lapsed
# lease this acquire may take ('': none yet; the caller first waits until Redis has read what
# that owner sent, see agentledger._replyoff.wait_until_gone)
# -> {'BUSY', owner, remaining ms} | {'LAPSED', owner} | {'VERSION', v}
#    | {'OK', fence, now, {field, value, ...}, status before this acquire ('' for a new run)}
ACQUIRE_RUN = _NOW + """
local run = KEYS[1]
local v = redis.call('HGET', run, 'v')
if v and v ~= '1' then return {'VERSION', v} end
local owner = redis.call('HGET', run, 'owner')
local lease_until = tonumber(redis.call('HGET', run, 'lease_until') or '0') or 0
if owner and owner ~= '' and owner ~= ARGV[1] and ARGV[3] ~= '1' then
  if lease_until > now then return {'BUSY', owner, lease_until - now} end
  if ARGV[7] ~= owner then return {'LAPSED', owner} end
end
-- Fencing tokens grow for the life of the prefix: never below the server clock in ms, so a run
-- whose keys vanished (deleted, evicted, flushed) does not hand an old holder's token out again.
local fence = math.max((tonumber(redis.call('HGET', run, 'fence') or '0') or 0) + 1, now)
redis.call('HSET', run, 'fence', string.format('%d', fence))
local prior = redis.call('HGET', run, 'status') or ''
if not v then
  redis.call('HSET', run, 'v', '1', 'run_id', ARGV[5], 'kind', ARGV[4], 'created', now,
             'steps_total', 0, 'steps_done', 0, 'seq', 0)
end
redis.call('HSET', run, 'owner', ARGV[1], 'lease_until', now + tonumber(ARGV[2]),
           'status', 'running', 'updated', now, 'ended', 0, 'last_error', '')
-- A run that ended had a TTL; running again, it keeps its keys.
redis.call('PERSIST', run)
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('PERSIST', k) end
local steps = {}
if ARGV[6] == '1' then steps = redis.call('HGETALL', KEYS[2]) end
return {'OK', fence, now, steps, prior}
"""

# KEYS[1] run hash; ARGV[1] fence, ARGV[2] lease ms -> 1 renewed | 0 fenced out
RENEW_LEASE = _NOW + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(ARGV[2]))
return 1
"""

# KEYS[1] run hash, KEYS[2] steps hash, KEYS[3] key set
# ARGV[1] fence, ARGV[2] status, ARGV[3] last error, ARGV[4] ttl ms (0: none),
# ARGV[5..] step keys this session replayed (their replay counters go up by one)
# -> 1 | 0 fenced out
FINISH_RUN = _NOW + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
-- The owner is cleared only here: a retried finish (lost reply, NOSCRIPT) counts nothing twice.
if redis.call('HGET', KEYS[1], 'owner') == '' then return 1 end
for i = 5, #ARGV do redis.call('HINCRBY', KEYS[2], 'p:' .. ARGV[i], 1) end
local status = ARGV[2]
redis.call('HSET', KEYS[1], 'status', status, 'updated', now, 'owner', '', 'lease_until', 0,
           'last_error', ARGV[3])
if status == 'completed' or status == 'failed' then
  redis.call('HSET', KEYS[1], 'ended', now)
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
    for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('PEXPIRE', k, ttl) end
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
return 1
"""

_DECODE_META = """
local function decode_meta(raw)
  local ok, m = pcall(cjson.decode, raw)
  if not ok or type(m) ~= 'table' or m.v ~= 1 or type(m.status) ~= 'string' then return nil end
  return m
end
"""

# KEYS[1] run hash, KEYS[2] steps hash
# ARGV[1] step key, ARGV[2] fence, ARGV[3] metadata JSON of a new record (its 'executor' is
# also written on a new attempt of an existing one), ARGV[4] mode
# ('claim': the attempt starts now | 'approval': the step waits for a person), ARGV[5] the
# in-doubt policy ('rerun' | 'fail' | 'ask'), ARGV[6] approval request payload (mode approval)
# -> {'FENCED', fence} | {'CORRUPT', raw} | {'DONE', meta, outcome} | {'WAITING', meta}
#    | {'INDOUBT', meta} | {'CLAIMED', meta, attempts}
CLAIM_STEP = _NOW + _DECODE_META + """
local fence = redis.call('HGET', KEYS[1], 'fence')
if fence ~= ARGV[2] then return {'FENCED', fence or ''} end
local mkey = 'm:' .. ARGV[1]
local raw = redis.call('HGET', KEYS[2], mkey)
if raw then
  local m = decode_meta(raw)
  if not m then return {'CORRUPT', raw} end
  local st = m.status
  if st == 'completed' or st == 'failed' then
    return {'DONE', raw, redis.call('HGET', KEYS[2], 'r:' .. ARGV[1]) or ''}
  end
  if st == 'waiting' then return {'WAITING', raw} end
  if st == 'running' and tostring(m.fence) == fence then
    return {'CLAIMED', raw, m.attempts}  -- this lease's own attempt: a retried claim
  end
  if st == 'running' and ARGV[5] ~= 'rerun' then
    if ARGV[5] == 'ask' then
      m.status = 'waiting'
      m.doubt = 1
      raw = cjson.encode(m)
      redis.call('HSET', KEYS[2], mkey, raw)
      return {'WAITING', raw}
    end
    return {'INDOUBT', raw}
  end
  -- 'running' under the rerun policy, or 'retry' (a person allowed it): a new attempt. The
  -- attempt it replaces recorded no outcome; its process is kept (the newest 5).
  local tried = type(m.tried) == 'table' and m.tried or {}
  tried[#tried + 1] = {attempt = m.attempts, executor = m.executor or '', fence = m.fence,
                       started = m.started}
  while #tried > 5 do table.remove(tried, 1) end
  m.tried = tried
  m.status = 'running'
  m.attempts = m.attempts + 1
  m.fence = tonumber(fence)
  m.started = now
  m.doubt = 0
  m.executor = cjson.decode(ARGV[3]).executor  -- the process of this attempt
  raw = cjson.encode(m)
  redis.call('HSET', KEYS[2], mkey, raw)
  return {'CLAIMED', raw, m.attempts}
end
local m = cjson.decode(ARGV[3])
m.seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
m.attempts = 1
m.fence = tonumber(fence)
m.started = now
m.ended = 0
if ARGV[4] == 'approval' then
  m.status = 'waiting'
  redis.call('HSET', KEYS[2], 'a:' .. ARGV[1], ARGV[6])
else
  m.status = 'running'
end
raw = cjson.encode(m)
redis.call('HSET', KEYS[2], mkey, raw)
redis.call('HINCRBY', KEYS[1], 'steps_total', 1)
return {'CLAIMED', raw, 1}
"""

# KEYS[1] run hash, KEYS[2] steps hash
# ARGV[1] step key, ARGV[2] fence, ARGV[3] 'completed' | 'failed', ARGV[4] outcome JSON,
# ARGV[5] metadata JSON for a step recorded without an intent (one round trip per LLM call)
# -> {'OK', meta} | {'FENCED', fence} | {'CONFLICT', fence} | {'CORRUPT', raw}
#    | {'DONE', meta, outcome} | {'MISSING'} (the intent record vanished while the step ran)
# CONFLICT: fenced out, but the step's latest attempt is this executor's (it was decided, or
# the run taken over, while the body ran): its outcome is kept in 'c:<key>', never dropped.
COMPLETE_STEP = _NOW + _DECODE_META + """
local fence = redis.call('HGET', KEYS[1], 'fence')
if fence ~= ARGV[2] then
  local held = redis.call('HGET', KEYS[2], 'm:' .. ARGV[1])
  local hm = held and decode_meta(held)
  if hm and tostring(hm.fence) == ARGV[2] then
    redis.call('HSET', KEYS[2], 'c:' .. ARGV[1], '{"v":1,"status":"' .. ARGV[3] .. '","fence":'
               .. ARGV[2] .. ',"at":' .. now .. ',"outcome":' .. ARGV[4] .. '}')
    return {'CONFLICT', fence or ''}
  end
  return {'FENCED', fence or ''}
end
local mkey = 'm:' .. ARGV[1]
local raw = redis.call('HGET', KEYS[2], mkey)
local m
if raw then
  m = decode_meta(raw)
  if not m then return {'CORRUPT', raw} end
  if m.status == 'completed' or m.status == 'failed' then
    if tostring(m.fence) == fence then return {'OK', raw} end  -- a retried write
    return {'DONE', raw, redis.call('HGET', KEYS[2], 'r:' .. ARGV[1]) or ''}
  end
elseif ARGV[5] == '' then
  return {'MISSING'}  -- the intent record vanished while the step ran
else
  m = cjson.decode(ARGV[5])
  m.seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  m.attempts = 1
  m.started = now
  redis.call('HINCRBY', KEYS[1], 'steps_total', 1)
end
m.status = ARGV[3]
m.fence = tonumber(fence)
m.ended = now
m.doubt = 0
raw = cjson.encode(m)
redis.call('HSET', KEYS[2], mkey, raw, 'r:' .. ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'steps_done', 1)
return {'OK', raw}
"""

# KEYS[1] run hash, KEYS[2] steps hash
# ARGV[1] step key ('' = the run's only waiting step), ARGV[2] new status for an approval
# ('completed'), ARGV[3] its outcome JSON, ARGV[4] new status for an in-doubt step
# ('retry' | 'completed' | 'failed'), ARGV[5] its outcome JSON ('' = none)
# -> {'OK', key, meta} | {'NOSTEP', key} | {'NOTWAITING', key, status} | {'AMBIGUOUS', n}
#    | {'CORRUPT', raw}
DECIDE_STEP = _NOW + _DECODE_META + """
local key = ARGV[1]
local holder = redis.call('HGET', KEYS[1], 'owner')
local held_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
local live = holder and holder ~= '' and held_until > now
if key == '' then
  local found = {}
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'm:' then
      local m = decode_meta(all[i + 1])
      if m and (m.status == 'waiting' or (m.status == 'running' and not live)) then
        table.insert(found, string.sub(f, 3))
      end
    end
  end
  if #found ~= 1 then return {'AMBIGUOUS', #found} end
  key = found[1]
end
local mkey = 'm:' .. key
local raw = redis.call('HGET', KEYS[2], mkey)
if not raw then return {'NOSTEP', key} end
local m = decode_meta(raw)
if not m then return {'CORRUPT', raw} end
if m.status == 'running' then
  -- An attempt without an outcome in a run nobody holds: an in-doubt step (policy 'fail').
  if live then return {'NOTWAITING', key, 'running'} end
  m.doubt = 1
elseif m.status ~= 'waiting' then
  return {'NOTWAITING', key, m.status}
end
local status, outcome = ARGV[2], ARGV[3]
if m.doubt == 1 then status, outcome = ARGV[4], ARGV[5] end
m.status = status
if status ~= 'retry' then
  m.ended = now
  redis.call('HINCRBY', KEYS[1], 'steps_done', 1)
end
raw = cjson.encode(m)
redis.call('HSET', KEYS[2], mkey, raw)
if outcome ~= '' then redis.call('HSET', KEYS[2], 'r:' .. key, outcome) end
redis.call('HSET', KEYS[1], 'updated', now)
-- Nobody holds the run: fence out whoever held it before (a worker paused past its lease
-- still inside this step), so it cannot write over the decision.
if not live then redis.call('HINCRBY', KEYS[1], 'fence', 1) end
return {'OK', key, raw}
"""

# KEYS[1] run hash, KEYS[2] steps hash, KEYS[3] key set; ARGV[1] '1' to delete a run whose
# lease is live -> {'OK', number of keys deleted} | {'LIVE', owner, remaining ms}
DELETE_RUN = _NOW + """
local owner = redis.call('HGET', KEYS[1], 'owner')
local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
if owner and owner ~= '' and lease_until > now and ARGV[1] ~= '1' then
  return {'LIVE', owner, lease_until - now}
end
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do n = n + redis.call('DEL', k) end
return {'OK', n + redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])}
"""

# KEYS[1] run hash, KEYS[2] key set, KEYS[3] the blob's key; ARGV[1] fence, ARGV[2] value
# ('' deletes it) -> 1 | 0 fenced out
PUT_BLOB = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[2], KEYS[3])
else
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[2], KEYS[3])
end
return 1
"""

# KEYS[1] run hash, KEYS[2] steps hash; ARGV[1] step key, ARGV[2] fence
# -> 1 | 0 (fenced out, or not this lease's running attempt)
# A step whose body stopped to wait for an approval asked inside it: not in doubt (we know
# where it stopped), so the next start runs it again whatever its in-doubt policy.
SUSPEND_STEP = _DECODE_META + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
local mkey = 'm:' .. ARGV[1]
local raw = redis.call('HGET', KEYS[2], mkey)
if not raw then return 0 end
local m = decode_meta(raw)
if not m or m.status ~= 'running' or tostring(m.fence) ~= ARGV[2] then return 0 end
m.status = 'retry'
redis.call('HSET', KEYS[2], mkey, cjson.encode(m))
return 1
"""
