-- Sliding-log rate limit of one key over three windows (minute, hour, day): check and record in one atomic
-- step, clocked by the Redis server's TIME so that every app instance measures against the same clock.
--
-- KEYS[1]  sorted set of the key's requests in the last day; score = time in microseconds,
--          member = "<microseconds>-<sequence>" (unique even when two requests share a microsecond)
-- KEYS[2]  the sequence counter behind those members
-- ARGV[1]  "1": record the request when it is allowed (hit); "0": only report (peek)
-- ARGV[2], ARGV[3], ARGV[4]  the minute, hour and day limits
--
-- Returns {allowed (1|0), minute count, hour count, day count, refusing window (0 none, 1 minute, 2 hour, 3 day),
--          retry-after ms, reset time in ms since the epoch}.
-- Counts are those after the decision: they include this request only when it was allowed and recorded.
-- An entry at time t is inside a window of length W while t > now - W, and leaves it at t + W.

local WINDOWS_US = {60000000, 3600000000, 86400000000}
-- Longer than the day window so a key never expires while one of its entries still counts.
local EXPIRY_MS = 86400000 + 60000

local record = ARGV[1] == '1'
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- Epoch microseconds have 16 digits; tostring() would round them to 14 significant ones.
local function fmt(us)
  return string.format('%.0f', us)
end

if record then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now - WINDOWS_US[3]))
end

local counts = {}
local refusing, wait_us = 0, 0
for i = 1, 3 do
  local start = '(' .. fmt(now - WINDOWS_US[i])
  counts[i] = redis.call('ZCOUNT', KEYS[1], start, '+inf')
  if counts[i] >= limits[i] then
    -- One more request fits once count - limit + 1 entries have left, i.e. when the entry at 0-based position
    -- count - limit leaves (the oldest one unless the limit was lowered below the current count).
    local entry = redis.call('ZRANGEBYSCORE', KEYS[1], start, '+inf', 'WITHSCORES', 'LIMIT', counts[i] - limits[i], 1)
    local wait = tonumber(entry[2]) + WINDOWS_US[i] - now
    -- Entries only leave windows, so the request fits once the slowest refusing window has room.
    if wait >= wait_us then
      refusing, wait_us = i, wait
    end
  end
end

if refusing > 0 then
  return {0, counts[1], counts[2], counts[3], refusing, math.ceil(wait_us / 1000), math.ceil((now + wait_us) / 1000)}
end

if record then
  local sequence = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], fmt(now), fmt(now) .. '-' .. sequence)
  redis.call('PEXPIRE', KEYS[1], EXPIRY_MS)
  redis.call('PEXPIRE', KEYS[2], EXPIRY_MS)
  for i = 1, 3 do
    counts[i] = counts[i] + 1
  end
end

-- The minute window gains room when its oldest entry leaves; an empty window has room now.
local reset_us = now
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. fmt(now - WINDOWS_US[1]), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if oldest[2] then
  reset_us = tonumber(oldest[2]) + WINDOWS_US[1]
end
return {1, counts[1], counts[2], counts[3], 0, 0, math.ceil(reset_us / 1000)}
