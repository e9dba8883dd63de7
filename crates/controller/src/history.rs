//! The metrics history's collector. Once a second it samples each service's load as the router
//! sees it (requests in flight and queued, ready instances); at the end of every ten-second
//! interval of the wall clock it adds each instance's CPU time and memory (from the runtime) and
//! the router's traffic intervals (by revision, with latency sketches), and merges them into the
//! store. A router run's interval is taken once: how far each run was taken is stored with the
//! points, so intervals a router reports again to a restarted server are not counted twice.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use berth_core::metrics::{Point, Usage};
use berth_router::{unix_now, INTERVAL_SECS};

use crate::Shared;

/// How often old points are pruned.
const PRUNE_EVERY_SECS: u64 = 3600;

/// What is being gathered for the interval in progress.
struct Collector {
    /// The interval in progress: its start, and each service's point.
    open: u64,
    points: HashMap<String, Point>,
    /// How far each router run's traffic was taken.
    runs: HashMap<String, u64>,
    /// Each instance's CPU time at the last look, microseconds.
    cpu: HashMap<String, u64>,
    pruned: u64,
}

impl Collector {
    fn point(&mut self, service: &str) -> &mut Point {
        let (open, secs) = (self.open, INTERVAL_SECS as u32);
        self.points.entry(service.to_owned()).or_insert_with(|| Point::new(open, secs))
    }
}

/// Runs until the controller is gone.
pub(crate) async fn run(sh: Weak<Shared>) {
    let runs = match sh.upgrade() {
        Some(sh) => sh.store.metric_runs().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading how far the routers' traffic was taken failed; starting afresh");
            Vec::new()
        }),
        None => return,
    };
    let now = unix_now();
    let mut c = Collector {
        open: now - now % INTERVAL_SECS,
        points: HashMap::new(),
        runs: runs.into_iter().collect(),
        cpu: HashMap::new(),
        pruned: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut primed = false;
    loop {
        tick.tick().await;
        let Some(sh) = sh.upgrade() else { return };
        if !primed {
            // The instances' CPU time now, so the first interval closed measures theirs (the
            // instances came up before the controller was started, or outlived a server).
            primed = true;
            c.cpu = usage(&sh).await.into_iter().map(|(_, inst, used)| (inst.id, used.cpu_micros)).collect();
        }
        sample(&sh, &mut c);
        let now = unix_now();
        if now - now % INTERVAL_SECS > c.open {
            close(&sh, &mut c, now).await;
        }
    }
}

/// Every service's instances with what they have used so far.
async fn usage(sh: &Shared) -> Vec<(String, crate::InstanceView, berth_runtime::Usage)> {
    let views: Vec<(String, Vec<crate::InstanceView>)> = sh
        .handles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, h)| (name.clone(), h.view.lock().unwrap_or_else(|p| p.into_inner()).clone()))
        .collect();
    let mut all = Vec::new();
    for (service, instances) in views {
        for inst in instances {
            let Ok(id) = berth_runtime::InstanceId::new(&inst.id) else { continue };
            if let Ok(Some(used)) = sh.runtime.usage(&id).await {
                all.push((service.clone(), inst, used));
            }
        }
    }
    all
}

/// One look at every service's load.
fn sample(sh: &Shared, c: &mut Collector) {
    for load in sh.book.load() {
        let p = c.point(&load.service);
        let concurrency = (load.in_flight + load.queued) as u32;
        p.concurrency_sum += u64::from(concurrency);
        p.samples += 1;
        p.concurrency_max = p.concurrency_max.max(concurrency);
        p.instances_max = p.instances_max.max(load.ready as u32);
    }
}

/// Ends the interval in progress: adds the instances' usage and the router's traffic, and stores
/// the points.
async fn close(sh: &Shared, c: &mut Collector, now: u64) {
    let mut seen = HashMap::new();
    for (service, inst, used) in usage(sh).await {
        // The first look at an instance has nothing to measure its CPU time from.
        let cpu_micros = c.cpu.get(&inst.id).map_or(0, |before| used.cpu_micros.saturating_sub(*before));
        seen.insert(inst.id.clone(), used.cpu_micros);
        let usage = Usage { instance: inst.id, revision: inst.revision, cpu_micros, memory_bytes: used.memory_bytes };
        c.point(&service).add_usage(&usage);
    }
    c.cpu = seen;

    let mut points: Vec<(String, Point)> = c.points.drain().collect();
    let mut taken: HashMap<String, u64> = HashMap::new();
    let mut late: HashMap<(String, u64), Point> = HashMap::new();
    for interval in sh.book.take_traffic() {
        let run = &interval.run;
        let upto = c.runs.get(run).copied().unwrap_or(0).max(taken.get(run).copied().unwrap_or(0));
        if interval.start <= upto {
            continue;
        }
        taken.insert(run.clone(), interval.start);
        for (service, traffic) in interval.services {
            let p = late.entry((service, interval.start)).or_insert_with(|| Point::new(interval.start, interval.secs));
            traffic.iter().for_each(|t| p.add_traffic(t));
        }
    }
    points.extend(late.into_iter().map(|((service, _), p)| (service, p)));
    let runs: Vec<(String, u64)> = taken.into_iter().collect();
    remember(sh, &points, now);
    match sh.store.merge_metrics(points, runs.clone()).await {
        Ok(()) => c.runs.extend(runs),
        Err(e) => tracing::warn!(error = %e, "storing the metrics history failed; this interval is lost"),
    }
    c.open = now - now % INTERVAL_SECS;
    if now >= c.pruned + PRUNE_EVERY_SECS {
        c.pruned = now;
        if let Err(e) = sh.store.prune_metrics(now).await {
            tracing::warn!(error = %e, "pruning the metrics history failed");
        }
    }
}

/// How far back [`recent`] remembers.
const RECENT_SECS: u64 = 300;

/// Keeps the points of the last [`RECENT_SECS`] in memory, merged by slot as the store merges them.
fn remember(sh: &Shared, points: &[(String, Point)], now: u64) {
    let mut recent = sh.recent.lock().unwrap_or_else(|p| p.into_inner());
    for (service, p) in points {
        let kept = recent.entry(service.clone()).or_default();
        berth_store::history::merge_into(kept, berth_store::history::FINE, p);
    }
    let oldest = now.saturating_sub(RECENT_SECS + INTERVAL_SECS);
    recent.retain(|_, kept| {
        kept.retain(|p| p.ts >= oldest);
        !kept.is_empty()
    });
}

/// The last `secs` (at most [`RECENT_SECS`]) of a service as one slot, from memory.
pub(crate) fn recent(sh: &Shared, service: &str, secs: u64) -> Option<SlotView> {
    let secs = secs.clamp(INTERVAL_SECS, RECENT_SECS);
    let now = unix_now();
    let recent = sh.recent.lock().unwrap_or_else(|p| p.into_inner());
    let points: Vec<&Point> = recent.get(service)?.iter().filter(|p| p.ts + secs >= now).collect();
    let first = points.first()?;
    let mut all = Point::new(first.ts, secs as u32);
    points.iter().for_each(|p| all.merge(p));
    Some(slot_view(&all, &all.total(), secs))
}

/// The longest span one query covers: as long as minute points are kept.
const MAX_SPAN_SECS: u64 = berth_store::history::COARSE_KEPT_SECS;
/// The most slots one answer has.
const MAX_SLOTS: u64 = 2000;
/// Markers one answer carries at most.
const MAX_MARKERS: usize = 1000;

/// A service's metrics from `from` to `to` (seconds since the Unix epoch) in slots of `step`
/// seconds (rounded up to a multiple of the resolution used), with the events to mark on charts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricsView {
    pub service: String,
    pub from: u64,
    pub to: u64,
    pub step: u64,
    /// Seconds per stored point the answer was made from: 10 within the last day, else 60.
    pub resolution: u64,
    /// The service's slots; a slot with nothing stored is left out.
    pub points: Vec<SlotView>,
    pub revisions: Vec<RevisionSeries>,
    pub instances: Vec<InstanceSeries>,
    pub markers: Vec<Marker>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotView {
    /// The slot's start.
    pub t: u64,
    /// Responses by status class.
    pub requests: std::collections::BTreeMap<&'static str, u64>,
    pub requests_per_second: f64,
    /// Time to the response head, milliseconds; none without requests.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests in flight and queued: the average and the most of the once-a-second samples.
    pub concurrency_avg: Option<f64>,
    pub concurrency_max: u32,
    pub instances: u32,
    /// CPU of all instances together, thousandths of a CPU, and their memory, bytes.
    pub cpu_millicores: f64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RevisionSeries {
    /// 0: requests answered without reaching an instance.
    pub revision: u32,
    pub points: Vec<SlotView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceSeries {
    pub instance: String,
    pub revision: u32,
    pub points: Vec<UsageView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageView {
    pub t: u64,
    pub cpu_millicores: f64,
    pub memory_bytes: u64,
}

/// Something that happened to the service, to mark on its charts: a deployment, a rollback, an
/// instance replaced, a scaling decision with its reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Marker {
    pub t: i64,
    pub kind: String,
    pub message: String,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn slot_view(p: &Point, traffic: &berth_core::metrics::Traffic, step: u64) -> SlotView {
    let ms = |q: f64| traffic.latency.quantile(q).map(|us| us.round() / 1000.0);
    let secs = step.max(1) as f64;
    SlotView {
        t: p.ts,
        requests: CLASSES.iter().copied().zip(traffic.classes).collect(),
        requests_per_second: traffic.requests() as f64 / secs,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        concurrency_avg: p.concurrency_avg(),
        concurrency_max: p.concurrency_max,
        instances: p.instances_max,
        cpu_millicores: p.usage.iter().map(|u| u.cpu_micros as f64).sum::<f64>() / secs / 1000.0,
        memory_bytes: p.usage.iter().map(|u| u.memory_bytes).sum(),
    }
}

/// The points and markers of `service` for a chart: see [`MetricsView`].
pub(crate) async fn query(sh: &Shared, service: &str, from: u64, to: u64, step: Option<u64>) -> crate::Result<MetricsView> {
    use berth_store::history::{COARSE, FINE, FINE_KEPT_SECS};
    if to <= from {
        return Err(crate::ControllerError::BadRequest(format!("`from` ({from}) must be before `to` ({to})")));
    }
    let span = to - from;
    if span > MAX_SPAN_SECS {
        return Err(crate::ControllerError::BadRequest(format!(
            "a query covers at most 7 days ({MAX_SPAN_SECS} s); this one asks for {span} s: narrow `from`..`to`"
        )));
    }
    // Ten-second points while they are kept and asked for; minutes otherwise.
    let step = step.unwrap_or_else(|| span.div_ceil(360)).max(1);
    let fine = from + FINE_KEPT_SECS >= unix_now() && step < COARSE;
    let resolution = if fine { FINE } else { COARSE };
    let step = step.div_ceil(resolution) * resolution;
    if span / step > MAX_SLOTS {
        return Err(crate::ControllerError::BadRequest(format!(
            "{} slots of {step} s is more than {MAX_SLOTS}: ask for a larger `step`",
            span / step
        )));
    }
    let stored = sh.store.metrics(service, resolution, from, to).await?;
    let slots = berth_core::metrics::resample(&stored, step);
    let points = slots.iter().map(|p| slot_view(p, &p.total(), step)).collect();
    let mut revisions: std::collections::BTreeMap<u32, Vec<SlotView>> = std::collections::BTreeMap::new();
    let mut instances: std::collections::BTreeMap<String, InstanceSeries> = std::collections::BTreeMap::new();
    for p in &slots {
        for t in &p.traffic {
            revisions.entry(t.revision).or_default().push(slot_view(p, t, step));
        }
        for u in &p.usage {
            let series = instances.entry(u.instance.clone()).or_insert_with(|| InstanceSeries {
                instance: u.instance.clone(),
                revision: u.revision,
                points: Vec::new(),
            });
            let cpu_millicores = u.cpu_micros as f64 / step as f64 / 1000.0;
            series.points.push(UsageView { t: p.ts, cpu_millicores, memory_bytes: u.memory_bytes });
        }
    }
    let events = sh.store.service_events_between(service, from as i64, to as i64, MAX_MARKERS).await?;
    if stored.is_empty() && events.is_empty() && sh.store.get_service(service).await?.is_none() {
        return Err(crate::ControllerError::NotFound(service.to_owned()));
    }
    Ok(MetricsView {
        service: service.to_owned(),
        from,
        to,
        step,
        resolution,
        points,
        revisions: revisions.into_iter().map(|(revision, points)| RevisionSeries { revision, points }).collect(),
        instances: instances.into_values().collect(),
        markers: events.into_iter().map(|e| Marker { t: e.at, kind: e.kind, message: e.message }).collect(),
    })
}
