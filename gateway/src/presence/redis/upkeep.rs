//! Lease upkeep of Redis presence: the refresh that rewrites this node's leases (and
//! notices what another node reaped meanwhile), and the reapers that remove expired
//! entries of any node, each reported by exactly one caller.

use gateway_protocol::{Channel, Principal};

use super::{
    REAP_CHANNELS, REAP_ENTRIES, REAP_ROUNDS, RedisPresence,
    lua::{Lua, batches, parse_leases, parse_pairs, parse_principal, principal_field},
};
use crate::presence::{ConnLease, Expired, PresenceError};

impl RedisPresence {
    /// Rewrites this node's leases (re-adding what Redis lost or another node reaped) in
    /// batches. Each batch holds the gate exclusively only while it runs and refreshes only
    /// what is still held locally, so nothing a concurrent `leave`/`release` removed comes
    /// back, and handshakes wait for one batch at most.
    pub(super) async fn refresh(&self) -> Result<(), PresenceError> {
        let (conns, channels) = {
            let l = self.local();
            let conns: Vec<(Principal, Vec<String>)> =
                l.conns.iter().map(|(p, m)| (p.clone(), m.iter().cloned().collect())).collect();
            let channels: Vec<(Channel, Vec<String>)> =
                l.channels.iter().map(|(c, m)| (c.clone(), m.keys().cloned().collect())).collect();
            (conns, channels)
        };
        let lease = self.lease_ms.to_string();
        for batch in batches(conns) {
            let _exclusive = self.gate.write().await;
            let (mut keys, mut args) = (vec![self.conns_index_key()], vec![lease.clone()]);
            {
                let l = self.local();
                for (principal, mut members) in batch {
                    let held = l.conns.get(&principal);
                    members.retain(|m| held.is_some_and(|h| h.contains(m)));
                    if !members.is_empty() {
                        args.extend([principal_field(&principal), members.len().to_string()]);
                        args.extend(members);
                        keys.push(self.conns_key(&principal));
                    }
                }
            }
            if keys.len() > 1 {
                let out: Vec<String> = self.run(Lua::RefreshConns, keys, args).await?;
                let back = parse_leases(&out, "restored");
                if !back.is_empty() {
                    tracing::info!(restored = back.len(), "connection counts re-established after a lapsed lease");
                    self.restored().extend(back);
                }
            }
        }
        let mut restored = 0u64;
        for batch in batches(channels) {
            let _exclusive = self.gate.write().await;
            let (mut keys, mut args) = (vec![self.index_key()], vec![lease.clone()]);
            {
                let l = self.local();
                for (ch, members) in batch {
                    let Some(held) = l.channels.get(&ch) else { continue };
                    let live: Vec<(&String, &String)> = members.iter().filter_map(|m| held.get_key_value(m)).collect();
                    if live.is_empty() {
                        continue;
                    }
                    keys.extend(self.channel_keys(ch.as_str()));
                    args.extend([ch.as_str().to_owned(), live.len().to_string()]);
                    args.extend(live.into_iter().flat_map(|(m, p)| [m.clone(), p.clone()]));
                }
            }
            if keys.len() == 1 {
                continue;
            }
            let out: Vec<String> = self.run(Lua::RefreshPresence, keys, args).await?;
            restored += out.first().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            let back = parse_pairs(out.get(1..).unwrap_or_default(), "rejoined");
            if !back.is_empty() {
                tracing::info!(rejoined = back.len(), "presence re-established after a lapsed lease");
                self.rejoined().extend(back);
            }
        }
        if restored > 0 {
            tracing::info!(restored, "re-established presence entries missing from redis");
        }
        Ok(())
    }

    /// Removes expired entries of any node; each resulting leave is returned by exactly one
    /// caller cluster-wide. Work per call is bounded; a failure keeps what was reaped.
    pub(super) async fn reap(&self) -> Vec<Expired> {
        let mut out = Vec::new();
        for _ in 0..REAP_ROUNDS {
            let due: Vec<String> =
                match self.run(Lua::Due, vec![self.index_key()], vec![REAP_CHANNELS.to_string()]).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "presence reap skipped");
                        break;
                    }
                };
            if due.is_empty() {
                break;
            }
            let mut keys = vec![self.index_key()];
            keys.extend(due.iter().flat_map(|ch| self.channel_keys(ch)));
            let mut args = vec![REAP_ENTRIES.to_string()];
            args.extend(due.iter().cloned());
            let gone: Vec<String> = match self.run(Lua::Reap, keys, args).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "presence reap interrupted");
                    break;
                }
            };
            out.extend(parse_pairs(&gone, "expired"));
            if due.len() < REAP_CHANNELS {
                break;
            }
        }
        out
    }

    /// Removes expired connection counts of any node; each lost connection is returned
    /// by exactly one caller cluster-wide, `edge` set when it was its principal's last.
    /// Work per call is bounded; a failure keeps what was reaped.
    pub(super) async fn reap_conns(&self) -> Vec<ConnLease> {
        let mut out = Vec::new();
        let index = self.conns_index_key();
        for _ in 0..REAP_ROUNDS {
            let due: Vec<String> = match self.run(Lua::Due, vec![index.clone()], vec![REAP_CHANNELS.to_string()]).await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "connection reap skipped");
                    break;
                }
            };
            if due.is_empty() {
                break;
            }
            let (mut keys, mut args) = (vec![index.clone()], vec![REAP_ENTRIES.to_string()]);
            for field in &due {
                match parse_principal(field) {
                    Some(p) => {
                        keys.push(self.conns_key(&p));
                        args.push(field.clone());
                    }
                    None => tracing::warn!(principal = %field, "unparsable connection index entry"),
                }
            }
            let gone: Vec<String> = match self.run(Lua::ReapConns, keys, args).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "connection reap interrupted");
                    break;
                }
            };
            out.extend(parse_leases(&gone, "expired"));
            if due.len() < REAP_CHANNELS {
                break;
            }
        }
        out
    }
}
