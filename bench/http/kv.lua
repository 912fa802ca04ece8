-- wrk script for CoreCache's key API (and the axum ceiling, which serves the same routes).
--   wrk -t2 -c50 -d10s --latency -s kv.lua http://HOST:PORT -- MODE
-- MODE: put (PUT /v1/kv/{key}, 100-byte body), get (GET /v1/kv/{key}),
--       mix (90% get, 10% put). Keys are 16 bytes: zero-padded numbers, uniform over
-- 0..KEYS-1 (KEYS = 1000000, or the second argument).

local mode = "get"
local keys = 1000000
local value = nil
local put_share = 0

local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

function init(args)
  mode = args[1] or "get"
  keys = tonumber(args[2] or "1000000")
  if mode == "put" then
    put_share = 1.0
  elseif mode == "get" then
    put_share = 0.0
  elseif mode == "mix" then
    put_share = 0.1
  else
    error("mode must be put, get or mix, not " .. tostring(mode))
  end
  -- Each wrk thread has its own Lua state: seed each differently.
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  local chars = "abcdefghijklmnopqrstuvwxyz0123456789"
  local parts = {}
  for i = 1, 100 do
    local c = math.random(1, #chars)
    parts[i] = chars:sub(c, c)
  end
  value = table.concat(parts)
end

function request()
  local key = string.format("%016d", math.random(0, keys - 1))
  if put_share > 0 and (put_share >= 1 or math.random() < put_share) then
    return wrk.format("PUT", "/v1/kv/" .. key, nil, value)
  end
  return wrk.format("GET", "/v1/kv/" .. key)
end
