//! The Lua scripts of Redis presence, and the encoding of their arguments and replies.
//! Each runs atomically on the server and stamps leases with the server's `TIME` (scripts
//! are replicated by effect, so that is allowed). Every script is idempotent: running it
//! twice changes nothing the second time.
//!
//! Scripts touching channels take `KEYS[1]` = the channel index, then four keys per
//! channel starting at `k`: entries zset, count hash, users zset, agents zset.

use gateway_protocol::{Channel, Principal, PrincipalKind};

use crate::presence::{ConnLease, Expired};

/// Entries one refresh script call carries at most (keeps each script, and each hold of
/// the exclusive gate, short).
const REFRESH_BATCH: usize = 500;

/// Shared prelude: the server clock in ms, index upkeep after a channel or a connection
/// count changes (`creindex`: principal → earliest expiry of its count entries), and the
/// per-kind principal zsets (principal → latest expiry of its entries, which makes
/// `stats` a few `ZCOUNT`s and `members` a bounded range).
macro_rules! lua {
    ($body:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            "local function reindex(k, ch)\n",
            "  local f = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')\n",
            "  if f[2] then redis.call('ZADD', KEYS[1], f[2], ch)\n",
            "  else redis.call('ZREM', KEYS[1], ch); redis.call('DEL', KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]) end\n",
            "end\n",
            "local function pkey(k, p)\n",
            "  if string.sub(p, 1, 6) == 'agent/' then return KEYS[k + 3] end\n",
            "  return KEYS[k + 2]\n",
            "end\n",
            "local function mark(k, p, exp)\n",
            "  local s = redis.call('ZSCORE', pkey(k, p), p)\n",
            "  if not s or tonumber(s) < exp then redis.call('ZADD', pkey(k, p), exp, p) end\n",
            "end\n",
            "local function creindex(ix, k, p)\n",
            "  local f = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')\n",
            "  if f[2] then redis.call('ZADD', KEYS[ix], f[2], p) else redis.call('ZREM', KEYS[ix], p) end\n",
            "end\n",
            "local function gone(k, c, p)\n",
            "  if redis.call('HINCRBY', c, p, -1) > 0 then return false end\n",
            "  redis.call('HDEL', c, p); redis.call('ZREM', pkey(k, p), p)\n",
            "  return true\n",
            "end\n",
            $body
        )
    };
}

/// KEYS conns, conns index; ARGV member, limit, lease, principal → 0 full, 1 admitted,
/// 2 admitted as the principal's first entry. Expired entries do not count against the
/// limit but are left for `REAP_CONNS` to report; while one is there the principal is not
/// "first" (its offline has not been announced yet). The set never expires as a whole
/// (`PERSIST` clears a TTL older versions set): the reaper must see every entry.
const ADMIT: &str = lua!(
    "local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held or redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') < tonumber(ARGV[2]) then
  local first = not held and redis.call('ZCARD', KEYS[1]) == 0
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PERSIST', KEYS[1])
  creindex(2, KEYS[1], ARGV[4])
  if first then return 2 end
  return 1
end
return 0"
);
/// KEYS conns, conns index; ARGV member, principal → 1 when it was the principal's last
/// entry (live or expired).
const RELEASE: &str = lua!(
    "local last = 0
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('ZCARD', KEYS[1]) == 0 then last = 1 end
creindex(2, KEYS[1], ARGV[2])
return last"
);
/// KEYS index, channel keys; ARGV member, principal, lease, channel → 1 when first.
const JOIN: &str = lua!(
    "local first, exp = 0, now + tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then first = 1 end
end
redis.call('ZADD', KEYS[2], exp, ARGV[1])
mark(2, ARGV[2], exp)
reindex(2, ARGV[4])
return first"
);
/// KEYS index, channel keys; ARGV member, principal, channel → 1 when last.
const LEAVE: &str = lua!(
    "local last = 0
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 and gone(2, KEYS[3], ARGV[2]) then last = 1 end
reindex(2, ARGV[3])
return last"
);
/// KEYS zset → members whose lease has not expired.
const LIVE: &str = lua!("return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')");
/// KEYS users zset, agents zset; ARGV cap → up to `cap` live principals, users first.
const MEMBERS: &str = lua!(
    "local cap = tonumber(ARGV[1])
local out = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, cap)
if #out < cap then
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'LIMIT', 0, cap - #out)) do
    table.insert(out, p)
  end
end
return out"
);
/// KEYS entries zset, users zset, agents zset → live connections, users, agents.
const STATS: &str = lua!(
    "local live = '(' .. now
return {redis.call('ZCOUNT', KEYS[1], live, '+inf'), redis.call('ZCOUNT', KEYS[2], live, '+inf'),
  redis.call('ZCOUNT', KEYS[3], live, '+inf')}"
);
/// KEYS conns index, conns...; ARGV lease, then per key: principal, n, n members →
/// flat (principal, member, first) triples of the members it re-added (Redis lost them or
/// another node reaped them); `first` is `1` when the principal had no entry left.
const REFRESH_CONNS: &str = lua!(
    "local lease = tonumber(ARGV[1])
local out, i = {}, 2
for k = 2, #KEYS do
  local p, n = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  for j = 1, n do
    local m = ARGV[i]; i = i + 1
    if not redis.call('ZSCORE', KEYS[k], m) then
      local first = '0'
      if redis.call('ZCARD', KEYS[k]) == 0 then first = '1' end
      table.insert(out, p); table.insert(out, m); table.insert(out, first)
    end
    redis.call('ZADD', KEYS[k], now + lease, m)
  end
  redis.call('PERSIST', KEYS[k])
  creindex(1, KEYS[k], p)
end
return out"
);
/// KEYS index, channel keys...; ARGV lease, then per channel: name, n, n × (member,
/// principal). Re-adds (and counts) entries Redis lost or another node reaped → flat
/// {re-added, then (channel, principal) pairs whose count went 0 → 1}: those principals
/// were gone (a reaper announced their leave) and are back.
const REFRESH_PRESENCE: &str = lua!(
    "local exp = now + tonumber(ARGV[1])
local out, added, i = {''}, 0, 2
for k = 2, #KEYS, 4 do
  local z, c = KEYS[k], KEYS[k + 1]
  local ch, n = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  for j = 1, n do
    local m, p = ARGV[i], ARGV[i + 1]; i = i + 2
    if not redis.call('ZSCORE', z, m) then
      added = added + 1
      if redis.call('HINCRBY', c, p, 1) == 1 then table.insert(out, ch); table.insert(out, p) end
    end
    redis.call('ZADD', z, exp, m)
    mark(k, p, exp)
  end
  reindex(k, ch)
end
out[1] = tostring(added)
return out"
);
/// KEYS index; ARGV limit → channels with an expired entry.
const DUE: &str = lua!("return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])");
/// KEYS index, channel keys...; ARGV limit, channel names → flat (channel, principal)
/// pairs whose last entry expired. Atomic: one caller removes (and reports) each entry.
const REAP: &str = lua!(
    "local out = {}
for k = 2, #KEYS, 4 do
  local z, c, ch = KEYS[k], KEYS[k + 1], ARGV[(k - 2) / 4 + 2]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, ARGV[1])) do
    redis.call('ZREM', z, m)
    local p = string.match(m, '^[^/]*/[^/]*/(.*)$')
    if p and gone(k, c, p) then table.insert(out, ch); table.insert(out, p) end
  end
  reindex(k, ch)
end
return out"
);
/// KEYS conns index, conns...; ARGV limit, principals → flat (principal, member, last)
/// triples of expired entries it removed; `last` is `1` on the removal that emptied the
/// principal's set. Atomic: one caller removes (and reports) each entry.
const REAP_CONNS: &str = lua!(
    "local out = {}
for k = 2, #KEYS do
  local p = ARGV[k]
  local gone = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, ARGV[1])
  for j, m in ipairs(gone) do
    redis.call('ZREM', KEYS[k], m)
    local last = '0'
    if j == #gone and redis.call('ZCARD', KEYS[k]) == 0 then last = '1' end
    table.insert(out, p); table.insert(out, m); table.insert(out, last)
  end
  creindex(1, KEYS[k], p)
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
    Release,
    Join,
    Leave,
    Live,
    Members,
    Stats,
    RefreshConns,
    RefreshPresence,
    Due,
    Reap,
    ReapConns,
    Beat,
    NodeFields,
}

/// Script bodies, in [`Lua`] order.
pub(super) const SCRIPTS: [&str; 14] = [
    ADMIT,
    RELEASE,
    JOIN,
    LEAVE,
    LIVE,
    MEMBERS,
    STATS,
    REFRESH_CONNS,
    REFRESH_PRESENCE,
    DUE,
    REAP,
    REAP_CONNS,
    BEAT,
    NODE_FIELDS,
];

/// `%` and `/` escaped so a member splits unambiguously on `/`.
pub(super) fn esc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// `kind/id`, the principal field of the count hash (the id may contain anything).
pub(super) fn principal_field(p: &Principal) -> String {
    format!("{}/{}", p.kind.as_str(), p.id)
}

/// `%2F` and `%25` back to `/` and `%` (the inverse of [`esc`]).
pub(super) fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (c, skip) = if tail.starts_with("%2F") {
            ('/', 3)
        } else if tail.starts_with("%25") {
            ('%', 3)
        } else {
            ('%', 1)
        };
        out.push(c);
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
}

/// Flat (principal, `node/conn`, flag) triples from a script, as [`ConnLease`]s.
pub(super) fn parse_leases(flat: &[String], what: &str) -> Vec<ConnLease> {
    let mut out = Vec::new();
    for t in flat.chunks_exact(3) {
        match (parse_principal(&t[0]), t[1].split_once('/')) {
            (Some(principal), Some((node, conn))) => {
                out.push(ConnLease { node: unesc(node), conn: unesc(conn), principal, edge: t[2] == "1" })
            }
            _ => tracing::warn!(member = %t[1], principal = %t[0], "unparsable {what} connection entry"),
        }
    }
    out
}

/// Parses `kind/id`.
pub(super) fn parse_principal(field: &str) -> Option<Principal> {
    let (kind, id) = field.split_once('/')?;
    let kind = match kind {
        "user" => PrincipalKind::User,
        "agent" => PrincipalKind::Agent,
        _ => return None,
    };
    Some(Principal { kind, id: id.to_owned() })
}

/// Flat (channel, `kind/id`) pairs from a script, as [`Expired`].
pub(super) fn parse_pairs(flat: &[String], what: &str) -> Vec<Expired> {
    let mut out = Vec::new();
    for pair in flat.chunks_exact(2) {
        match (Channel::parse(&pair[0]), parse_principal(&pair[1])) {
            (Ok(channel), Some(member)) => out.push(Expired { channel, member }),
            _ => tracing::warn!(channel = %pair[0], member = %pair[1], "unparsable {what} presence entry"),
        }
    }
    out
}

/// Snapshot groups (key, members) cut into batches of at most [`REFRESH_BATCH`] entries;
/// a large group spans several batches.
pub(super) fn batches<K: Clone>(groups: Vec<(K, Vec<String>)>) -> Vec<Vec<(K, Vec<String>)>> {
    let (mut out, mut cur, mut n) = (Vec::new(), Vec::new(), 0);
    for (key, members) in groups {
        for chunk in members.chunks(REFRESH_BATCH) {
            if n + chunk.len() > REFRESH_BATCH && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
            n += chunk.len();
            cur.push((key.clone(), chunk.to_vec()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_back_to_principals() {
        let p = Principal { kind: PrincipalKind::User, id: "a/b%c".into() };
        assert_eq!(parse_principal(&principal_field(&p)), Some(p));
        assert_eq!(parse_principal("robot/x"), None);
        assert_eq!(esc("c/1%"), "c%2F1%25");
        for raw in ["c/1%", "%2F", "a%b", "%", "plain", "%252F/"] {
            assert_eq!(unesc(&esc(raw)), raw);
        }
    }

    #[test]
    fn lease_triples_parse() {
        let flat: Vec<String> =
            ["agent/a1", "n%2F1/c1", "1", "user/u", "n2/c2", "0", "robot/x", "n/c", "1"].map(String::from).into();
        let got = parse_leases(&flat, "test");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].node.as_str(), got[0].conn.as_str(), got[0].edge), ("n/1", "c1", true));
        assert_eq!((got[1].principal.id.as_str(), got[1].edge), ("u", false));
    }

    #[test]
    fn batches_are_bounded_and_keep_every_entry() {
        let big: Vec<String> = (0..1_200).map(|i| i.to_string()).collect();
        let groups = vec![("a", vec!["x".to_owned(); 3]), ("big", big), ("b", vec!["y".to_owned(); 498])];
        let out = batches(groups);
        assert!(out.iter().all(|b| b.iter().map(|(_, m)| m.len()).sum::<usize>() <= REFRESH_BATCH));
        assert_eq!(out.iter().flatten().map(|(_, m)| m.len()).sum::<usize>(), 1_701);
        assert_eq!(out.len(), 5);
    }
}
