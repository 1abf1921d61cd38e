//! Reporting shared by the scenarios: latency figures from histograms, the printed
//! (metric, value, bar, verdict) table and the one-line `BENCH_JSON {…}` record.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::{infra, setup::Setup};

/// µs as ms.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The `q` quantile of `h` in ms (NaN when empty).
pub fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() { f64::NAN } else { ms(h.value_at_quantile(q)) }
}

/// A latency histogram as JSON (count, percentiles, max and mean in ms; null when empty).
pub fn lat_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "p50_ms": pct(h, 0.5), "p90_ms": pct(h, 0.9), "p99_ms": pct(h, 0.99),
        "p999_ms": pct(h, 0.999), "max_ms": ms(h.max()), "mean_ms": h.mean() / 1000.0,
    })
}

/// `/health` tables (connections, channels, subscriptions) as JSON.
pub fn tables_json((connections, channels, subscriptions): (u64, u64, u64)) -> Value {
    json!({"connections": connections, "channels": channels, "subscriptions": subscriptions})
}

/// A table of (metric, value, bar, verdict) rows.
pub struct Table {
    title: String,
    rows: Vec<[String; 4]>,
    notes: Vec<String>,
}

impl Table {
    /// An empty table.
    pub fn new(title: impl Into<String>) -> Self {
        Table { title: title.into(), rows: Vec::new(), notes: Vec::new() }
    }

    /// A row without a bar.
    pub fn row(&mut self, metric: &str, value: impl Into<String>) {
        self.rows.push([metric.into(), value.into(), String::new(), String::new()]);
    }

    /// A row judged against `bar`.
    pub fn bar(&mut self, metric: &str, value: impl Into<String>, bar: &str, pass: bool) {
        self.rows.push([metric.into(), value.into(), bar.into(), if pass { "PASS" } else { "FAIL" }.into()]);
    }

    /// A bar row that is only judged at the bar's size (`None` prints `n/a`).
    pub fn bar_opt(&mut self, metric: &str, value: impl Into<String>, bar: &str, pass: Option<bool>) {
        let v = match pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        };
        self.rows.push([metric.into(), value.into(), bar.into(), v.into()]);
    }

    /// A bar row judged only when `judged` (the run has the bar's size); when the value
    /// is unknown, the plain row `unknown` (metric, text) instead.
    pub fn sized_bar(
        &mut self,
        metric: &str,
        value: Option<String>,
        bar: &str,
        judged: bool,
        pass: bool,
        unknown: (&str, &str),
    ) {
        match value {
            Some(v) => self.bar_opt(metric, v, bar, judged.then_some(pass)),
            None => self.row(unknown.0, unknown.1),
        }
    }

    /// A note printed under the table.
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// Notes that fewer than `requested` `what` were reached, with the failures.
    pub fn reached_note(&mut self, what: &str, requested: u64, got: u64, errors: &BTreeMap<String, u64>) {
        if got < requested {
            self.note(format!(
                "REQUESTED {what} NOT REACHED: {got} of {requested} ({} short); failures: {errors:?}",
                requested - got
            ));
        }
    }

    /// Prints the table and its notes to stdout.
    pub fn print(&self) {
        let w: Vec<usize> =
            (0..4).map(|c| self.rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0).max(6)).collect();
        let line = format!("+{}+", w.iter().map(|n| "-".repeat(n + 2)).collect::<Vec<_>>().join("+"));
        let cells = |r: &[&str]| r.iter().zip(&w).map(|(h, n)| format!("{h:<n$}")).collect::<Vec<_>>().join(" | ");
        println!();
        println!("== {} ==", self.title);
        println!("{line}");
        println!("| {} |", cells(&["metric", "value", "bar", "result"]));
        println!("{line}");
        for r in &self.rows {
            println!("| {} |", cells(&r.each_ref().map(String::as_str)));
        }
        println!("{line}");
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

/// Prints the run's `BENCH_JSON {…}` line.
pub fn emit_json(scenario: &str, params: Value, setup: &Setup, results: Value, bars: Value) {
    let line = json!({
        "scenario": scenario,
        "machine": infra::machine(),
        "params": params,
        "setup": setup.describe(),
        "results": results,
        "bars": bars,
    });
    println!("BENCH_JSON {line}");
}
