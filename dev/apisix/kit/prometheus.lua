-- Gatehouse: a placeholder for nginx-lua-prometheus (knyar/nginx-lua-prometheus),
-- which the APISIX kit does not carry (dev/apisix/kit/README.md).
--
-- APISIX's batch processor, which its loggers use (Gatehouse's LLM route
-- posts responses back to the runner with http-logger), requires
-- apisix.plugins.prometheus.exporter, and that module requires this one when
-- it is loaded. Nothing calls it unless the prometheus plugin is enabled,
-- which Gatehouse's config does not do; should anyone enable it, init()
-- fails loudly rather than export nothing.
local _M = { _VERSION = "gatehouse-placeholder" }

function _M.init()
    error("nginx-lua-prometheus is not installed in this APISIX build: "
          .. "the prometheus plugin is unavailable (dev/apisix/kit/README.md)")
end

return _M
