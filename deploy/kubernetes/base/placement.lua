-- Which replica serves each model: consistent hashing with bounded loads, where a replica's
-- load is the number of models placed on it and the bound is what its cache holds
-- (ROUTER_MODELS_PER_REPLICA, the replicas' max_loaded_models).
--
-- Why not HAProxy's own `balance hash` of the model's name: a hash spreads models as dice
-- fall. 6 models on 3 replicas land 1/2/3 as often as not, and the replica given 3 evicts
-- and reloads all day while the fleet still has room. Here each model ranks the replicas by
-- a hash of (model, replica address), the same ranking on every router, and goes to the
-- first replica in its ranking that has room:
--   * a new model is placed once and stays: no other model moves when it arrives;
--   * when a replica joins or leaves, every model is placed again, in the order of its own
--     hash, from scratch: each router reaches the same placement, and about 1/N of the
--     models move, as with a consistent hash;
--   * when every replica is full, a model goes to its first-ranked replica (whose cache
--     then evicts: the fleet needs another replica);
--   * a hot model spills: while its replica has as many requests in flight as
--     ROUTER_SPILL_FACTOR times the fleet's mean (and at least ROUTER_SPILL_MIN), its
--     requests go down its ranking to the first replica with fewer, which loads it too.
-- Models nobody requested for ROUTER_MODEL_TTL seconds give their place back (replicas unload
-- them after their own cache.idle_timeout).

local BACKEND = os.getenv("ROUTER_BACKEND") or "replicas"
local CAPACITY = tonumber(os.getenv("ROUTER_MODELS_PER_REPLICA") or "4")
local MODEL_TTL = tonumber(os.getenv("ROUTER_MODEL_TTL") or "1800")
local SPILL_FACTOR = tonumber(os.getenv("ROUTER_SPILL_FACTOR") or "3")
local SPILL_MIN = tonumber(os.getenv("ROUTER_SPILL_MIN") or "32")
-- How stale the router's view of which replicas are up may be, in seconds.
local REFRESH = 0.25

local last_seen = {}  -- model -> when it was last requested
local placed = {}     -- model -> its replicas, ranked, the one it is placed on first
local load = {}       -- replica address -> models placed on it
local view = { at = -1, servers = {}, signature = "" }

-- FNV-1a, 32 bits.
local function hash(text)
  local h = 2166136261
  for i = 1, #text do
    h = ((h ~ text:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

local function ranking(model)
  local ranked = {}
  for i, s in ipairs(view.servers) do
    ranked[i] = { server = s, score = hash(model .. "@" .. s.key) }
  end
  table.sort(ranked, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.server.key < b.server.key
  end)
  return ranked
end

local function place(model)
  local ranked = ranking(model)
  if #ranked == 0 then return nil end
  local home = 1
  for i, r in ipairs(ranked) do
    if (load[r.server.key] or 0) < CAPACITY then
      home = i
      break
    end
  end
  local chosen = table.remove(ranked, home)
  table.insert(ranked, 1, chosen)
  load[chosen.server.key] = (load[chosen.server.key] or 0) + 1
  placed[model] = ranked
  return ranked
end

local function place_all()
  placed, load = {}, {}
  local models = {}
  for model in pairs(last_seen) do models[#models + 1] = model end
  table.sort(models, function(a, b)
    local ha, hb = hash(a), hash(b)
    if ha ~= hb then return ha < hb end
    return a < b
  end)
  for _, model in ipairs(models) do place(model) end
end

local function unplace(model)
  local ranked = placed[model]
  if ranked then
    local key = ranked[1].server.key
    load[key] = load[key] - 1
    placed[model] = nil
  end
end

-- Every REFRESH: the backend's servers that are up (a draining one says DRAIN), and the
-- models that went idle.
local function refresh(now)
  if now - view.at < REFRESH then return end
  local servers = {}
  for name, server in pairs(core.backends[BACKEND].servers) do
    local status = server:get_stats().status or ""
    if status:sub(1, 2) == "UP" then
      servers[#servers + 1] = { name = name, key = server:get_addr(), server = server }
    end
  end
  table.sort(servers, function(a, b) return a.key < b.key end)
  local keys = {}
  for i, s in ipairs(servers) do keys[i] = s.name .. "=" .. s.key end
  local signature = table.concat(keys, ",")
  local changed = signature ~= view.signature
  view = { at = now, servers = servers, signature = signature }
  for model, seen in pairs(last_seen) do
    if now - seen > MODEL_TTL then
      last_seen[model] = nil
      unplace(model)
    end
  end
  if changed then place_all() end
end

local function in_flight(stats)
  return tonumber(stats.scur) or 0
end

-- The server slot for the request's model, or "" (a fetch's nil would read as "0"): the
-- backend's own balancing then picks one.
core.register_fetches("embedserve_replica", function(txn)
  local model = txn:get_var("txn.model")
  if model == nil or model == "" then return "" end
  local t = core.now()
  local now = t.sec + t.usec / 1e6
  last_seen[model] = now
  refresh(now)
  local ranked = placed[model] or place(model)
  if ranked == nil then return "" end
  -- A hot model spills down its ranking to the first replica below the threshold; when
  -- all are at it, it stays home.
  if #ranked > 1 then
    local mean = in_flight(core.backends[BACKEND]:get_stats()) / #view.servers
    local threshold = math.max(SPILL_MIN, SPILL_FACTOR * mean)
    for _, r in ipairs(ranked) do
      if in_flight(r.server.server:get_stats()) < threshold then return r.server.name end
    end
  end
  return ranked[1].server.name
end)
