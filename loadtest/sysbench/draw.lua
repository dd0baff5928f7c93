-- The server's `lottery.draw` (draw_count 1) as sysbench runs it: a C
-- client (libmariadb) sending exactly the statements the server sends for
-- one draw, as prepared statements, one transaction per event. What the
-- database can do for the real draw with no Rust, sqlx or tokio in front.
--
-- One thread = one benchmark user (mobile 1009 + 7-digit thread number, no
-- guest can have it), so no two transactions wait on the same user row, as
-- in `loadtest db-baseline`. The prize is picked as the server picks it:
-- the active wheel's published odds (read from lottery_prizes), the pity
-- rule, and for a limited prize the same conditional stock UPDATE, falling
-- back as the server does when it changes no row.
--
-- The statements, in order (from MariaDB's general log of the server):
--   BEGIN
--   INSERT INTO idempotency_keys (…) VALUES (?, ?, ?, '')         claim the key
--   SELECT … FROM users WHERE user_id = ? FOR UPDATE                lock the user
--   UPDATE lottery_prizes SET stock = stock - 1
--     WHERE prize_id = ? AND stock > 0                              limited prize only
--   INSERT INTO draw_records (…) VALUES (…)
--   INSERT INTO points_records (…) VALUES (…)[, (…)]               spend [+ prize points]
--   INSERT INTO user_events (user_id, seq, type, frame) VALUES (…)  points_update
--   UPDATE users SET total_points = ?, last_seq = ?, … WHERE user_id = ?
--   UPDATE idempotency_keys SET response = ? WHERE user_id = ? AND idem_key = ?
--   COMMIT
--
-- Not statements, so not here: the daily draw limit (a check in the
-- server's code; draw_day_count simply grows) and the balance check (the
-- users are given plenty).
--
--   sysbench draw.lua --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port=3307 \
--     --mysql-user=root --mysql-db=DB --threads=N prepare | run | cleanup
-- loadtest/sysbench/draw.sh does all three and prints latency percentiles.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } sb_draw_timeval;
int gettimeofday(sb_draw_timeval *tv, void *tz);
]]

sysbench.cmdline.options = {
   points = {"Points each benchmark user is given at prepare", 100000000},
   utc_offset = {"The business day's offset from UTC, minutes (the server's default)", 480},
}

local MOBILE_PREFIX = "1009"
local NICKNAME = "sysbench-draw"

local function mobile_of(n)
   return string.format("%s%07d", MOBILE_PREFIX, n)
end

local function connect()
   local con = sysbench.sql.driver():connect()
   -- What sqlx and the server set on every connection the server opens.
   con:query("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
   con:query("SET time_zone = '+00:00'")
   con:query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
   return con
end

-- prepare: one user per thread, each with --points points (the balance
-- and a matching ledger line, under the row lock).
function cmd_prepare()
   local con = connect()
   for n = 0, sysbench.opt.threads - 1 do
      local mobile = mobile_of(n)
      local id = con:query_row("SELECT user_id FROM users WHERE mobile = '" .. mobile .. "'")
      if id == nil then
         con:query("INSERT INTO users (mobile, nickname, total_points) VALUES ('" ..
                      mobile .. "', '" .. NICKNAME .. "', 0)")
         id = con:query_row("SELECT LAST_INSERT_ID()")
      end
      con:query("BEGIN")
      local balance = tonumber(con:query_row(
         "SELECT total_points FROM users WHERE user_id = " .. id .. " FOR UPDATE"))
      local grant = sysbench.opt.points - balance
      if grant > 0 then
         con:query(string.format(
            "UPDATE users SET total_points = %d WHERE user_id = %s", balance + grant, id))
         con:query(string.format(
            "INSERT INTO points_records (user_id, type, points, balance_after, source, description) " ..
               "VALUES (%s, 'earn', %d, %d, 'admin', 'sysbench draw')", id, grant, balance + grant))
      end
      con:query("COMMIT")
   end
   print(string.format("%d benchmark users ready (mobiles %s..%s)", sysbench.opt.threads,
                       mobile_of(0), mobile_of(sysbench.opt.threads - 1)))
end

-- cleanup: every benchmark user's rows, giving back the prize stock their
-- draws took (one transaction per user).
function cmd_cleanup()
   local con = connect()
   local ids = {}
   local rs = con:query("SELECT user_id FROM users WHERE mobile LIKE '" .. MOBILE_PREFIX ..
                           "%' AND nickname = '" .. NICKNAME .. "'")
   for _ = 1, rs.nrows do
      table.insert(ids, rs:fetch_row()[1])
   end
   for _, id in ipairs(ids) do
      con:query("BEGIN")
      local taken = {}
      local t = con:query(
         "SELECT d.prize_id, COUNT(*) FROM draw_records d " ..
            "JOIN lottery_prizes p ON p.prize_id = d.prize_id " ..
            "WHERE d.user_id = " .. id .. " AND d.fallback_from IS NULL AND p.stock IS NOT NULL " ..
            "GROUP BY d.prize_id")
      for _ = 1, t.nrows do
         table.insert(taken, t:fetch_row())
      end
      for _, row in ipairs(taken) do
         con:query("UPDATE lottery_prizes SET stock = stock + " .. row[2] ..
                      " WHERE prize_id = " .. row[1] .. " AND stock IS NOT NULL")
      end
      for _, tbl in ipairs({"idempotency_keys", "user_events", "points_records", "draw_records", "users"}) do
         con:query("DELETE FROM " .. tbl .. " WHERE user_id = " .. id)
      end
      con:query("COMMIT")
   end
   print(string.format("%d benchmark users removed", #ids))
end

sysbench.cmdline.commands = {
   prepare = {cmd_prepare},
   cleanup = {cmd_cleanup},
}

-- Per thread ------------------------------------------------------------

local con, stmt, param = nil, {}, {}
local wheel = {}
local user = {}
local run_tag
local count = 0

local T = sysbench.sql.type

-- Prepares `sql` as statement `name` with parameters of `types`
-- (VARCHAR with their maximum length).
local function prepare(name, sql, types)
   stmt[name] = con:prepare(sql)
   param[name] = {}
   for i, t in ipairs(types) do
      if type(t) == "number" then
         param[name][i] = stmt[name]:bind_create(T.VARCHAR, t)
      else
         param[name][i] = stmt[name]:bind_create(T.BIGINT)
      end
   end
   stmt[name]:bind_param(unpack(param[name]))
end

local function run(name, ...)
   local values = {...}
   for i, p in ipairs(param[name]) do
      p:set(values[i])
   end
   return stmt[name]:execute()
end

local INT = "int"

local function read_wheel()
   local settings = con:query(
      "SELECT version, cost_points, pity_threshold FROM lottery_settings WHERE id = 1")
   local s = settings:fetch_row()
   wheel = {version = tonumber(s[1]), cost = tonumber(s[2]), pity = tonumber(s[3]), prizes = {}}
   local rs = con:query(
      "SELECT prize_id, prize_name, prize_type, CAST(ROUND(prize_value * 100) AS SIGNED), angle, " ..
         "CAST(ROUND(probability * 10000) AS SIGNED), is_valuable, stock IS NOT NULL " ..
         "FROM lottery_prizes WHERE status = 'active' ORDER BY angle")
   for _ = 1, rs.nrows do
      local r = rs:fetch_row()
      table.insert(wheel.prizes, {
         id = tonumber(r[1]), name = r[2], kind = r[3], cents = tonumber(r[4]),
         angle = tonumber(r[5]), weight = tonumber(r[6]), valuable = r[7] == "1",
         limited = r[8] == "1",
      })
   end
   if #wheel.prizes ~= 8 then
      error("the wheel has " .. #wheel.prizes .. " active prizes, not 8: is this the server's database?")
   end
end

function thread_init()
   con = connect()
   read_wheel()
   local mobile = mobile_of(sysbench.tid)
   local rs = con:query("SELECT user_id, total_points, last_seq, pity_count, " ..
                           "IFNULL(draw_day, ''), draw_day_count FROM users WHERE mobile = '" ..
                           mobile .. "'")
   local r = rs:fetch_row()
   if r == nil then
      error("no benchmark user " .. mobile .. ": run `prepare` with at least as many --threads")
   end
   user = {id = tonumber(r[1]), points = tonumber(r[2]), seq = tonumber(r[3]),
           pity = tonumber(r[4]), day = r[5], day_count = tonumber(r[6])}
   run_tag = string.format("sb%x", os.time())

   prepare("claim", "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response) " ..
              "VALUES (?, ?, ?, '')", {INT, 64, 64})
   prepare("lock", "SELECT user_id, mobile, total_points, last_seq, pity_count, draw_day, " ..
              "draw_day_count, status FROM users WHERE user_id = ? FOR UPDATE", {INT})
   prepare("stock", "UPDATE lottery_prizes SET stock = stock - 1 WHERE prize_id = ? AND stock > 0",
           {INT})
   prepare("draw", "INSERT INTO draw_records (draw_id, user_id, prize_id, prize_name, prize_type, " ..
              "prize_value, angle, points_cost, is_pity, pity_before, fallback_from, " ..
              "config_version, request_key) " ..
              "VALUES (?, ?, ?, ?, ?, CAST(? AS DECIMAL(12,2)) / 100, ?, ?, ?, ?, ?, ?, ?)",
           {26, INT, INT, 100, 16, INT, INT, INT, INT, INT, INT, INT, 64})
   local row = "(?, ?, ?, ?, ?, ?, ?)"
   local cols = "INSERT INTO points_records (user_id, type, points, balance_after, source, " ..
      "description, related_id) VALUES "
   local types = {INT, 8, INT, INT, 32, 255, 64}
   prepare("ledger1", cols .. row, types)
   local two = {}
   for _, t in ipairs(types) do table.insert(two, t) end
   for _, t in ipairs(types) do table.insert(two, t) end
   prepare("ledger2", cols .. row .. ", " .. row, two)
   prepare("event", "INSERT INTO user_events (user_id, seq, type, frame) VALUES (?, ?, ?, ?)",
           {INT, INT, 32, 1024})
   prepare("save", "UPDATE users SET total_points = ?, last_seq = ?, pity_count = ?, draw_day = ?, " ..
              "draw_day_count = ? WHERE user_id = ?", {INT, INT, INT, 10, INT, INT})
   prepare("store", "UPDATE idempotency_keys SET response = ? WHERE user_id = ? AND idem_key = ?",
           {1024, INT, 64})
end

function thread_done()
   con:disconnect()
end

-- The wheel's pick (rules/wheel.rs): a uniform ticket over the eligible
-- prizes' weights; with the pity counter at the threshold only valuable
-- prizes are eligible.
local function pick(pity)
   local forced = pity >= wheel.pity
   local total = 0
   for _, p in ipairs(wheel.prizes) do
      if not forced or p.valuable then total = total + p.weight end
   end
   local ticket = sysbench.rand.uniform(0, math.max(total, 1) - 1)
   for i, p in ipairs(wheel.prizes) do
      if not forced or p.valuable then
         if ticket < p.weight then return i, forced end
         ticket = ticket - p.weight
      end
   end
   return nil, forced
end

-- What an out-of-stock pick becomes: the most likely unlimited valuable
-- prize for a forced draw, the most likely unlimited empty one otherwise.
local function fallback(forced)
   local best, weight = 1, -1
   for i, p in ipairs(wheel.prizes) do
      local ok = not p.limited and (forced and p.valuable or (not forced and p.kind == "empty"))
      if ok and p.weight > weight then best, weight = i, p.weight end
   end
   return best
end

local CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

local function base32(n, width)
   local out = {}
   for i = width, 1, -1 do
      local d = n % 32
      out[i] = CROCKFORD:sub(d + 1, d + 1)
      n = (n - d) / 32
   end
   return table.concat(out)
end

local tv = ffi.new("sb_draw_timeval")

local function now_ms()
   ffi.C.gettimeofday(tv, nil)
   return tonumber(tv.tv_sec) * 1000 + math.floor(tonumber(tv.tv_usec) / 1000)
end

-- A ULID (the draw's id): the time, then this thread and its count where
-- the randomness would be, so ids are unique across threads.
local function ulid(ms)
   return base32(ms, 10) .. base32(sysbench.tid, 3) .. base32(count % 33554432, 5) ..
      base32(sysbench.rand.uniform(0, 1073741823), 6) .. base32(sysbench.rand.uniform(0, 1023), 2)
end

local function rfc3339(ms)
   return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(ms / 1000)) .. string.format(".%03dZ", ms % 1000)
end

local function money(cents)
   return string.format("%d.%02d", math.floor(cents / 100), cents % 100)
end

local function draw()
   count = count + 1
   local ms = now_ms()
   local key = string.format("%s-%d-%d", run_tag, sysbench.tid, count)
   local draw_id = ulid(ms)
   local u = user

   con:query("BEGIN")
   run("claim", u.id, key, "lottery.draw:1")
   -- A read answers the connection's one result struct; sysbench gives
   -- nothing back for a write, but stores its affected rows there too.
   local result = run("lock", u.id)
   if result == nil or result.nrows ~= 1 then
      error("benchmark user " .. u.id .. " is gone")
   end
   local today = os.date("!%Y-%m-%d", math.floor(ms / 1000) + sysbench.opt.utc_offset * 60)
   local day_count = (u.day == today) and u.day_count + 1 or 1

   local index, forced = pick(u.pity)
   local fallback_from = nil
   if wheel.prizes[index].limited then
      run("stock", wheel.prizes[index].id)
      if result.nrows == 0 then
         fallback_from = wheel.prizes[index].id
         index = fallback(forced)
      end
   end
   local prize = wheel.prizes[index]
   local pity = prize.valuable and 0 or u.pity + 1
   local gain = prize.kind == "points" and math.floor(prize.cents / 100) or 0
   local after_cost = u.points - wheel.cost
   local balance = after_cost + gain
   local seq = u.seq + 1

   run("draw", draw_id, u.id, prize.id, prize.name, prize.kind, prize.cents, prize.angle,
       wheel.cost, forced and 1 or 0, u.pity, fallback_from, wheel.version, key)
   local spend = {u.id, "spend", wheel.cost, after_cost, "lottery", "抽奖消耗（1次）", draw_id}
   if gain > 0 then
      run("ledger2", spend[1], spend[2], spend[3], spend[4], spend[5], spend[6], spend[7],
          u.id, "earn", gain, balance, "lottery_prize", "抽奖奖励：" .. prize.name, draw_id)
   else
      run("ledger1", unpack(spend))
   end
   run("event", u.id, seq, "points_update", string.format(
          '{"type":"points_update","seq":%d,"data":{"user_id":%d,"total_points":%d,' ..
             '"change_points":%d,"reason":"抽奖消耗","source":"lottery","timestamp":"%s"}}',
          seq, u.id, balance, balance - u.points, rfc3339(ms)))
   run("save", balance, seq, pity, today, day_count, u.id)
   run("store", string.format(
          '{"draws":[{"draw_id":"%s","prize_id":%d,"prize_name":"%s","prize_type":"%s",' ..
             '"prize_value":%s,"angle":%d,"is_pity":%s}],"points_cost":%d,"remaining_points":%d}',
          draw_id, prize.id, prize.name, prize.kind, money(prize.cents), prize.angle,
          tostring(forced), wheel.cost, balance), u.id, key)
   con:query("COMMIT")

   -- Only a committed draw moves the user on.
   user = {id = u.id, points = balance, seq = seq, pity = pity, day = today, day_count = day_count}
end

function event()
   local ok, err = pcall(draw)
   if not ok then
      -- A failed statement may leave the transaction open (a lock wait
      -- timeout rolls back only the statement): end it before sysbench
      -- retries an ignorable error or stops on another.
      pcall(function() con:query("ROLLBACK") end)
      error(err, 0)
   end
end
