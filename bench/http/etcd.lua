-- wrk script for etcd v3's JSON gateway, the same load as kv.lua:
--   wrk -t2 -c50 -d10s --latency -s etcd.lua http://HOST:PORT -- MODE
-- MODE: put (POST /v3/kv/put {"key","value"}), get (POST /v3/kv/range {"key"}),
--       mix (90% get, 10% put). Keys and values are base64 in the JSON, as the gateway wants;
-- the raw key is 16 bytes (zero-padded number, uniform over 0..KEYS-1), the raw value 100.

local mode = "get"
local keys = 1000000
local value_b64 = nil
local put_share = 0

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1) .. b64chars:sub(c2 + 1, c2 + 1)
      .. (b and b64chars:sub(c3 + 1, c3 + 1) or "=")
      .. (c and b64chars:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

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
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  local chars = "abcdefghijklmnopqrstuvwxyz0123456789"
  local parts = {}
  for i = 1, 100 do
    local c = math.random(1, #chars)
    parts[i] = chars:sub(c, c)
  end
  value_b64 = base64(table.concat(parts))
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  local key = base64(string.format("%016d", math.random(0, keys - 1)))
  if put_share > 0 and (put_share >= 1 or math.random() < put_share) then
    return wrk.format("POST", "/v3/kv/put", headers,
      '{"key":"' .. key .. '","value":"' .. value_b64 .. '"}')
  end
  return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key .. '"}')
end
