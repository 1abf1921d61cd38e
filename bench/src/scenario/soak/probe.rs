//! The soak's readings of the node: RSS and open file descriptors from `/proc`, and from
//! its `/metrics` the gauges that must return to their idle level once the load is gone
//! (queued bytes, tracked and runtime tasks, connections, subscriptions).

use serde::Serialize;
use tokio::time::Instant;

use crate::{infra, setup::Setup};

/// Gauges read from `/metrics` (summed over labels and nodes).
const GAUGES: [&str; 5] = [
    "gateway_outbound_queue_bytes",
    "gateway_tasks",
    "gateway_runtime_tasks",
    "gateway_connections",
    "gateway_subscriptions",
];

/// One reading of the node (summed over the nodes whose pid is known for RSS and fds).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// What the reading is (`baseline`, `warm`, `load`, `end`, …).
    pub label: String,
    /// Seconds since the soak's load started (negative before it).
    pub t_secs: f64,
    /// Resident set, KiB.
    pub rss_kib: Option<u64>,
    /// Open file descriptors (`/proc/<pid>/fd`).
    pub fds: Option<u64>,
    /// `gateway_outbound_queue_bytes`.
    pub queue_bytes: u64,
    /// `gateway_tasks`: tasks the node tracks.
    pub tasks: Option<u64>,
    /// `gateway_runtime_tasks`: tasks alive in the node's runtime.
    pub runtime_tasks: Option<u64>,
    /// `gateway_connections`, all kinds.
    pub connections: u64,
    /// `gateway_subscriptions`.
    pub subscriptions: u64,
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The sum of every series of each of [`GAUGES`] in a Prometheus text body (None when
/// the gauge is absent, i.e. never set).
fn gauges(body: &str) -> [Option<f64>; GAUGES.len()] {
    let mut out = [None; GAUGES.len()];
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let Some(i) = GAUGES.iter().position(|g| *g == name) {
            let v = value.parse::<f64>().unwrap_or(0.0);
            out[i] = Some(out[i].unwrap_or(0.0) + v);
        }
    }
    out
}

/// Reads every node now.
pub async fn sample(setup: &Setup, label: &str, load_start: Instant) -> Sample {
    let mut sums = [None::<f64>; GAUGES.len()];
    for n in &setup.nodes {
        let Ok(resp) = infra::http_client().get(format!("{}/metrics", n.http)).send().await else { continue };
        let Ok(body) = resp.text().await else { continue };
        for (s, g) in sums.iter_mut().zip(gauges(&body)) {
            if let Some(g) = g {
                *s = Some(s.unwrap_or(0.0) + g);
            }
        }
    }
    let fds: Vec<u64> = setup.nodes.iter().filter_map(|n| n.pid.and_then(fd_count)).collect();
    let whole = |v: Option<f64>| v.map(|v| v.max(0.0).round() as u64);
    let now = Instant::now();
    let t_secs = if now >= load_start {
        now.duration_since(load_start).as_secs_f64()
    } else {
        -load_start.duration_since(now).as_secs_f64()
    };
    Sample {
        label: label.to_owned(),
        t_secs,
        rss_kib: setup.rss_kib(),
        fds: (!fds.is_empty()).then(|| fds.iter().sum()),
        queue_bytes: whole(sums[0]).unwrap_or(0),
        tasks: whole(sums[1]),
        runtime_tasks: whole(sums[2]),
        connections: whole(sums[3]).unwrap_or(0),
        subscriptions: whole(sums[4]).unwrap_or(0),
    }
}

impl Sample {
    /// The reading as one table cell.
    pub fn cell(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        format!(
            "RSS {} · fds {} · queue {} B · tasks {} (runtime {}) · conns {} · subs {}",
            self.rss_kib.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            opt(self.fds),
            self.queue_bytes,
            opt(self.tasks),
            opt(self.runtime_tasks),
            self.connections,
            self.subscriptions,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_of_each_gauge() {
        let body = "# TYPE gateway_connections gauge\n\
            gateway_connections{kind=\"user\"} 3\n\
            gateway_connections{kind=\"agent\"} 2\n\
            gateway_outbound_queue_bytes 128\n\
            gateway_tasks 7\n\
            gateway_tasks_other 99\n";
        let g = gauges(body);
        assert_eq!(g, [Some(128.0), Some(7.0), None, Some(5.0), None]);
    }
}
