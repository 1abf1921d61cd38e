//! Observations for fault tests: a node's `/ready` over time, and what Redis holds behind
//! the gateway's back (connection counts, presence entries), read with a plain client so
//! a test checks the stored truth rather than the gateway's view of it. Every wait is
//! bounded.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::bail;
use tokio::time::Instant;

use crate::resp::{self, Reply};

/// The status `/ready` answers on `addr` (0 when it does not answer within 1 s).
pub async fn ready_status(addr: SocketAddr) -> u16 {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build();
    let Ok(http) = http else { return 0 };
    match http.get(format!("http://{addr}/ready")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `/ready` on `addr` every 25 ms until it answers `want`; returns how long that
/// took. Fails after `limit`.
pub async fn wait_ready(addr: SocketAddr, want: u16, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let got = ready_status(addr).await;
        if got == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= limit {
            bail!("/ready on {addr} still {got} after {limit:?}, want {want}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Entries in `kind`/`id`'s connection count (`gw:conns:<kind>:<id>`), live or not yet
/// reaped, on the Redis at `port`.
pub async fn conn_entries(port: u16, kind: &str, id: &str) -> anyhow::Result<i64> {
    let key = format!("gw:conns:{kind}:{id}");
    match resp::command(port, &["ZCARD", &key]).await? {
        Reply::Int(n) => Ok(n),
        other => bail!("ZCARD {key}: {other:?}"),
    }
}

/// Principals (`kind/id`) with entries in `channel`'s presence, and how many each, on
/// the Redis at `port`; also checks that the count hash agrees with the entries.
pub async fn presence_entries(port: u16, channel: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let zset = format!("gw:presence:{channel}");
    let mut entries = BTreeMap::new();
    for m in resp::command(port, &["ZRANGE", &zset, "0", "-1"]).await?.items() {
        // Members are `node/conn/kind/id` (node and conn escaped, so no `/` inside).
        let Some(principal) = m.text().and_then(|t| t.splitn(3, '/').nth(2)) else { bail!("member {m:?}") };
        *entries.entry(principal.to_owned()).or_insert(0) += 1;
    }
    let hash = format!("gw:presence-count:{channel}");
    let counted = resp::command(port, &["HGETALL", &hash]).await?;
    let mut counts = BTreeMap::new();
    for kv in counted.items().chunks_exact(2) {
        if let (Some(k), Some(v)) = (kv[0].text(), kv[1].int()) {
            counts.insert(k.to_owned(), v);
        }
    }
    if counts != entries {
        bail!("presence count hash {counts:?} disagrees with entries {entries:?} in {channel}");
    }
    Ok(entries)
}

/// Polls `check` every 50 ms until it holds; returns how long that took. Fails with the
/// last observation after `limit`.
pub async fn until<E, F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(last) if start.elapsed() >= limit => bail!("not within {limit:?}; last: {last:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
