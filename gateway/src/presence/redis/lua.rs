//! The Lua scripts of Redis presence. Each runs atomically on the server and stamps
//! leases with the server's `TIME` (scripts are replicated by effect, so that is allowed).
//! Every script is idempotent: running it twice changes nothing the second time.

/// Shared prelude: the server clock in ms, and the index upkeep after a channel changes.
macro_rules! lua {
    ($body:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            "local function reindex(z, c, idx, ch)\n",
            "  local f = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')\n",
            "  if f[2] then redis.call('ZADD', idx, f[2], ch)\n",
            "  else redis.call('ZREM', idx, ch); redis.call('DEL', c) end\n",
            "end\n",
            $body
        )
    };
}

/// KEYS conns; ARGV member, limit, lease → 1 admitted, 0 full.
const ADMIT: &str = lua!(
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  return 1
end
return 0"
);
/// KEYS zset, counts, index; ARGV member, principal, lease, channel → 1 when first.
const JOIN: &str = lua!(
    "local first = 0
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then first = 1 end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[4])
return first"
);
/// KEYS zset, counts, index; ARGV member, principal, channel → 1 when last.
const LEAVE: &str = lua!(
    "local last = 0
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]); last = 1 end
end
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[3])
return last"
);
/// KEYS zset → members whose lease has not expired.
const LIVE: &str = lua!("return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')");
/// KEYS conns...; ARGV lease, then per key: n, n members. Drops expired members too.
const REFRESH_CONNS: &str = lua!(
    "local lease = tonumber(ARGV[1])
local i = 2
for _, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = tonumber(ARGV[i]); i = i + 1
  for j = 1, n do redis.call('ZADD', k, now + lease, ARGV[i]); i = i + 1 end
  if redis.call('PTTL', k) < lease then redis.call('PEXPIRE', k, lease) end
end
return 0"
);
/// KEYS index, (zset, counts)...; ARGV lease, then per channel: name, n, n × (member,
/// principal). Re-adds (and counts) entries Redis lost → number re-added.
const REFRESH_PRESENCE: &str = lua!(
    "local lease = tonumber(ARGV[1])
local i, added = 2, 0
for k = 2, #KEYS, 2 do
  local z, c = KEYS[k], KEYS[k + 1]
  local ch, n = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  for j = 1, n do
    if not redis.call('ZSCORE', z, ARGV[i]) then redis.call('HINCRBY', c, ARGV[i + 1], 1); added = added + 1 end
    redis.call('ZADD', z, now + lease, ARGV[i]); i = i + 2
  end
  reindex(z, c, KEYS[1], ch)
end
return added"
);
/// KEYS index; ARGV limit → channels with an expired entry.
const DUE: &str = lua!("return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])");
/// KEYS index, (zset, counts)...; ARGV limit, channel names → flat (channel, principal)
/// pairs whose last entry expired. Atomic: one caller removes (and reports) each entry.
const REAP: &str = lua!(
    "local out = {}
for k = 2, #KEYS, 2 do
  local z, c, ch = KEYS[k], KEYS[k + 1], ARGV[k / 2 + 1]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, ARGV[1])) do
    redis.call('ZREM', z, m)
    local p = string.match(m, '^[^/]*/[^/]*/(.*)$')
    if p and redis.call('HINCRBY', c, p, -1) <= 0 then
      redis.call('HDEL', c, p); table.insert(out, ch); table.insert(out, p)
    end
  end
  reindex(z, c, KEYS[1], ch)
end
return out"
);
/// KEYS node hash, nodes; ARGV node, lease, connections, users, agents, status.
const BEAT: &str = lua!(
    "redis.call('HSET', KEYS[1], 'connections', ARGV[3], 'connectedUsers', ARGV[4], 'connectedAgents', ARGV[5],
  'status', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return 0"
);
/// KEYS node hashes → 4 fields per node, flat.
const NODE_FIELDS: &str = lua!(
    "local out = {}
for _, k in ipairs(KEYS) do
  for _, v in ipairs(redis.call('HMGET', k, 'connections', 'connectedUsers', 'connectedAgents', 'status')) do
    table.insert(out, v or '')
  end
end
return out"
);

/// The scripts, by their position in [`SCRIPTS`].
#[derive(Clone, Copy)]
pub(super) enum Lua {
    Admit,
    Join,
    Leave,
    Live,
    RefreshConns,
    RefreshPresence,
    Due,
    Reap,
    Beat,
    NodeFields,
}

/// Script bodies, in [`Lua`] order.
pub(super) const SCRIPTS: [&str; 10] =
    [ADMIT, JOIN, LEAVE, LIVE, REFRESH_CONNS, REFRESH_PRESENCE, DUE, REAP, BEAT, NODE_FIELDS];
