//! The server's side of the router process: a [`RouteSink`] that sends the table over the
//! control socket ([`crate::control`]) and keeps what the router reports — each service's load,
//! the upstreams still draining, the metrics.
//!
//! The connection is kept: when the router process is gone a new one is started (it binds the
//! listeners again and gets the whole table), and a router of another build or configuration is
//! replaced by a successor that takes its listening sockets over, so no connection is refused.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::control::{self, DaemonConfig, FromRouter, Hello, Report, ToRouter};
use crate::proxy::Activator;
use crate::sink::{flatten, Leaver, Owners, RouteSink, ServiceLoad};
use crate::table::TrafficInterval;

/// How long a router process has to start listening, or to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Traffic intervals kept for the server to take: an hour's.
const KEPT_TRAFFIC: usize = 360;

/// How the server reaches (and, when needed, starts) its router process.
pub struct Launch {
    pub data_dir: PathBuf,
    /// The configuration the router should run with.
    pub config: DaemonConfig,
    /// The build this server is ([`crate::daemon::identity`]).
    pub identity: String,
    /// Starts a router process; `true` starts a successor that takes the running one's
    /// listeners over.
    pub spawn: Box<dyn Fn(bool) -> std::io::Result<()> + Send + Sync>,
    /// Told every router the server attaches to (its addresses may have changed).
    pub on_hello: Box<dyn Fn(&Hello) + Send + Sync>,
}

/// The router process, as the server drives it.
#[derive(Clone)]
pub struct RemoteRouter {
    inner: Arc<Inner>,
}

struct Inner {
    launch: Launch,
    gen: AtomicU64,
    /// The table to send and its number.
    table: watch::Sender<(u64, Owners)>,
    /// The (service, address) pairs of the last table, to tell who left.
    routed: Mutex<HashSet<(String, SocketAddr)>>,
    reports: watch::Sender<Arc<Report>>,
    metrics: Mutex<String>,
    /// Traffic intervals reported and not yet taken.
    traffic: Mutex<VecDeque<TrafficInterval>>,
    activator: OnceLock<Arc<dyn Activator>>,
    hello: Mutex<Hello>,
    /// Set to stop the router; the router task then ends.
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
}

/// Waits for a left upstream to drain, from the router's reports.
#[derive(Clone)]
pub struct DrainWatch {
    gen: u64,
    reports: watch::Receiver<Arc<Report>>,
}

impl DrainWatch {
    pub(crate) async fn drained(&self, service: &str, addr: SocketAddr) {
        let mut reports = self.reports.clone();
        loop {
            {
                let r = reports.borrow_and_update();
                if r.gen >= self.gen && !r.draining.iter().any(|(s, a)| s == service && *a == addr) {
                    return;
                }
            }
            if reports.changed().await.is_err() {
                return;
            }
        }
    }
}

fn routed_pairs(owners: &Owners) -> HashSet<(String, SocketAddr)> {
    flatten(owners).iter().flat_map(|s| s.upstreams.iter().map(|a| (s.service.clone(), *a))).collect()
}

impl RemoteRouter {
    /// Attaches to the router process of `launch.data_dir`, starting one when none runs and a
    /// successor when the one running is another build or configuration. Returns it with the
    /// routes it was serving (to go on from), and keeps the connection in the background.
    pub async fn start(launch: Launch) -> std::io::Result<RemoteRouter> {
        let (stream, hello) = attach(&launch, true).await?;
        let inner = Arc::new(Inner {
            gen: AtomicU64::new(hello.gen),
            table: watch::channel((hello.gen, hello.owners.clone())).0,
            routed: Mutex::new(routed_pairs(&hello.owners)),
            reports: watch::channel(Arc::new(Report { gen: hello.gen, ..Report::default() })).0,
            metrics: Mutex::new(String::new()),
            traffic: Mutex::new(VecDeque::new()),
            activator: OnceLock::new(),
            hello: Mutex::new(hello),
            stop: watch::channel(false).0,
            stopped: watch::channel(false).0,
            launch,
        });
        tokio::spawn(keep(inner.clone(), stream));
        Ok(RemoteRouter { inner })
    }

    /// The router's answer when the server attached: its process, addresses and routes.
    pub fn hello(&self) -> Hello {
        self.inner.hello.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Who asks for instances when requests wait for a service with none.
    pub fn set_activator(&self, activator: Arc<dyn Activator>) {
        let _ = self.inner.activator.set(activator);
    }

    /// Stops the router process: it stops accepting, lets requests in flight finish (at most
    /// its drain timeout) and exits. Returns once it has.
    pub async fn stop(&self) {
        self.inner.stop.send_replace(true);
        let mut stopped = self.inner.stopped.subscribe();
        let bound = Duration::from_secs(self.inner.launch.config.drain_timeout_secs + 5);
        let _ = tokio::time::timeout(bound, async { stopped.wait_for(|s| *s).await.map(|_| ()) }).await;
    }
}

impl RouteSink for RemoteRouter {
    fn install(&self, owners: &Owners) -> Vec<Leaver> {
        let gen = self.inner.gen.fetch_add(1, Ordering::SeqCst) + 1;
        let now = routed_pairs(owners);
        let left: Vec<(String, SocketAddr)> = {
            let mut routed = self.inner.routed.lock().unwrap_or_else(|p| p.into_inner());
            let left = routed.difference(&now).cloned().collect();
            *routed = now;
            left
        };
        self.inner.table.send_replace((gen, owners.clone()));
        let watch = DrainWatch { gen, reports: self.inner.reports.subscribe() };
        left.into_iter().map(|(service, addr)| Leaver::remote(service, addr, watch.clone())).collect()
    }

    fn load(&self) -> Vec<ServiceLoad> {
        self.inner.reports.borrow().services.clone()
    }

    fn render_metrics(&self, out: &mut String) {
        out.push_str(&self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn left_earlier(&self, service: &str, addr: SocketAddr) -> Leaver {
        let watch = DrainWatch { gen: self.inner.gen.load(Ordering::SeqCst), reports: self.inner.reports.subscribe() };
        Leaver::remote(service.to_owned(), addr, watch)
    }

    fn take_traffic(&self) -> Vec<TrafficInterval> {
        self.inner.traffic.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }
}

/// Connects and attaches: starts a router when none answers (`may_start`), and replaces one of
/// another build or configuration.
async fn attach(launch: &Launch, may_start: bool) -> std::io::Result<(UnixStream, Hello)> {
    let socket = launch.data_dir.join(control::SOCKET);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let (mut started, mut replacing) = (false, None::<u32>);
    loop {
        let attempt = match UnixStream::connect(&socket).await {
            Ok(stream) => hello(stream).await.map(Some),
            Err(_) => Ok(None),
        };
        match attempt {
            Ok(Some((stream, hello))) if replacing == Some(hello.pid) => drop((stream, hello)),
            Ok(Some((stream, hello))) if hello.identity != launch.identity || hello.config != launch.config => {
                if replacing.is_some() {
                    return Err(std::io::Error::other(format!(
                        "the new router process (pid {}) runs another build or configuration than this server",
                        hello.pid
                    )));
                }
                tracing::info!(pid = hello.pid, "the router process runs another build or configuration; starting its successor");
                (launch.spawn)(true)?;
                replacing = Some(hello.pid);
                drop(stream);
            }
            Ok(Some((stream, hello))) => {
                (launch.on_hello)(&hello);
                return Ok((stream, hello));
            }
            Ok(None) if !started && may_start => {
                (launch.spawn)(false)?;
                started = true;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "attaching to the router process failed; retrying"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no router process answered on {} within {} s", socket.display(), START_TIMEOUT.as_secs()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `Attach` and reads the router's `Hello`.
async fn hello(mut stream: UnixStream) -> std::io::Result<(UnixStream, Hello)> {
    control::write(&mut stream, &ToRouter::Attach).await?;
    let mut reader = BufReader::new(&mut stream);
    let answer = tokio::time::timeout(Duration::from_secs(5), control::read::<FromRouter, _>(&mut reader)).await;
    // The router writes nothing after its Hello until it has read more, so nothing is buffered.
    match answer {
        Ok(Ok(Some(FromRouter::Hello(h)))) => Ok((stream, *h)),
        Ok(Ok(_)) => Err(std::io::Error::other("the router process did not answer with Hello")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the router process did not answer")),
    }
}

/// Keeps the server attached to a router process until it is stopped.
async fn keep(inner: Arc<Inner>, mut stream: UnixStream) {
    let mut stop = inner.stop.subscribe();
    loop {
        let stopping = serve_attachment(&inner, stream, &mut stop).await;
        if stopping || *stop.borrow() {
            inner.stopped.send_replace(true);
            return;
        }
        tracing::warn!("the router process went away; starting a new one");
        loop {
            match attach(&inner.launch, true).await {
                Ok((s, hello)) => {
                    *inner.hello.lock().unwrap_or_else(|p| p.into_inner()) = hello;
                    stream = s;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "no router process: the services are not served; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if *stop.borrow() {
                inner.stopped.send_replace(true);
                return;
            }
        }
    }
}

/// One attachment: sends the table whenever it changes, takes reports in. Returns true when it
/// ended because the router was told to stop.
async fn serve_attachment(inner: &Arc<Inner>, stream: UnixStream, stop: &mut watch::Receiver<bool>) -> bool {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut table = inner.table.subscribe();
    let mut send = Some(table.borrow_and_update().clone());
    let mut told_to_stop = false;
    loop {
        if let Some((gen, owners)) = send.take() {
            if control::write(&mut write, &ToRouter::Table { gen, owners }).await.is_err() {
                return told_to_stop;
            }
        }
        tokio::select! {
            changed = table.changed() => match changed {
                Ok(()) => send = Some(table.borrow_and_update().clone()),
                Err(_) => return told_to_stop,
            },
            () = async { let _ = stop.wait_for(|s| *s).await; }, if !told_to_stop => {
                told_to_stop = true;
                if control::write(&mut write, &ToRouter::Stop).await.is_err() {
                    return true;
                }
            }
            msg = control::read::<FromRouter, _>(&mut reader) => match msg {
                Ok(Some(FromRouter::Report(mut report))) => {
                    if let Some(text) = report.metrics.take() {
                        *inner.metrics.lock().unwrap_or_else(|p| p.into_inner()) = text;
                    }
                    if !report.traffic.is_empty() {
                        let mut kept = inner.traffic.lock().unwrap_or_else(|p| p.into_inner());
                        kept.extend(std::mem::take(&mut report.traffic));
                        // Nobody took them for an hour's worth: the oldest go.
                        while kept.len() > KEPT_TRAFFIC {
                            kept.pop_front();
                        }
                    }
                    inner.reports.send_replace(Arc::new(report));
                }
                Ok(Some(FromRouter::Activate { service })) => {
                    if let Some(a) = inner.activator.get() {
                        a.activate(&service);
                    }
                }
                Ok(Some(other)) => tracing::debug!(message = ?other, "unexpected message from the router process"),
                Ok(None) => return told_to_stop,
                Err(e) => {
                    tracing::debug!(error = %e, "reading from the router process failed");
                    return told_to_stop;
                }
            },
        }
    }
}
