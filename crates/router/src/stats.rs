//! Per-service statistics kept with atomics on the request path, and their rendering in the
//! Prometheus text format (`berth_router_*` on the API's `/metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use berth_core::metrics::{class_of, Classes, Traffic as MetricTraffic};
use berth_core::sketch::{self, Sketch};

use crate::table::RoutingTable;

/// Upper bounds of the latency buckets, seconds.
const LATENCY_BOUNDS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the cold-start buckets, seconds.
const COLD_START_BOUNDS: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How many copies of the request-path counters there are. Each thread writes the copy its
/// index picks, so router workers on different cores do not keep taking one cache line from
/// each other; reading sums the copies.
const SHARDS: usize = 4;

/// The copy of the counters this thread writes.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One copy of `N` counters, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Cells<const N: usize>([AtomicU64; N]);

/// `N` counters, kept per [`shard`].
#[derive(Debug)]
struct Counters<const N: usize>([Cells<N>; SHARDS]);

impl<const N: usize> Counters<N> {
    fn new() -> Self {
        Counters(std::array::from_fn(|_| Cells(std::array::from_fn(|_| AtomicU64::new(0)))))
    }

    fn add(&self, i: usize, n: u64) {
        self.0[shard()].0[i].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        self.0.iter().map(|c| c.0[i].load(Ordering::Relaxed)).sum()
    }
}

/// A histogram with fixed buckets (non-cumulative counts; rendered cumulative).
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    buckets: Counters<N>,
    /// Observations, and their sum in microseconds.
    totals: Counters<2>,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Histogram { bounds, buckets: Counters::new(), totals: Counters::new() }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets.add(i, 1);
        }
        self.totals.add(0, 1);
        self.totals.add(1, d.as_micros() as u64);
    }

    fn count(&self) -> u64 {
        self.totals.get(0)
    }

    fn render(&self, out: &mut String, name: &str, service: &str) {
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets.get(i);
            let _ = writeln!(out, "{name}_bucket{{service=\"{service}\",le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{service=\"{service}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_count{{service=\"{service}\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{service=\"{service}\"}} {}", self.totals.get(1) as f64 / 1e6);
    }
}

/// What the router counts for one service.
#[derive(Debug)]
pub struct ServiceStats {
    /// Responses by status class: 1xx … 5xx.
    responses: Counters<5>,
    latency: Histogram<14>,
    cold_starts: Histogram<10>,
}

impl Default for ServiceStats {
    fn default() -> Self {
        ServiceStats {
            responses: Counters::new(),
            latency: Histogram::new(&LATENCY_BOUNDS),
            cold_starts: Histogram::new(&COLD_START_BOUNDS),
        }
    }
}

impl ServiceStats {
    /// Records a response head sent after `elapsed`.
    pub fn response(&self, status: u16, elapsed: Duration) {
        self.responses.add(class_of(status), 1);
        self.latency.observe(elapsed);
    }

    pub fn responses(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.responses.get(usize::from(class) - 1),
            _ => 0,
        }
    }

    pub(crate) fn cold_start(&self, took: Duration) {
        self.cold_starts.observe(took);
    }

    pub fn cold_start_count(&self) -> u64 {
        self.cold_starts.count()
    }
}

/// One revision's traffic since the router started, for the metrics history: responses by
/// status class and their latency in the buckets of a [`Sketch`], kept per [`shard`] as the other
/// counters are.
#[derive(Debug)]
pub struct Traffic {
    classes: Counters<5>,
    latency: Box<Counters<{ sketch::BUCKETS }>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic { classes: Counters::new(), latency: Box::new(Counters::new()) }
    }
}

impl Traffic {
    /// Records a response head sent after `elapsed`.
    pub fn response(&self, status: u16, elapsed: Duration) {
        self.classes.add(class_of(status), 1);
        self.latency.add(sketch::bucket(elapsed.as_micros() as u64), 1);
    }

    /// The counts so far.
    pub(crate) fn totals(&self) -> Totals {
        Totals {
            classes: std::array::from_fn(|i| self.classes.get(i)),
            latency: (0..sketch::BUCKETS).map(|i| self.latency.get(i)).collect(),
        }
    }
}

/// What a [`Traffic`] had counted at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    classes: Classes,
    latency: Vec<u64>,
}

impl Totals {
    /// What was counted since `earlier`, as a revision's traffic; `None` if nothing was.
    pub(crate) fn since(&self, earlier: Option<&Totals>, revision: u32) -> Option<MetricTraffic> {
        let zero = Totals::default();
        let earlier = earlier.unwrap_or(&zero);
        let classes: Classes = std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i]));
        if classes.iter().all(|c| *c == 0) {
            return None;
        }
        let latency: Vec<u64> =
            self.latency.iter().enumerate().map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0))).collect();
        Some(MetricTraffic { revision, classes, latency: Sketch::from_dense(&latency) })
    }
}

/// Quotes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every service's metrics in the Prometheus/OpenMetrics text format (no `# EOF`).
pub fn render(table: &RoutingTable, out: &mut String) {
    let services = table.services();
    let families: [(&str, &str, &str); 7] = [
        ("berth_router_requests", "counter", "Responses sent by the router, by service and status class"),
        ("berth_router_request_duration_seconds", "histogram", "Time from a request's arrival to its response head"),
        ("berth_router_instances", "gauge", "Ready instances the router sends requests to"),
        ("berth_router_concurrency", "gauge", "Requests being worked on by the service's instances"),
        ("berth_router_queue_length", "gauge", "Requests waiting for a free instance or for one to start"),
        ("berth_router_cold_starts", "counter", "Times requests had to wait for a first instance to start"),
        ("berth_router_cold_start_duration_seconds", "histogram", "From the first held request until an instance was ready"),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}.");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in &services {
            let svc = label(&s.name);
            match name {
                "berth_router_requests" => {
                    for class in 1..=5u16 {
                        let _ = writeln!(out, "{name}_total{{service=\"{svc}\",code=\"{class}xx\"}} {}", s.stats.responses(class));
                    }
                }
                "berth_router_request_duration_seconds" => s.stats.latency.render(out, name, &svc),
                "berth_router_instances" => {
                    let _ = writeln!(out, "{name}{{service=\"{svc}\"}} {}", s.ready());
                }
                "berth_router_concurrency" => {
                    let _ = writeln!(out, "{name}{{service=\"{svc}\"}} {}", s.in_flight());
                }
                "berth_router_queue_length" => {
                    let _ = writeln!(out, "{name}{{service=\"{svc}\"}} {}", s.queued());
                }
                "berth_router_cold_starts" => {
                    let _ = writeln!(out, "{name}_total{{service=\"{svc}\"}} {}", s.stats.cold_start_count());
                }
                _ => s.stats.cold_starts.render(out, name, &svc),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RouteSpec;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let t = RoutingTable::new();
        t.replace(&[RouteSpec::new("a.localhost", "a\"b", vec![([127, 0, 0, 1], 1).into()])]);
        let s = t.services().remove(0);
        s.stats.response(200, Duration::from_micros(300));
        s.stats.response(204, Duration::from_millis(3));
        s.stats.response(503, Duration::from_secs(60));
        let mut out = String::new();
        render(&t, &mut out);
        for line in [
            "# TYPE berth_router_requests counter",
            r#"berth_router_requests_total{service="a\"b",code="2xx"} 2"#,
            r#"berth_router_requests_total{service="a\"b",code="5xx"} 1"#,
            r#"berth_router_request_duration_seconds_bucket{service="a\"b",le="0.0005"} 1"#,
            r#"berth_router_request_duration_seconds_bucket{service="a\"b",le="0.005"} 2"#,
            r#"berth_router_request_duration_seconds_bucket{service="a\"b",le="10"} 2"#,
            r#"berth_router_request_duration_seconds_bucket{service="a\"b",le="+Inf"} 3"#,
            r#"berth_router_instances{service="a\"b"} 1"#,
            r#"berth_router_cold_starts_total{service="a\"b"} 0"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
        }
    }
}
