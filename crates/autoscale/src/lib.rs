//! Concurrency-based autoscaling after Knative's KPA (Knative Pod Autoscaler).
//!
//! Each service's observed concurrency — requests being worked on plus requests waiting — is
//! sampled ten times a second and averaged per second. From those per-second values:
//!
//! - the **stable** value is the average over the stable window (60 s), the **panic** value the
//!   average over the panic window (6 s);
//! - the target per instance is `max_concurrency × target_utilization` (70 % by default);
//! - desired instances = ⌈stable value / target⌉;
//! - when ⌈panic value / target⌉ reaches 200 % of the ready instances, the autoscaler **panics**:
//!   it follows the panic value and never scales down, until the panic value has stayed below
//!   the threshold for a whole stable window;
//! - scale-down is delayed: the decision is the highest recommendation of the last
//!   `scale_down_delay`, and never less than half the ready instances at once;
//! - the result is clamped to `[min_size, max_size]`; with `min_size = 0` the service scales to
//!   zero once it has seen no request at all for `idle_grace` (and the stable window is empty of
//!   load), then the scale-down delay — with the defaults, 90 s after the last request, as in
//!   Knative. A request that arrives then is held by the router, which asks for an instance at
//!   once ([`Autoscaler::poke`]).
//!
//! [`Kpa`] is the pure decision; [`Autoscaler`] samples a [`LoadSource`] and hands each change to
//! a [`Scaler`] — whatever starts and stops instances.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How one service scales.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSettings {
    /// Requests one instance works on at once (App Runner's max_concurrency).
    pub max_concurrency: u32,
    /// The share of `max_concurrency` to aim for, leaving headroom for bursts.
    pub target_utilization: f64,
    pub min_size: u32,
    pub max_size: u32,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// Panic when the panic-window recommendation reaches this multiple of the ready instances.
    pub panic_threshold: f64,
    pub scale_down_delay: Duration,
    /// With `min_size = 0`: how long without any request before scaling to zero.
    pub idle_grace: Duration,
}

impl Default for ScalingSettings {
    fn default() -> Self {
        ScalingSettings {
            max_concurrency: 100,
            target_utilization: 0.7,
            min_size: 1,
            max_size: 25,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            scale_down_delay: Duration::from_secs(30),
            idle_grace: Duration::from_secs(60),
        }
    }
}

/// One decision and what it was based on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub panicking: bool,
    pub stable_concurrency: f64,
    pub panic_concurrency: f64,
    /// The concurrency aimed for per instance.
    pub target: f64,
}

impl Decision {
    /// Why a service goes from `from` instances to this decision, in a line a person reads next to
    /// a chart: `2 → 5: concurrency 180 > target 70 × 2 instances`.
    pub fn explain(&self, from: u32, settings: &ScalingSettings) -> String {
        let to = self.desired;
        let (concurrency, window) = match self.panicking {
            true => (self.panic_concurrency.max(self.stable_concurrency), settings.panic_window),
            false => (self.stable_concurrency, settings.stable_window),
        };
        let load = format!("concurrency {concurrency:.0} over {} s", window.as_secs());
        let capacity = self.target * f64::from(from);
        let why = if to == 0 {
            format!("no request for {} s (min size 0)", settings.idle_grace.as_secs())
        } else if to == settings.max_size.max(settings.min_size) && to > from {
            format!("{load} > target {:.0} × {from}; capped at max size {to}", self.target)
        } else if to == settings.min_size.max(1) && to < from {
            format!("{load}; down to min size {to}")
        } else if to > from {
            format!("{load} > target {:.0} × {from} = {capacity:.0}", self.target)
        } else {
            format!("{load} < target {:.0} × {from} = {capacity:.0}", self.target)
        };
        let panic = if self.panicking { " (panic mode: load rose faster than the stable window sees)" } else { "" };
        format!("{from} → {to}: {why}{panic}")
    }
}

/// The KPA state of one service. Time is the caller's: seconds since any fixed start.
#[derive(Debug, Clone)]
pub struct Kpa {
    settings: ScalingSettings,
    /// Per-second concurrency, oldest first: (second, value).
    samples: VecDeque<(u64, f64)>,
    /// The last second with any load.
    last_busy: Option<u64>,
    /// When the panic threshold was last crossed, while panicking.
    panic_since: Option<u64>,
    /// Highest decision made in this panic.
    panic_peak: u32,
    /// Recent recommendations, for the scale-down delay.
    recent: VecDeque<(u64, u32)>,
    /// The first second seen, so a young service is not scaled to zero before it had a chance.
    born: Option<u64>,
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl Kpa {
    pub fn new(settings: ScalingSettings) -> Kpa {
        Kpa { settings, samples: VecDeque::new(), last_busy: None, panic_since: None, panic_peak: 0, recent: VecDeque::new(), born: None }
    }

    pub fn settings(&self) -> &ScalingSettings {
        &self.settings
    }

    /// Changes the settings, keeping the observed history.
    pub fn reconfigure(&mut self, settings: ScalingSettings) {
        self.settings = settings;
    }

    /// Records the average concurrency of second `now`.
    pub fn record(&mut self, now: u64, concurrency: f64) {
        self.born.get_or_insert(now);
        if concurrency > 0.0 {
            self.last_busy = Some(now);
        }
        match self.samples.back_mut() {
            Some((t, v)) if *t == now => *v = v.max(concurrency),
            _ => self.samples.push_back((now, concurrency)),
        }
        let keep = secs(self.settings.stable_window);
        while self.samples.front().is_some_and(|(t, _)| now.saturating_sub(*t) >= keep) {
            self.samples.pop_front();
        }
    }

    /// Average over the last `window` seconds up to `now`; seconds without a sample count as 0,
    /// but a window reaching back before the first sample only averages what was seen.
    fn average(&self, now: u64, window: u64) -> f64 {
        let from = now.saturating_sub(window - 1);
        let start = from.max(self.born.unwrap_or(now));
        let span = (now.saturating_sub(start) + 1) as f64;
        let sum: f64 = self.samples.iter().filter(|(t, _)| *t >= from && *t <= now).map(|(_, v)| v).sum();
        sum / span
    }

    /// Decides how many instances the service should have at second `now`, given `ready`.
    pub fn decide(&mut self, now: u64, ready: u32) -> Decision {
        let s = &self.settings;
        let target = (s.max_concurrency.max(1) as f64 * s.target_utilization.clamp(0.01, 1.0)).max(0.01);
        let stable = self.average(now, secs(s.stable_window));
        let panic = self.average(now, secs(s.panic_window));
        let want_stable = (stable / target).ceil() as u32;
        let want_panic = (panic / target).ceil() as u32;
        let over = want_panic as f64 / ready.max(1) as f64 >= s.panic_threshold;
        if over {
            if self.panic_since.is_none() {
                tracing::info!(ready, want_panic, "autoscaler panics: load rose faster than the stable window sees");
            }
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|t| now.saturating_sub(t) >= secs(s.stable_window)) {
            self.panic_since = None;
            self.panic_peak = 0;
        }
        let mut desired = match self.panic_since {
            Some(_) => {
                let d = want_panic.max(want_stable).max(self.panic_peak).max(ready);
                self.panic_peak = d;
                d
            }
            None => want_stable,
        };
        // Scale-down delay: the highest recommendation of the recent past.
        self.recent.push_back((now, desired));
        let delay = s.scale_down_delay.as_secs();
        while self.recent.front().is_some_and(|(t, _)| now.saturating_sub(*t) > delay) {
            self.recent.pop_front();
        }
        desired = self.recent.iter().map(|(_, d)| *d).max().unwrap_or(desired);
        // Never more than halve at once.
        if ready > 1 {
            desired = desired.max(ready.div_ceil(2));
        }
        // To zero only after a whole idle grace without any load; otherwise at least one.
        let idle_for = now.saturating_sub(self.last_busy.or(self.born).unwrap_or(now));
        let asleep = s.min_size == 0 && stable == 0.0 && panic == 0.0 && idle_for >= s.idle_grace.as_secs();
        let floor = if asleep { 0 } else { s.min_size.max(1) };
        let desired = desired.max(floor).min(s.max_size.max(s.min_size));
        Decision { desired, panicking: self.panic_since.is_some(), stable_concurrency: stable, panic_concurrency: panic, target }
    }
}

/// Where the autoscaler reads load: per service, requests being worked on plus waiting, and the
/// ready instances.
pub trait LoadSource: Send + Sync {
    fn load(&self) -> Vec<Load>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub service: String,
    pub concurrency: usize,
    pub ready: u32,
}

/// What the autoscaler's decisions go to: whatever starts and stops instances.
pub trait Scaler: Send + Sync {
    /// `service` should now have `desired` instances, for the reason `why`
    /// ([`Decision::explain`]).
    fn scale(&self, service: &str, desired: u32, why: &str);
}

#[derive(Debug)]
struct Tracked {
    kpa: Kpa,
    /// Sum and count of this second's samples.
    sum: f64,
    count: u32,
    last: Option<u32>,
}

/// Samples load ten times a second, decides once a second per configured service, and tells the
/// scaler when a decision changes.
pub struct Autoscaler {
    services: Mutex<HashMap<String, Tracked>>,
    scaler: Arc<dyn Scaler>,
    started: tokio::time::Instant,
}

impl Autoscaler {
    pub fn new(scaler: Arc<dyn Scaler>) -> Arc<Autoscaler> {
        Arc::new(Autoscaler { services: Mutex::new(HashMap::new()), scaler, started: tokio::time::Instant::now() })
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Starts (or re-configures) scaling `service`. `current` is the instance count it has now,
    /// so the first decision is not reported as a change when it agrees.
    pub fn configure(&self, service: &str, settings: ScalingSettings, current: u32) {
        let mut all = self.services.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(service) {
            Some(t) => t.kpa.reconfigure(settings),
            None => {
                all.insert(service.to_owned(), Tracked { kpa: Kpa::new(settings), sum: 0.0, count: 0, last: Some(current) });
            }
        }
    }

    /// Stops scaling `service`.
    pub fn remove(&self, service: &str) {
        self.services.lock().unwrap_or_else(|p| p.into_inner()).remove(service);
    }

    /// The last decision for `service`.
    pub fn desired(&self, service: &str) -> Option<u32> {
        self.services.lock().unwrap_or_else(|p| p.into_inner()).get(service).and_then(|t| t.last)
    }

    /// A request is waiting for `service`, which has no ready instance: decide now, not at the
    /// next tick.
    pub fn poke(&self, service: &str) {
        let now = self.now();
        let change = {
            let mut all = self.services.lock().unwrap_or_else(|p| p.into_inner());
            let Some(t) = all.get_mut(service) else { return };
            t.kpa.record(now, 1.0);
            let d = t.kpa.decide(now, 0).desired.max(1);
            let from = t.last.unwrap_or(0);
            let changed = t.last != Some(d);
            t.last = Some(d);
            changed.then(|| (d, format!("{from} → {d}: a request waits and no instance is ready (scale from zero)")))
        };
        if let Some((d, why)) = change {
            self.scaler.scale(service, d, &why);
        }
    }

    /// One sample of every service's load.
    fn sample(&self, load: &[Load]) {
        let mut all = self.services.lock().unwrap_or_else(|p| p.into_inner());
        for l in load {
            if let Some(t) = all.get_mut(&l.service) {
                t.sum += l.concurrency as f64;
                t.count += 1;
            }
        }
    }

    /// Closes the second: records each service's average and decides.
    fn tick(&self, load: &[Load]) {
        let now = self.now();
        let ready: HashMap<&str, u32> = load.iter().map(|l| (l.service.as_str(), l.ready)).collect();
        let mut changes = Vec::new();
        {
            let mut all = self.services.lock().unwrap_or_else(|p| p.into_inner());
            for (name, t) in all.iter_mut() {
                let avg = if t.count == 0 { 0.0 } else { t.sum / t.count as f64 };
                t.sum = 0.0;
                t.count = 0;
                t.kpa.record(now, avg);
                let ready = ready.get(name.as_str()).copied().unwrap_or(0);
                let d = t.kpa.decide(now, ready);
                if t.last != Some(d.desired) {
                    let why = d.explain(t.last.unwrap_or(ready), t.kpa.settings());
                    tracing::info!(service = %name, desired = d.desired, reason = %why, "autoscaling decision");
                    t.last = Some(d.desired);
                    changes.push((name.clone(), d.desired, why));
                }
            }
        }
        for (name, d, why) in changes {
            self.scaler.scale(&name, d, &why);
        }
    }

    /// Runs the sampling loop until the task is dropped.
    pub async fn run(self: Arc<Self>, source: Arc<dyn LoadSource>) {
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u32;
        loop {
            interval.tick().await;
            let load = source.load();
            self.sample(&load);
            n += 1;
            if n.is_multiple_of(10) {
                self.tick(&load);
            }
        }
    }
}

#[cfg(test)]
mod tests;
