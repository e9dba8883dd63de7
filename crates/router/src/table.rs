//! The routing table: host → service → ready upstreams, with each service's settings. Readers
//! load an `Arc` snapshot without locking; a writer builds a new table and swaps it in.
//! Upstreams and per-service state that survive a replacement keep their identity, so in-flight
//! counts, queues and statistics stay true across swaps; upstreams that leave the table are
//! handed back to the writer, which can wait for them to drain.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::stats::{ServiceStats, Totals, Traffic};

/// How the router treats one service's requests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteSettings {
    /// The whole exchange — waiting for an instance, the response head and the body — must end
    /// within this; 504 when the head is late, the stream is cut when the body is.
    pub request_timeout: Duration,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: u64,
    /// Requests one instance works on at once; more wait in the service's queue. 0: no cap.
    pub max_concurrency: usize,
    /// Requests that may wait for a free instance; beyond it, 503 at once.
    pub queue_depth: usize,
    /// How long a request may wait in the queue before 503 with `Retry-After`.
    pub queue_timeout: Duration,
    /// Speak HTTP/2 without TLS (h2c) to the instances, as gRPC servers need. gRPC requests use
    /// it even when this is off.
    pub h2c: bool,
    /// With no ready instance, hold requests and ask the activator for one (scale from zero).
    pub scale_from_zero: bool,
    /// How long a held request waits for an instance before 503.
    pub activation_timeout: Duration,
}

impl Default for RouteSettings {
    fn default() -> Self {
        RouteSettings {
            request_timeout: Duration::from_secs(120),
            max_body_bytes: 64 << 20,
            max_concurrency: 100,
            queue_depth: 1000,
            queue_timeout: Duration::from_secs(10),
            h2c: false,
            scale_from_zero: false,
            activation_timeout: Duration::from_secs(60),
        }
    }
}

/// What a service's routes share, across table swaps: its load and its statistics.
#[derive(Debug)]
pub struct ServiceState {
    pub name: String,
    /// Requests being worked on by its instances, draining ones included.
    in_flight: AtomicUsize,
    /// Requests waiting for a free instance or for one to start.
    queued: AtomicUsize,
    /// Ready instances in the current table.
    ready: AtomicUsize,
    /// Woken when capacity frees up or the table changes.
    pub(crate) changed: Notify,
    /// When the first request started waiting for an instance to start, if one is awaited.
    activating_since: Mutex<Option<Instant>>,
    pub stats: ServiceStats,
    /// Its traffic by revision, for the metrics history; revision 0 counts requests answered
    /// without reaching an instance.
    traffic: Mutex<BTreeMap<u32, Arc<Traffic>>>,
    /// Revision 0's, at hand for every request that reaches no instance.
    pub(crate) unrouted: Arc<Traffic>,
}

impl ServiceState {
    fn new(name: &str) -> ServiceState {
        ServiceState {
            name: name.to_owned(),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            changed: Notify::new(),
            activating_since: Mutex::new(None),
            stats: ServiceStats::default(),
            traffic: Mutex::new(BTreeMap::new()),
            unrouted: Arc::default(),
        }
    }

    /// The traffic counters of `revision` (0: requests that reached no instance).
    fn traffic_of(&self, revision: u32) -> Arc<Traffic> {
        if revision == 0 {
            return self.unrouted.clone();
        }
        self.traffic.lock().unwrap_or_else(|p| p.into_inner()).entry(revision).or_default().clone()
    }

    /// Every revision's counters and their counts so far, revision 0's included.
    fn traffic_totals(&self) -> Vec<(u32, Arc<Traffic>, Totals)> {
        let by_revision = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::once((0, &self.unrouted))
            .chain(by_revision.iter().map(|(r, t)| (*r, t)))
            .map(|(r, t)| (r, t.clone(), t.totals()))
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Counts a waiting request until the guard is dropped, unless `depth` are already waiting.
    pub(crate) fn enqueue(self: &Arc<Self>, depth: usize) -> Option<Queued> {
        let prior = self.queued.fetch_add(1, Ordering::Relaxed);
        let guard = Queued(self.clone());
        (prior < depth).then_some(guard)
    }

    /// Marks the start of a cold start unless one is already under way; true when this call
    /// started it.
    pub(crate) fn begin_activation(&self) -> bool {
        let mut since = self.activating_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            true
        } else {
            false
        }
    }

    /// Ends a cold start when instances have appeared, recording how long it took.
    fn end_activation(&self) {
        let started = self.activating_since.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = started {
            self.stats.cold_start(t.elapsed());
        }
    }
}

/// A waiting request; the count drops with it.
#[derive(Debug)]
pub(crate) struct Queued(Arc<ServiceState>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One instance the router may send requests to.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// What its responses count to: its revision's traffic.
    pub(crate) traffic: Arc<Traffic>,
    /// Which instance and revision it is, as the access log names them (empty, 0: unknown).
    pub(crate) instance: Arc<str>,
    pub(crate) revision: u32,
    /// `addr` as a URI authority, made once.
    pub(crate) authority: hyper::http::uri::Authority,
    service: Arc<ServiceState>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Set once it has left the table.
    retired: AtomicBool,
}

impl Upstream {
    fn new(addr: SocketAddr, service: Arc<ServiceState>, revision: u32, instance: &str) -> Upstream {
        Upstream {
            addr,
            traffic: service.traffic_of(revision),
            instance: instance.into(),
            revision,
            authority: addr.to_string().parse().unwrap_or_else(|_| hyper::http::uri::Authority::from_static("invalid")),
            service,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            retired: AtomicBool::new(false),
        }
    }

    /// The service it serves.
    pub fn service_name(&self) -> &str {
        &self.service.name
    }

    /// Requests sent to it and not yet answered in full.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether it has left the table: a request that picked it from an older snapshot must pick
    /// again.
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Counts a request until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        // SeqCst pairs with `retire` + `drained`: either the request sees the upstream retired,
        // or the drain sees the request.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.service.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts a request when fewer than `cap` are in flight, in one atomic step: two requests
    /// that see the last free slot at once cannot both take it.
    fn try_begin(self: &Arc<Self>, cap: usize) -> Option<InFlight> {
        self.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < cap).then_some(n + 1)).ok()?;
        self.service.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(self.clone()))
    }

    /// Resolves once no request is in flight on this upstream. Once it has left the table nothing
    /// new arrives, so after this it is safe to stop the instance.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// An outstanding request on an upstream.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let up = &self.0;
        if up.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            up.idle.notify_waiters();
        }
        up.service.in_flight.fetch_sub(1, Ordering::Relaxed);
        if up.service.queued() > 0 {
            up.service.changed.notify_one();
        }
    }
}

/// Why no upstream could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPick {
    /// The service has no ready instance.
    Empty,
    /// Every ready instance is at its concurrency cap.
    Full,
}

/// A host's place in the table.
#[derive(Debug)]
pub struct Route {
    pub service: Arc<ServiceState>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub settings: RouteSettings,
    /// Set while the service is paused: the message requests get with their 503.
    pub paused: Option<String>,
    /// Served to instances on the internal listener only, not on the public ones.
    pub internal: bool,
    /// The services that may call it on the internal listener; `None`: every service.
    pub allow_from: Option<Vec<String>>,
}

/// Why a host is not served to a caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing is served at that host on this listener.
    NotFound,
    /// The caller may not call it: the message says why and what to do.
    Forbidden(String),
}

/// The name services are compared by: a DNS label (lowercase, `_` as `-`).
fn label(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

impl Route {
    /// Takes a slot on an upstream below the concurrency cap (see `pick`), skipping `exclude`.
    /// The slot is counted before anyone else can see it free, so the cap holds under any
    /// number of concurrent requests.
    pub fn admit(&self, exclude: Option<SocketAddr>) -> Result<InFlight, NoPick> {
        loop {
            // A lost race for the last slot of the picked upstream picks again: either another
            // one is free or `pick` now says `Full`.
            if let Some(slot) = self.pick(exclude)?.try_begin(self.cap()) {
                return Ok(slot);
            }
        }
    }

    fn cap(&self) -> usize {
        match self.settings.max_concurrency {
            0 => usize::MAX,
            n => n,
        }
    }

    /// Least outstanding requests between two upstreams picked at random (power of two
    /// choices), among those below the concurrency cap, skipping `exclude` (an upstream that
    /// just failed).
    fn pick(&self, exclude: Option<SocketAddr>) -> Result<Arc<Upstream>, NoPick> {
        let cap = self.cap();
        let n = self.upstreams.len();
        let usable = |u: &Arc<Upstream>| Some(u.addr) != exclude;
        let open = |u: &Arc<Upstream>| usable(u) && u.in_flight() < cap;
        match n {
            0 => return Err(NoPick::Empty),
            1 => {
                let u = &self.upstreams[0];
                return if open(u) {
                    Ok(u.clone())
                } else if usable(u) {
                    Err(NoPick::Full)
                } else {
                    Err(NoPick::Empty)
                };
            }
            _ => {}
        }
        let a = rand::random::<usize>() % n;
        let mut b = rand::random::<usize>() % (n - 1);
        if b >= a {
            b += 1;
        }
        let (x, y) = (&self.upstreams[a], &self.upstreams[b]);
        let best = match (open(x), open(y)) {
            (true, true) => Some(if y.in_flight() < x.in_flight() { y } else { x }),
            (true, false) => Some(x),
            (false, true) => Some(y),
            (false, false) => self.upstreams.iter().filter(|u| open(u)).min_by_key(|u| u.in_flight()),
        };
        match best {
            Some(u) => Ok(u.clone()),
            None if self.upstreams.iter().any(usable) => Err(NoPick::Full),
            None => Err(NoPick::Empty),
        }
    }
}

/// What a writer declares: a host, the service behind it, its ready instances and settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteSpec {
    pub host: String,
    pub service: String,
    pub upstreams: Vec<SocketAddr>,
    /// The revision of each upstream, in the same order (missing: 0), for the metrics history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<u32>,
    /// The instance id of each upstream, in the same order, for the access log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    pub settings: RouteSettings,
    pub paused: Option<String>,
    /// Served to instances on the internal listener only (`<name>.internal`).
    #[serde(default)]
    pub internal: bool,
    /// The services that may call it on the internal listener; `None`: every service.
    #[serde(default)]
    pub allow_from: Option<Vec<String>>,
    /// The addresses the service's own instances call from (starting ones too), which tell
    /// the internal listener (and berth's DNS) who calls.
    #[serde(default)]
    pub sources: Vec<IpAddr>,
    /// Names the service's instances resolve beyond `<service>.internal`: the machines and host
    /// endpoints of its networks (`<name>.<network>.internal`).
    #[serde(default)]
    pub names: std::collections::BTreeMap<String, IpAddr>,
    /// Whether other names are resolved for its instances by the host's resolvers (public
    /// egress); refused otherwise.
    #[serde(default)]
    pub resolve_public: bool,
}

/// Who calls from an instance's address: its service, and what that service's instances resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub service: String,
    pub names: std::collections::BTreeMap<String, IpAddr>,
    pub resolve_public: bool,
}

impl RouteSpec {
    /// A public route to `upstreams` with default settings.
    pub fn new(host: impl Into<String>, service: impl Into<String>, upstreams: Vec<SocketAddr>) -> RouteSpec {
        RouteSpec {
            host: host.into(),
            service: service.into(),
            upstreams,
            revisions: Vec::new(),
            instances: Vec::new(),
            settings: RouteSettings::default(),
            paused: None,
            internal: false,
            allow_from: None,
            sources: Vec::new(),
            names: Default::default(),
            resolve_public: false,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    hosts: HashMap<String, Arc<Route>>,
    /// Which service's instance calls from an address.
    callers: HashMap<IpAddr, Arc<Caller>>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    current: ArcSwap<Table>,
    /// Every service in the table, by name; only writers and metric readers take the lock.
    services: Mutex<HashMap<String, Arc<ServiceState>>>,
    /// Serializes writers.
    write: Mutex<()>,
    history: Mutex<History>,
}

/// How long an interval of the metrics history is, seconds.
pub const INTERVAL_SECS: u64 = 10;
/// Closed intervals kept for a server to collect: an hour's.
const KEPT_INTERVALS: usize = 360;

/// The traffic of every service over one interval of the wall clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrafficInterval {
    /// The router run that counted it ([`run_name`]): a run reports each interval once, so a
    /// reader that stores how far it took each run counts none twice.
    pub run: String,
    /// Its place among the intervals a router holds (its own and a predecessor's), for readers
    /// that take them as they come.
    pub seq: u64,
    /// Its start, seconds since the Unix epoch, a multiple of [`INTERVAL_SECS`].
    pub start: u64,
    pub secs: u32,
    /// Each service's traffic by revision; services with none are left out.
    pub services: Vec<(String, Vec<berth_core::metrics::Traffic>)>,
}

/// Seconds since the Unix epoch, as intervals are timed.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A name for this run of a router: its process and when it started, which no other run shares.
pub fn run_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// The intervals closed so far, and the counts they were taken from.
#[derive(Debug, Default)]
struct History {
    /// This table's run name, made at the first close.
    run: String,
    /// The start of the interval in progress; 0 until the first close.
    open: u64,
    /// By service and revision: the counters (counters made anew for a service that left the
    /// table and came back count from zero) and what they had counted.
    last: HashMap<(String, u32), (Arc<Traffic>, Totals)>,
    closed: VecDeque<TrafficInterval>,
    next_seq: u64,
    /// For a reader in this process ([`RoutingTable::take_intervals`]): the last taken.
    taken: u64,
}

/// The intervals of `closed` after the one numbered `seq`.
fn after(closed: &VecDeque<TrafficInterval>, seq: u64) -> Vec<TrafficInterval> {
    closed.iter().filter(|i| i.seq > seq).cloned().collect()
}

impl History {
    fn keep(&mut self, mut interval: TrafficInterval) {
        self.next_seq += 1;
        interval.seq = self.next_seq;
        if self.closed.len() == KEPT_INTERVALS {
            self.closed.pop_front();
        }
        self.closed.push_back(interval);
    }
}

/// Lowercases a Host header value and drops its port.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim().trim_end_matches('.');
    let h = if h.starts_with('[') {
        h.split(']').next().map(|s| format!("{s}]")).unwrap_or_default()
    } else {
        h.split(':').next().unwrap_or("").to_owned()
    };
    h.to_ascii_lowercase()
}

impl RoutingTable {
    pub fn new() -> RoutingTable {
        RoutingTable::default()
    }

    /// Closes the interval in progress if `now` (seconds since the Unix epoch) is past its end —
    /// or at once with `early` (a router handing over mid-interval) — so that what each revision
    /// counted since the last close becomes a [`TrafficInterval`].
    pub fn close_interval(&self, now: u64, early: bool) {
        let boundary = now - now % INTERVAL_SECS;
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.open == 0 {
            // Counting began when the table was made, in this interval.
            h.open = boundary;
            h.run = run_name();
        }
        let end = if early { now } else { boundary };
        if end <= h.open {
            return;
        }
        let mut services = Vec::new();
        let mut last = HashMap::new();
        for s in self.services() {
            let mut traffic = Vec::new();
            for (revision, counters, totals) in s.traffic_totals() {
                let key = (s.name.clone(), revision);
                let earlier = h.last.get(&key).filter(|(was, _)| Arc::ptr_eq(was, &counters)).map(|(_, t)| t);
                traffic.extend(totals.since(earlier, revision));
                last.insert(key, (counters, totals));
            }
            if !traffic.is_empty() {
                services.push((s.name.clone(), traffic));
            }
        }
        let secs = u32::try_from(end - h.open).unwrap_or(u32::MAX);
        let interval = TrafficInterval { run: h.run.clone(), seq: 0, start: h.open, secs, services };
        h.last = last;
        h.open = end;
        h.keep(interval);
    }

    /// Takes a predecessor's closed intervals in, to be reported with this table's own.
    pub fn adopt_intervals(&self, intervals: Vec<TrafficInterval>) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        intervals.into_iter().for_each(|i| h.keep(i));
    }

    /// Closes the interval in progress if it is over, and returns the closed intervals not taken
    /// before (for a reader in this process).
    pub fn take_intervals(&self) -> Vec<TrafficInterval> {
        self.close_interval(unix_now(), false);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let new = after(&h.closed, h.taken);
        if let Some(last) = new.last() {
            h.taken = last.seq;
        }
        new
    }

    /// The closed intervals after the one numbered `seq`, oldest first.
    pub fn intervals_after(&self, seq: u64) -> Vec<TrafficInterval> {
        after(&self.history.lock().unwrap_or_else(|p| p.into_inner()).closed, seq)
    }

    /// The route for a Host header value.
    pub fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.current.load().hosts.get(&normalize_host(host)).cloned()
    }

    /// The route for a Host header value as a caller sees it: on a public listener (`from` is
    /// `None`) the public routes; on the internal listener the internal routes the instance at
    /// `from` may call.
    pub fn route_for(&self, host: &str, from: Option<IpAddr>) -> Result<Arc<Route>, Refusal> {
        let table = self.current.load();
        let route = table.hosts.get(&normalize_host(host)).ok_or(Refusal::NotFound)?;
        let Some(ip) = from else {
            return if route.internal { Err(Refusal::NotFound) } else { Ok(route.clone()) };
        };
        if !route.internal {
            return Err(Refusal::NotFound);
        }
        let callee = &route.service.name;
        let Some(caller) = table.callers.get(&ip).map(|c| &c.service) else {
            return Err(Refusal::Forbidden(format!("{ip} is not an instance of a service; only services call `{callee}` here")));
        };
        match &route.allow_from {
            Some(allowed) if !allowed.iter().any(|a| label(a) == label(caller)) => Err(Refusal::Forbidden(format!(
                "`{caller}` may not call `{callee}`; allow it with `berth service update {callee} --allow-from {caller}`"
            ))),
            _ => Ok(route.clone()),
        }
    }

    /// Who calls from `ip`, if an instance does.
    pub fn caller(&self, ip: IpAddr) -> Option<Arc<Caller>> {
        self.current.load().callers.get(&ip).cloned()
    }

    /// Every service in the table.
    pub fn services(&self) -> Vec<Arc<ServiceState>> {
        let mut all: Vec<_> = self.services.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Replaces the whole table at once. New requests see the new table; requests in flight keep
    /// the upstream they started on. Returns the upstreams that left the table: they get nothing
    /// new, and [`Upstream::drained`] says when their last request has finished.
    pub fn replace(&self, specs: &[RouteSpec]) -> Vec<Arc<Upstream>> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let existing: HashMap<(&str, SocketAddr), Arc<Upstream>> =
            old.hosts.values().flat_map(|r| r.upstreams.iter().map(|u| ((r.service.name.as_str(), u.addr), u.clone()))).collect();
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept: HashMap<String, Arc<ServiceState>> = HashMap::new();
        let mut ready: HashMap<String, usize> = HashMap::new();
        let mut hosts = HashMap::new();
        let mut callers = HashMap::new();
        let mut callers_of: HashMap<&str, Arc<Caller>> = HashMap::new();
        for s in specs {
            let caller = callers_of.entry(s.service.as_str()).or_insert_with(|| {
                Arc::new(Caller { service: s.service.clone(), names: s.names.clone(), resolve_public: s.resolve_public })
            });
            callers.extend(s.sources.iter().map(|ip| (*ip, caller.clone())));
            let state = kept
                .entry(s.service.clone())
                .or_insert_with(|| services.get(&s.service).cloned().unwrap_or_else(|| Arc::new(ServiceState::new(&s.service))))
                .clone();
            let upstreams: Vec<Arc<Upstream>> = s
                .upstreams
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    existing.get(&(s.service.as_str(), *a)).cloned().unwrap_or_else(|| {
                        let revision = s.revisions.get(i).copied().unwrap_or(0);
                        let instance = s.instances.get(i).map_or("", String::as_str);
                        Arc::new(Upstream::new(*a, state.clone(), revision, instance))
                    })
                })
                .collect();
            let count = ready.entry(s.service.clone()).or_default();
            *count = (*count).max(if s.paused.is_some() { 0 } else { upstreams.len() });
            hosts.insert(
                normalize_host(&s.host),
                Arc::new(Route {
                    service: state,
                    upstreams,
                    settings: s.settings.clone(),
                    paused: s.paused.clone(),
                    internal: s.internal,
                    allow_from: s.allow_from.clone(),
                }),
            );
        }
        let table = Table { hosts, callers };
        let now: std::collections::HashSet<(&str, SocketAddr)> =
            table.hosts.values().flat_map(|r| r.upstreams.iter().map(|u| (r.service.name.as_str(), u.addr))).collect();
        let mut left: Vec<Arc<Upstream>> = existing.iter().filter(|(k, _)| !now.contains(*k)).map(|(_, u)| u.clone()).collect();
        left.sort_by_key(|u| u.addr);
        left.dedup_by_key(|u| u.addr);
        self.current.store(Arc::new(table));
        for u in &left {
            u.retired.store(true, Ordering::SeqCst);
        }
        for (name, state) in &kept {
            let n = ready.get(name).copied().unwrap_or(0);
            state.ready.store(n, Ordering::Relaxed);
            if n > 0 {
                state.end_activation();
            }
            state.changed.notify_waiters();
        }
        // Requests waiting on a service that left the table find out now.
        for (name, state) in services.iter() {
            if !kept.contains_key(name) {
                state.ready.store(0, Ordering::Relaxed);
                state.changed.notify_waiters();
            }
        }
        *services = kept;
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn route(upstreams: &[u16], max_concurrency: usize) -> Route {
        let state = Arc::new(ServiceState::new("s"));
        Route {
            upstreams: upstreams.iter().map(|p| Arc::new(Upstream::new(addr(*p), state.clone(), 1, ""))).collect(),
            service: state,
            settings: RouteSettings { max_concurrency, ..RouteSettings::default() },
            paused: None,
            internal: false,
            allow_from: None,
        }
    }

    #[test]
    fn internal_routes_go_to_the_callers_allowed_only() {
        let t = RoutingTable::new();
        let ip = |n: u8| IpAddr::from([10, 77, 0, n]);
        let web = RouteSpec { sources: vec![ip(2)], ..RouteSpec::new("web.localhost", "web", vec![addr(1)]) };
        let web_internal = RouteSpec { internal: true, ..web.clone() };
        let web_internal = RouteSpec { host: "web.internal".into(), ..web_internal };
        let api = RouteSpec {
            internal: true,
            allow_from: Some(vec!["Web".into()]),
            sources: vec![ip(3)],
            ..RouteSpec::new("api.internal", "api", vec![addr(2)])
        };
        let batch = RouteSpec {
            internal: true,
            sources: vec![ip(4)],
            allow_from: Some(vec![]),
            ..RouteSpec::new("batch.internal", "batch", vec![])
        };
        t.replace(&[web, web_internal, api, batch]);
        // Public listeners: public routes only.
        assert!(t.route_for("web.localhost", None).is_ok());
        assert_eq!(t.route_for("api.internal", None).err(), Some(Refusal::NotFound));
        // The internal listener: internal routes, to the callers allowed.
        assert_eq!(t.route_for("web.localhost", Some(ip(3))).err(), Some(Refusal::NotFound));
        assert!(t.route_for("web.internal", Some(ip(3))).is_ok(), "a public service takes every service's calls");
        assert!(t.route_for("api.internal", Some(ip(2))).is_ok(), "allowed by name, compared as labels");
        let refused = t.route_for("api.internal", Some(ip(4))).err();
        assert!(matches!(&refused, Some(Refusal::Forbidden(m)) if m.contains("`batch` may not call `api`")), "{refused:?}");
        assert!(matches!(t.route_for("api.internal", Some(ip(9))).err(), Some(Refusal::Forbidden(_))), "an address no instance holds");
        assert_eq!(t.caller(ip(4)).map(|c| c.service.clone()).as_deref(), Some("batch"));
    }

    #[test]
    fn intervals_count_each_revisions_traffic_once() {
        let t = RoutingTable::new();
        let spec = |ups: Vec<SocketAddr>, revs: Vec<u32>| RouteSpec { revisions: revs, ..RouteSpec::new("web.localhost", "web", ups) };
        t.replace(&[spec(vec![addr(1), addr(2)], vec![3, 4])]);
        let route = t.route_for("web.localhost", None).unwrap_or_else(|_| route(&[], 0).into());
        let by_addr = |a: SocketAddr| route.upstreams.iter().find(|u| u.addr == a).map(|u| u.traffic.clone());
        let (three, four) = (by_addr(addr(1)), by_addr(addr(2)));
        t.close_interval(1_000_005, false);
        three.iter().for_each(|c| c.response(200, Duration::from_millis(5)));
        three.iter().for_each(|c| c.response(500, Duration::from_millis(50)));
        four.iter().for_each(|c| c.response(204, Duration::from_micros(300)));
        route.service.unrouted.response(503, Duration::from_secs(10));
        assert!(t.intervals_after(0).is_empty(), "the interval in progress is not closed yet");
        t.close_interval(1_000_012, false);
        // A new table keeps the counters of upstreams that stay.
        t.replace(&[spec(vec![addr(2)], vec![4])]);
        four.iter().for_each(|c| c.response(200, Duration::from_millis(1)));
        t.close_interval(1_000_031, false);
        // A router handing over closes its interval in progress early.
        t.close_interval(1_000_034, true);
        let got = t.intervals_after(0);
        assert_eq!(
            got.iter().map(|i| (i.seq, i.start, i.secs)).collect::<Vec<_>>(),
            [(1, 1_000_000, 10), (2, 1_000_010, 20), (3, 1_000_030, 4)]
        );
        assert!(got.iter().all(|i| i.run == got[0].run) && !got[0].run.is_empty());
        let (_, first) = &got[0].services[0];
        let summary: Vec<_> = first.iter().map(|x| (x.revision, x.classes, x.latency.count())).collect();
        assert_eq!(summary, [(0, [0, 0, 0, 0, 1], 1), (3, [0, 1, 0, 0, 1], 2), (4, [0, 1, 0, 0, 0], 1)]);
        let p99 = first[1].latency.quantile(0.99).unwrap_or_default();
        assert!((p99 - 50_000.0).abs() < 50_000.0 * (berth_core::sketch::ACCURACY + 0.001), "{p99}");
        let (_, second) = &got[1].services[0];
        assert_eq!(second.iter().map(|x| (x.revision, x.classes)).collect::<Vec<_>>(), [(4, [0, 1, 0, 0, 0])]);
        assert_eq!(t.intervals_after(1).len(), 2);
        // A successor takes them in with its own, numbered on.
        let successor = RoutingTable::new();
        successor.adopt_intervals(got.clone());
        assert_eq!(
            successor.intervals_after(0).iter().map(|i| (i.seq, i.start)).collect::<Vec<_>>(),
            [(1, 1_000_000), (2, 1_000_010), (3, 1_000_030)]
        );
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Web.LOCALHOST:8443"), "web.localhost");
        assert_eq!(normalize_host("web.example.com."), "web.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn replacement_keeps_surviving_upstreams_and_returns_the_leavers() {
        let t = RoutingTable::new();
        t.replace(&[RouteSpec::new("a.localhost", "a", vec![addr(1), addr(2)])]);
        let before = t.lookup("a.localhost").and_then(|r| r.upstreams.first().cloned());
        let _busy = before.as_ref().map(|u| u.begin());
        let left = t.replace(&[RouteSpec::new("a.localhost", "a", vec![addr(1), addr(3)])]);
        let after = t.lookup("A.localhost:443").and_then(|r| r.upstreams.first().cloned());
        assert_eq!(after.map(|u| u.in_flight()), Some(1), "the in-flight count survived the swap");
        assert_eq!(left.iter().map(|u| u.addr).collect::<Vec<_>>(), [addr(2)]);
        assert!(t.lookup("b.localhost").is_none());
        let services = t.services();
        assert_eq!((services.len(), services[0].ready(), services[0].in_flight()), (1, 2, 1));
    }

    #[tokio::test]
    async fn a_left_upstream_reports_when_drained() -> Result<(), Box<dyn std::error::Error>> {
        let t = RoutingTable::new();
        t.replace(&[RouteSpec::new("a.localhost", "a", vec![addr(1)])]);
        let busy = t.lookup("a.localhost").map(|r| r.upstreams[0].begin());
        let left = t.replace(&[]);
        assert_eq!(left.len(), 1);
        let up = left[0].clone();
        let waiter = tokio::spawn(async move { up.drained().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), waiter).await??;
        assert!(t.services().is_empty());
        Ok(())
    }

    #[test]
    fn picks_the_less_busy_and_skips_the_failed() {
        let r = route(&[1, 2], 0);
        let _busy: Vec<_> = (0..3).map(|_| r.upstreams[0].begin()).collect();
        for _ in 0..20 {
            assert_eq!(r.pick(None).map(|u| u.addr), Ok(addr(2)));
        }
        assert_eq!(r.pick(Some(addr(2))).map(|u| u.addr), Ok(addr(1)));
        let lone = route(&[1], 0);
        assert_eq!(lone.pick(Some(addr(1))).err(), Some(NoPick::Empty));
        assert_eq!(route(&[], 0).pick(None).err(), Some(NoPick::Empty));
    }

    #[test]
    fn the_concurrency_cap_is_respected() -> Result<(), NoPick> {
        let r = route(&[1, 2, 3], 2);
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(r.admit(None)?);
        }
        assert!(r.upstreams.iter().all(|u| u.in_flight() == 2));
        assert_eq!(r.admit(None).err(), Some(NoPick::Full));
        held.pop();
        assert!(r.admit(None).is_ok());
        Ok(())
    }

    #[test]
    fn the_concurrency_cap_holds_when_requests_race_for_the_last_slot() {
        let r = Arc::new(route(&[1, 2], 1));
        let over = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (r, over) = (r.clone(), over.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(slot) = r.admit(None) {
                            if slot.upstream().in_flight() > 1 {
                                over.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok(), "a racing thread panicked");
        }
        assert_eq!(over.load(Ordering::Relaxed), 0, "admissions beyond the cap");
        assert!(r.upstreams.iter().all(|u| u.in_flight() == 0));
    }
}
