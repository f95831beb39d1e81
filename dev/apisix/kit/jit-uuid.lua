-- resty.jit-uuid for the APISIX kit build (dev/apisix/kit/README.md).
--
-- The kit's lua-resty-jit-uuid tree ships without its lib/ folder, so the
-- module APISIX requires is missing. APISIX 3.9.1 calls only seed() and
-- generate_v4() (apisix/core/id.lua, for the node id when conf/apisix.uid is
-- absent; plugins/request-id.lua, which Gatehouse does not enable). This
-- module provides those two, plus the call shorthand uuid(), with random
-- bytes from OpenSSL (resty.random) inside nginx and math.random outside it.
local _M = { _VERSION = '0.0.7-gatehouse' }

local byte, format = string.byte, string.format
local random, randomseed = math.random, math.randomseed

local strong_bytes
do
  local ok, resty_random = pcall(require, 'resty.random')
  if ok and ngx then
    strong_bytes = function() return resty_random.bytes(16, true) end
  end
end

function _M.seed(seed)
  if not seed then
    if ngx then
      seed = ngx.time() + ngx.worker.pid()
    else
      seed = os.time()
    end
  end
  randomseed(seed)
  return seed
end

local function weak_bytes()
  local t = {}
  for i = 1, 16 do t[i] = string.char(random(0, 255)) end
  return table.concat(t)
end

function _M.generate_v4()
  local b = (strong_bytes and strong_bytes()) or weak_bytes()
  local o = { byte(b, 1, 16) }
  o[7] = o[7] % 16 + 0x40 -- version 4
  o[9] = o[9] % 64 + 0x80 -- RFC 4122 variant
  return format('%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x',
    o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15], o[16])
end

return setmetatable(_M, { __call = function() return _M.generate_v4() end })
