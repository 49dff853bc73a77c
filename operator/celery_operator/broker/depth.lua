-- Queue depth of every queue of one Redis broker in one server call (celery_operator/broker/depth.py).
-- ARGV: key prefix, kombu's priority separator, the number of priority levels, '1' to count reserved
-- messages, the name of kombu's `unacked` hash, kombu's binding key prefix, then the queue names.
-- Returns n pending counts (each queue's list plus its priority lists), then n reserved counts (the
-- `unacked` hash attributed to queues the way kombu routes them back on restore).
local prefix, sep = ARGV[1], ARGV[2]
local levels = tonumber(ARGV[3])
local count_reserved = ARGV[4] == '1'
local unacked_key, binding_prefix = ARGV[5], ARGV[6]
local n = #ARGV - 6
local out, index, suffix = {}, {}, {}
for p = 1, levels do suffix[p] = sep .. p end
local function len(key)
  local r = redis.pcall('LLEN', key)
  if type(r) == 'number' then return r end
  return 0
end
for i = 1, n do
  local q = ARGV[i + 6]
  index[q] = i
  local key = prefix .. q
  local total = len(key)
  if levels > 0 then
    -- one EXISTS for the priority lists; LLEN them only when one exists (rarely all nine)
    local keys = {}
    for p = 1, levels do keys[p] = key .. suffix[p] end
    local some = redis.pcall('EXISTS', unpack(keys))
    if type(some) == 'number' and some > 0 then
      for p = 1, levels do total = total + len(keys[p]) end
    end
  end
  out[i] = total
  out[n + i] = 0
end
if count_reserved then
  -- (exchange, routing key) from the tail `..., "<exchange>", "<routing key>"]` of an `unacked`
  -- value with plain finds (a Lua pattern anchored at the end costs 4x more); cjson otherwise.
  local function route(v)
    local size = #v
    local a, z = string.byte(v, size - 1, size)
    if a == 34 and z == 93 then
      local last
      local pos = string.find(v, '", "', math.max(1, size - 600), true)
      while pos do last = pos; pos = string.find(v, '", "', pos + 1, true) end
      if last then
        local rk = string.sub(v, last + 4, size - 2)
        local i = last - 1
        while i > 1 and string.byte(v, i) ~= 34 do i = i - 1 end
        if i > 1 and string.byte(v, i - 1) ~= 92 then
          local ex = string.sub(v, i + 1, last - 1)
          if not string.find(rk, '["\\]') and not string.find(ex, '\\', 1, true) then return ex, rk end
        end
      end
    end
    local ok, decoded = pcall(cjson.decode, v)
    if ok and type(decoded) == 'table' and type(decoded[3]) == 'string' then
      return type(decoded[2]) == 'string' and decoded[2] or '', decoded[3]
    end
    return nil, nil
  end
  local function topic_pattern(bkey)
    local words = {}
    for word in string.gmatch(bkey .. '.', '([^.]*)%.') do
      if word == '*' then words[#words + 1] = '[^.]+'
      elseif word == '#' then words[#words + 1] = '.-'
      else words[#words + 1] = (string.gsub(word, '[%^%$%(%)%%%.%[%]%*%+%-%?]', '%%%0')) end
    end
    return '^' .. table.concat(words, '%.') .. '$'
  end
  local tables = {}
  local function bindings(exchange)
    local t = tables[exchange]
    if t then return t end
    t = {}
    local members = redis.pcall('SMEMBERS', prefix .. binding_prefix .. exchange)
    if type(members) == 'table' and members.err == nil then
      for _, m in ipairs(members) do
        local a = string.find(m, sep, 1, true)
        if a then
          local b = string.find(m, sep, a + #sep, true)
          if b then
            local bkey, pattern, queue = string.sub(m, 1, a - 1), string.sub(m, a + #sep, b - 1), string.sub(m, b + #sep)
            if index[queue] then
              t[#t + 1] = {bkey, pattern ~= '' and topic_pattern(bkey) or nil, index[queue]}
            end
          end
        end
      end
    end
    tables[exchange] = t
    return t
  end
  local values = redis.pcall('HVALS', prefix .. unacked_key)
  if type(values) == 'table' and values.err == nil then
    for _, v in ipairs(values) do
      local ex, rk = route(v)
      if rk ~= nil then
        if ex == '' then
          local i = index[rk]
          if i then out[n + i] = out[n + i] + 1 end
        else
          for _, b in ipairs(bindings(ex)) do
            if (b[2] == nil and b[1] == rk) or (b[2] ~= nil and string.find(rk, b[2])) then
              out[n + b[3]] = out[n + b[3]] + 1
            end
          end
        end
      end
    end
  end
end
return out
