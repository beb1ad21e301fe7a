-- Files and batches (the Files and Batch API) live on the replica that accepted them, in its
-- data directory; their ids end in that replica's name (its server.replica_name, the pod's
-- name). This file sends every call about one of them to that replica, and answers the two
-- list calls by asking every replica and merging their pages.
--
-- Which replica is which: each replica says its name in every response's
-- X-Embedserve-Replica header; a task asks each replica that comes up (GET /health) and
-- forgets the name when the replica goes down, so an address taken over by another pod is
-- asked again. A call the router sends to the wrong replica anyway (in the instant before it
-- notices) is answered 503 by that replica, never with another replica's data.

local BACKEND = os.getenv("ROUTER_BACKEND") or "replicas"
-- How long a replica may take to answer the router's own calls, in milliseconds.
local CALL_TIMEOUT = tonumber(os.getenv("ROUTER_CALL_TIMEOUT_MS") or "5000")
-- How often the task looks for replicas it has no name for, in milliseconds.
local PROBE_INTERVAL = 250

local HEX32 = string.rep("%x", 32)
local ID_PATTERNS = { "^file%-" .. HEX32 .. "%-([%w%-]+)$", "^batch_" .. HEX32 .. "%-([%w%-]+)$" }

local names = {}  -- a replica's address -> its name, or false when it has none

local function is_up(server)
  local status = server:get_stats().status or ""
  return status:sub(1, 2) == "UP"
end

-- The replica an id names, or nothing (ids of a server without a replica name).
local function replica_of(id)
  if id == nil then return nil end
  for _, pattern in ipairs(ID_PATTERNS) do
    local replica = id:match(pattern)
    if replica then return replica end
  end
  return nil
end

core.register_task(function()
  local client = core.httpclient()
  while true do
    local up = {}
    for _, server in pairs(core.backends[BACKEND].servers) do
      local address = server:get_addr()
      if is_up(server) and address ~= nil and address:find(":", 1, true) then
        up[address] = true
        if names[address] == nil then
          local response = client:get{ url = "http://" .. address .. "/health", timeout = CALL_TIMEOUT }
          if response and response.status == 200 then
            local header = response.headers["x-embedserve-replica"]
            names[address] = header and header[0] or false
          end
        end
      end
    end
    for address in pairs(names) do
      if not up[address] then names[address] = nil end
    end
    core.msleep(PROBE_INTERVAL)
  end
end)

-- The replica named by the file or batch the request is about (the id in its path, or the
-- input_file_id of a new batch: txn.input_file_id, read from the body by haproxy.cfg), or
-- "" (a fetch's nil would read as "0").
core.register_fetches("embedserve_owner", function(txn)
  local path = txn.sf:path()
  local id = path:match("^/v1/files/([^/]+)") or path:match("^/v1/batches/([^/]+)")
  return replica_of(id or txn:get_var("txn.input_file_id")) or ""
end)

-- The server slot of the replica named txn.owner when it is up and known, or "".
core.register_fetches("embedserve_owner_server", function(txn)
  local owner = txn:get_var("txn.owner")
  for name, server in pairs(core.backends[BACKEND].servers) do
    if names[server:get_addr()] == owner and is_up(server) then return name end
  end
  return ""
end)

-- The raw text of each object in a list's "data" array, and whether the list has more: the
-- replicas' own JSON, scanned for its top-level objects and never re-encoded.
local function list_entries(body)
  local open = body:find('"data":[', 1, true)
  if open == nil then return nil end
  local entries, depth, first, in_string = {}, 0, nil, false
  local i = open + #'"data":['
  while true do
    local j = body:find(in_string and '["\\]' or '[{}%]"]', i)
    if j == nil then return nil end
    local c = body:sub(j, j)
    i = j + 1
    if in_string then
      if c == "\\" then i = j + 2 else in_string = false end
    elseif c == '"' then
      in_string = true
    elseif c == "{" then
      if depth == 0 then first = j end
      depth = depth + 1
    elseif c == "}" then
      depth = depth - 1
      if depth == 0 then entries[#entries + 1] = body:sub(first, j) end
    elseif depth == 0 then
      return entries, body:find('"has_more":true', j, true) ~= nil
    end
  end
end

local function reply(applet, status, body, headers)
  applet:set_status(status)
  applet:add_header("content-type", "application/json")
  applet:add_header("content-length", tostring(#body))
  for name, value in pairs(headers or {}) do applet:add_header(name, value) end
  applet:start_response()
  applet:send(body)
end

-- 503 in OpenAI's error shape, as a replica answers it for another replica's id: the
-- client tries again after Retry-After.
local function unavailable(applet, message)
  reply(applet, 503, '{"error":{"message":"' .. message .. '","type":"server_error",' ..
    '"param":null,"code":"replica_unavailable"}}', { ["retry-after"] = "5" })
end

-- A call about a file or batch whose replica (txn.owner) is not up.
core.register_service("embedserve_owner_unavailable", "http", function(applet)
  unavailable(applet, "replica " .. applet:get_var("txn.owner") ..
    " holds this, and cannot be reached now: try again later")
end)

-- GET /v1/files and GET /v1/batches: each replica's page (the same query: `after` is any
-- replica's id, since ids sort by creation across replicas), merged newest first and cut to
-- `limit`. A replica's error (a bad limit, a bad key) is the answer; a replica that does not
-- answer makes the list 503, not silently shorter.
core.register_service("embedserve_list", "http", function(applet)
  local query = applet.qs or ""
  local limit = tonumber(("&" .. query):match("&limit=(%d+)") or "20")
  local headers = {}
  local key = applet.headers["authorization"]
  if key then headers["authorization"] = { key[0] } end
  local client = core.httpclient()
  local all, more, asked = {}, false, 0
  for _, server in pairs(core.backends[BACKEND].servers) do
    local address = server:get_addr()
    if is_up(server) and address ~= nil and address:find(":", 1, true) then
      asked = asked + 1
      local url = "http://" .. address .. applet.path .. (query ~= "" and "?" .. query or "")
      local response = client:get{ url = url, headers = headers, timeout = CALL_TIMEOUT }
      if response == nil or response.status == nil or response.status == 0 then
        return unavailable(applet, "replica " .. address .. " did not answer: try again")
      end
      if response.status ~= 200 then return reply(applet, response.status, response.body) end
      local entries, has_more = list_entries(response.body)
      if entries == nil then
        return unavailable(applet, "replica " .. address .. " answered no list: try again")
      end
      more = more or has_more
      for _, entry in ipairs(entries) do
        all[#all + 1] = { id = entry:match('^{"id":"([^"]+)"') or "", text = entry }
      end
    end
  end
  if asked == 0 then return unavailable(applet, "no replica is up: try again") end
  table.sort(all, function(a, b) return a.id > b.id end)
  more = more or #all > limit
  local page, texts = {}, {}
  for i = 1, math.min(limit, #all) do
    page[i] = all[i]
    texts[i] = all[i].text
  end
  local function quoted(entry) return entry and '"' .. entry.id .. '"' or "null" end
  reply(applet, 200, '{"object":"list","data":[' .. table.concat(texts, ",") ..
    '],"first_id":' .. quoted(page[1]) .. ',"last_id":' .. quoted(page[#page]) ..
    ',"has_more":' .. tostring(more) .. '}')
end)
