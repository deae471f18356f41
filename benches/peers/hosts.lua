-- wrk script: rotate the Host header over the names in a file (one per line).
--   wrk -t2 -c64 -d10s --latency -s hosts.lua http://127.0.0.1:PORT/ -- hosts.txt
-- A line may be "host<TAB>token" to send a bearer token with that host.
-- A file with one name gives a fixed Host through the same code path, so the
-- load generator does the same work in every scenario.
--
-- For each name, wrk.headers["Host"] is set and the request is formatted once
-- in init(); request() then hands out the pre-formatted requests round robin.
-- Formatting 10,000 requests up front keeps the per-request cost of the load
-- generator (which shares the CPUs with the proxies) down to a table lookup.
-- Each wrk thread starts at a different offset so threads do not send the
-- same host in lockstep.

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

local requests = {}
local n = 0
local i = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("hosts.lua: pass the hosts file after --, e.g. -- hosts.txt")
   end
   for line in io.lines(path) do
      if line ~= "" then
         -- "host<TAB>token": the request also carries the bearer token.
         local host, token = line:match("^([^\t]+)\t(.+)$")
         wrk.headers["Host"] = host or line
         wrk.headers["Authorization"] = token and ("Bearer " .. token) or nil
         n = n + 1
         requests[n] = wrk.format(nil, nil)
      end
   end
   if n == 0 then
      error("hosts.lua: no host names in " .. path)
   end
   -- Spread the threads' starting points over the table.
   i = ((thread_index or 0) * 7919) % n
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return requests[i]
end
