//! The router process (`berth router`): the data plane on its own, so that it outlives the
//! server. It serves the HTTP and HTTPS listeners on its worker threads with the last table a
//! server sent, takes tables and answers with reports over the control socket
//! ([`crate::control`]), and on `SIGUSR2` starts a successor from the binary now at its path
//! that takes its listening sockets over (nginx's and pingora's binary upgrade); then, as on
//! `SIGTERM` or a server's `Stop`, it stops accepting, lets requests in flight finish and exits.
//!
//! It also exits, the same way, when its control socket is removed or replaced (its data
//! directory is gone, or a successor took over), and when it has served no route with no server
//! attached for [`ORPHAN_EXIT`].

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::access::AccessLog;
use crate::control::{self, DaemonConfig, FromRouter, Handing, Hello, Listener, Report, ToRouter};
use crate::listen::Gate;
use crate::proxy::{Activator, Router, RouterOptions};
use crate::sink::{flatten, Owners, RouteSink};
use crate::table::{RoutingTable, Upstream};
use crate::tls::{load_certificate, server_config, LocalCa, OnDemandCerts};

/// With no route and no server attached this long, the router exits.
pub const ORPHAN_EXIT: Duration = Duration::from_secs(30);
/// How often an attached server gets a report.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Every this many reports carry the metrics.
const METRICS_EVERY: u32 = 10;

/// The build a process runs: berth's version and the size and modification time of its binary,
/// so a server can tell a router started from another binary.
pub fn identity() -> String {
    identity_of(Path::new("/proc/self/exe"))
}

/// The identity ([`identity`]) of the berth binary at `path`.
pub fn identity_of(path: &Path) -> String {
    let exe = std::fs::metadata(path);
    let (size, mtime) = exe.map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
    let mtime = mtime.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    format!("{} {size} {mtime}", env!("CARGO_PKG_VERSION"))
}

fn other(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

struct State {
    config: DaemonConfig,
    identity: String,
    table: Arc<RoutingTable>,
    /// The routes served and the number of their table.
    owners: Mutex<(u64, Owners)>,
    /// Upstreams that left the table and may still have requests in flight.
    draining: Mutex<Vec<Arc<Upstream>>>,
    /// Wakes the attached server's reporter (an upstream drained).
    poke: Notify,
    /// Numbers attachments; a handler ends when a newer one starts.
    attachment: watch::Sender<u64>,
    attached: AtomicUsize,
    activations: broadcast::Sender<String>,
    /// The sockets served, kept for a successor.
    listeners: Vec<(Listener, std::net::TcpListener)>,
    http: SocketAddr,
    https: SocketAddr,
    /// Why the router stops, once it does.
    stop: watch::Sender<Option<&'static str>>,
}

impl State {
    fn apply(self: &Arc<Self>, gen: u64, owners: Owners) {
        let left = self.table.replace(&flatten(&owners));
        *self.owners.lock().unwrap_or_else(|p| p.into_inner()) = (gen, owners);
        for u in left {
            self.draining.lock().unwrap_or_else(|p| p.into_inner()).push(u.clone());
            let state = self.clone();
            tokio::spawn(async move {
                u.drained().await;
                state.poke.notify_one();
            });
        }
    }

    /// A report; `sent` is the number of the last traffic interval this attachment was sent.
    fn report(&self, metrics: bool, sent: &mut u64) -> Report {
        let gen = self.owners.lock().unwrap_or_else(|p| p.into_inner()).0;
        let draining = {
            let mut d = self.draining.lock().unwrap_or_else(|p| p.into_inner());
            d.retain(|u| u.in_flight() > 0);
            d.iter().map(|u| (u.service_name().to_owned(), u.addr)).collect()
        };
        let metrics = metrics.then(|| {
            let mut out = String::new();
            self.table.render_metrics(&mut out);
            out
        });
        let traffic = self.table.intervals_after(*sent);
        if let Some(last) = traffic.last() {
            *sent = last.seq;
        }
        Report { gen, services: self.table.load(), draining, metrics, traffic }
    }

    fn hello(&self) -> Hello {
        let (gen, owners) = self.owners.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Hello {
            pid: std::process::id(),
            identity: self.identity.clone(),
            config: self.config.clone(),
            http: self.http,
            https: self.https,
            owners,
            gen,
        }
    }

    fn request_stop(&self, why: &'static str) {
        self.stop.send_if_modified(|s| {
            let first = s.is_none();
            if first {
                *s = Some(why);
            }
            first
        });
    }
}

/// Passes held requests' activations on to the attached server.
struct Relay(broadcast::Sender<String>);

impl Activator for Relay {
    fn activate(&self, service: &str) {
        let _ = self.0.send(service.to_owned());
    }
}

/// Runs the router process until it has stopped and drained. `config_path` is what it was
/// started with (a successor is started with it too); with `takeover`, it takes the listeners
/// and table of the router running on the data directory instead of binding.
pub async fn run(config: DaemonConfig, config_path: &Path, takeover: bool) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let data = config.data_dir.clone();
    let socket_path = data.join(control::SOCKET);
    let table = Arc::new(RoutingTable::new());
    let (listeners, handed_from) = if takeover {
        let (mut listeners, handing, stream) = take_over(&socket_path).await?;
        let (gen, owners) = (handing.gen, handing.owners);
        table.adopt_intervals(handing.traffic);
        // A successor on another configuration may serve instances where its predecessor did not.
        listeners.retain(|(k, _)| *k != Listener::Internal || config.listen_internal.is_some());
        if let (Some(addr), false) = (config.listen_internal, listeners.iter().any(|(k, _)| *k == Listener::Internal)) {
            let sockets = crate::workers::bind(addr, config.workers)
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding the router's internal listener to {addr}: {e}")))?;
            listeners.extend(sockets.into_iter().map(|l| (Listener::Internal, l)));
        }
        table.replace(&flatten(&owners));
        (listeners, Some((stream, gen, owners)))
    } else {
        (bind(&config)?, None)
    };
    let (gen, owners) = handed_from.as_ref().map(|(_, g, o)| (*g, o.clone())).unwrap_or_default();
    let addr_of = |kind: Listener| listeners.iter().find(|(k, _)| *k == kind).and_then(|(_, l)| l.local_addr().ok());
    let (Some(http), Some(https)) = (addr_of(Listener::Http), addr_of(Listener::Https)) else {
        return Err(other("no HTTP or no HTTPS listener"));
    };

    let stopping = CancellationToken::new();
    let activations = broadcast::channel(1024).0;
    let workers = start_workers(&config, &table, &listeners, &stopping, &activations, https)?;
    // berth's DNS for instances, beside the internal listener on their gateway.
    if let Some(SocketAddr::V4(internal)) = config.listen_internal {
        let dns = SocketAddr::from((*internal.ip(), 53));
        let (table, stopping) = (table.clone(), stopping.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::dns::serve(table, dns, *internal.ip(), stopping).await {
                tracing::error!(error = %e, %dns, "DNS for instances failed");
            }
        });
    }
    let state = Arc::new(State {
        identity: identity(),
        table,
        owners: Mutex::new((gen, owners)),
        draining: Mutex::new(Vec::new()),
        poke: Notify::new(),
        attachment: watch::channel(0).0,
        attached: AtomicUsize::new(0),
        activations,
        listeners,
        http,
        https,
        stop: watch::channel(None).0,
        config,
    });

    // The socket is made under a name of its own and renamed over the old one: a server never
    // finds the path missing, and a predecessor's socket is replaced at once.
    let temporary = data.join(format!("{}.{}", control::SOCKET, std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let control_listener = UnixListener::bind(&temporary)?;
    std::fs::rename(&temporary, &socket_path)?;
    let ours = inode(&socket_path);
    std::fs::write(data.join(control::PID_FILE), format!("{}\n", std::process::id()))?;
    if let Some((mut stream, _, _)) = handed_from {
        control::write(&mut stream, &ToRouter::Taken).await?;
    }
    tracing::info!(%http, %https, workers = state.config.workers, "router serving");

    let result = control_loop(&state, control_listener, &socket_path, ours, &exe, config_path).await;
    let why = (*state.stop.borrow()).unwrap_or("stopping");
    tracing::info!(
        reason = why,
        drain_timeout_secs = state.config.drain_timeout_secs,
        "router stopping: no new connections; requests in flight finish"
    );
    stopping.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    });
    let _ = joined.await;
    if inode(&socket_path) == ours {
        let _ = std::fs::remove_file(&socket_path);
        let _ = std::fs::remove_file(data.join(control::PID_FILE));
    }
    tracing::info!("router stopped");
    result
}

/// The device and inode of a path, to tell whether a socket is still ours.
fn inode(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Binds `workers` sockets (`SO_REUSEPORT`) for each listener.
fn bind(config: &DaemonConfig) -> std::io::Result<Vec<(Listener, std::net::TcpListener)>> {
    let mut all = Vec::new();
    let internal = config.listen_internal.map(|a| (Listener::Internal, a));
    for (kind, addr) in [(Listener::Https, config.listen_https), (Listener::Http, config.listen_http)].into_iter().chain(internal) {
        let sockets = crate::workers::bind(addr, config.workers)
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding the router's {kind:?} listener to {addr}: {e}")))?;
        all.extend(sockets.into_iter().map(|s| (kind, s)));
    }
    Ok(all)
}

/// Connects to the running router and takes its listeners and table over.
async fn take_over(socket: &Path) -> std::io::Result<(Vec<(Listener, std::net::TcpListener)>, Handing, UnixStream)> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("reaching the running router at {}: {e}", socket.display())))?;
    control::write(&mut stream, &ToRouter::Handoff).await?;
    let fds = control::receive_fds(&stream).await?;
    let mut handing = match control::read::<FromRouter, _>(&mut BufReader::new(&mut stream)).await? {
        Some(FromRouter::Handing(h)) => h,
        _ => return Err(other("the running router did not hand its listeners over")),
    };
    if fds.len() != handing.listeners.len() {
        return Err(other(format!("{} sockets came for {} listeners", fds.len(), handing.listeners.len())));
    }
    let listeners = std::mem::take(&mut handing.listeners)
        .into_iter()
        .zip(fds)
        .map(|(kind, fd)| {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map(|()| (kind, l))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    tracing::info!(sockets = listeners.len(), routes = flatten(&handing.owners).len(), "took the listeners over");
    Ok((listeners, handing, stream))
}

/// Starts the worker threads over the listeners; they end once `stopping` is cancelled and their
/// connections have finished (or the drain timeout passed).
fn start_workers(
    config: &DaemonConfig,
    table: &Arc<RoutingTable>,
    listeners: &[(Listener, std::net::TcpListener)],
    stopping: &CancellationToken,
    activations: &broadcast::Sender<String>,
    https: SocketAddr,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let ca_domains: Vec<String> = config.suffixes.iter().map(|s| s.trim_start_matches('.').to_owned()).collect();
    let ca = LocalCa::load_or_create(&config.data_dir.join("tls"), &ca_domains).map_err(|e| other(format!("the local CA: {e}")))?;
    let supplied = config
        .certificates
        .iter()
        .map(|c| load_certificate(&c.domains, &c.cert, &c.key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| other(format!("router.certificates: {e}")))?;
    let certs = OnDemandCerts::new(ca, config.suffixes.clone()).with_supplied(supplied);
    let tls = server_config(Arc::new(certs)).map_err(|e| other(format!("TLS: {e}")))?;
    let access_log = match &config.access_log {
        Some(path) => Some(AccessLog::open(path).map_err(|e| other(format!("opening the access log {}: {e}", path.display())))?),
        None => None,
    };
    let activator: Arc<dyn Activator> = Arc::new(Relay(activations.clone()));
    let options = |redirect: Option<u16>, name: &str, internal: bool| RouterOptions {
        redirect_to_https_port: redirect,
        hsts: config.hsts,
        access_log: access_log.clone(),
        activator: Some(activator.clone()),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        gate: Gate::new(name, config.max_connections),
        tls_handshake_timeout: Duration::from_secs(config.tls_handshake_timeout_secs),
        stopping: stopping.clone(),
        drain_timeout: Duration::from_secs(config.drain_timeout_secs),
        internal,
        metrics_history: config.metrics_history,
    };
    let copies = |kind: Listener| -> std::io::Result<Vec<std::net::TcpListener>> {
        listeners.iter().filter(|(k, _)| *k == kind).map(|(_, l)| l.try_clone()).collect()
    };
    let redirect = config.redirect_http_to_https.then_some(https.port());
    let mut threads =
        Router::serve_on(table.clone(), options(None, "router HTTPS", false), copies(Listener::Https)?, Some(tls), config.pin_workers)?;
    threads.extend(Router::serve_on(
        table.clone(),
        options(redirect, "router HTTP", false),
        copies(Listener::Http)?,
        None,
        config.pin_workers,
    )?);
    let internal = copies(Listener::Internal)?;
    if !internal.is_empty() {
        threads.extend(Router::serve_on(table.clone(), options(None, "router internal", true), internal, None, config.pin_workers)?);
    }
    Ok(threads)
}

/// Serves the control socket and watches for the reasons to stop; returns once one came.
async fn control_loop(
    state: &Arc<State>,
    control_listener: UnixListener,
    socket_path: &Path,
    ours: Option<(u64, u64)>,
    exe: &Path,
    config_path: &Path,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut usr2) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::user_defined2())?);
    // A terminal that closes does not end the data plane.
    let mut hup = signal(SignalKind::hangup())?;
    let mut stop = state.stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut alone_since = Instant::now();
    loop {
        tokio::select! {
            accepted = control_listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_control(state.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => state.request_stop("SIGTERM"),
            _ = int.recv() => state.request_stop("SIGINT"),
            _ = usr2.recv() => start_successor(exe, config_path),
            _ = hup.recv() => tracing::info!("SIGHUP ignored: the router serves on"),
            () = async { let _ = stop.wait_for(|s| s.is_some()).await; } => return Ok(()),
            _ = tick.tick() => {
                state.table.close_interval(crate::table::unix_now(), false);
                if inode(socket_path) != ours {
                    state.request_stop("the control socket was removed or taken over");
                }
                if state.attached.load(Ordering::Relaxed) > 0 || !state.table.services().is_empty() {
                    alone_since = Instant::now();
                } else if alone_since.elapsed() >= ORPHAN_EXIT {
                    state.request_stop("no route and no server");
                }
            }
        }
    }
}

/// `SIGUSR2`: starts the binary now at this router's path as its successor.
fn start_successor(exe: &Path, config_path: &Path) {
    tracing::info!(binary = %exe.display(), "starting a successor to take the listeners over");
    use std::os::unix::process::CommandExt;
    let spawned = std::process::Command::new(exe)
        .process_group(0)
        .args(["router", "--config"])
        .arg(config_path)
        .arg("--takeover")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        // Reaped when it ends, should that be before this process does.
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(e) => tracing::error!(error = %e, binary = %exe.display(), "starting the successor failed; serving on"),
    }
}

/// One connection on the control socket.
async fn serve_control(state: Arc<State>, mut stream: UnixStream) {
    // The peer sends one message and waits for the answer, so nothing more is buffered here.
    let first = control::read::<ToRouter, _>(&mut BufReader::new(&mut stream)).await;
    let outcome = match first {
        Ok(Some(ToRouter::Attach)) => attached(&state, stream).await,
        Ok(Some(ToRouter::Handoff)) => hand_off(&state, stream).await,
        Ok(Some(ToRouter::Stop)) => {
            state.request_stop("asked to");
            Ok(())
        }
        Ok(Some(other)) => Err(self::other(format!("unexpected first message {other:?}"))),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "control connection ended");
    }
}

/// A server attached: Hello, then its tables in, reports and activations out, until it goes or
/// a newer server attaches.
async fn attached(state: &Arc<State>, mut stream: UnixStream) -> std::io::Result<()> {
    struct Count<'a>(&'a AtomicUsize);
    impl Drop for Count<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    state.attached.fetch_add(1, Ordering::Relaxed);
    let _count = Count(&state.attached);
    let mut me = 0;
    state.attachment.send_modify(|n| {
        *n += 1;
        me = *n;
    });
    let mut superseded = state.attachment.subscribe();
    control::write(&mut stream, &FromRouter::Hello(Box::new(state.hello()))).await?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut activations = state.activations.subscribe();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    // Reports start once the server has sent its table: until then it reads nothing but Hello.
    let (mut reporting, mut reports, mut sent) = (false, 0u32, 0u64);
    loop {
        let report = tokio::select! {
            msg = control::read::<ToRouter, _>(&mut reader) => match msg? {
                Some(ToRouter::Table { gen, owners }) => {
                    state.apply(gen, owners);
                    reporting = true;
                    true
                }
                Some(ToRouter::Stop) => {
                    state.request_stop("the server asked to");
                    false
                }
                Some(other) => return Err(self::other(format!("unexpected message {other:?}"))),
                None => return Ok(()),
            },
            _ = tick.tick(), if reporting => true,
            () = state.poke.notified(), if reporting => true,
            service = activations.recv() => {
                if let Ok(service) = service {
                    control::write(&mut write, &FromRouter::Activate { service }).await?;
                }
                false
            }
            () = async { let _ = superseded.wait_for(|n| *n != me).await; } => return Ok(()),
        };
        if report {
            reports = reports.wrapping_add(1);
            let report = state.report(reports % METRICS_EVERY == 1, &mut sent);
            control::write(&mut write, &FromRouter::Report(report)).await?;
        }
    }
}

/// A successor asked for the listeners: they go, with the table; once it serves, this router
/// stops.
async fn hand_off(state: &Arc<State>, mut stream: UnixStream) -> std::io::Result<()> {
    let fds: Vec<_> = state.listeners.iter().map(|(_, l)| l.as_fd()).collect();
    control::send_fds(&stream, &fds).await?;
    let (gen, owners) = state.owners.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let listeners = state.listeners.iter().map(|(k, _)| *k).collect();
    // What this router counted goes with the listeners: the successor reports it.
    state.table.close_interval(crate::table::unix_now(), true);
    let traffic = state.table.intervals_after(0);
    control::write(&mut stream, &FromRouter::Handing(Handing { listeners, owners, gen, traffic })).await?;
    match control::read::<ToRouter, _>(&mut BufReader::new(&mut stream)).await {
        Ok(Some(ToRouter::Taken)) => {
            state.request_stop("a successor took the listeners over");
            Ok(())
        }
        _ => {
            tracing::warn!("the successor did not take the listeners over; serving on");
            Ok(())
        }
    }
}

/// Where `berth router` finds its configuration: written by the server.
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("router.json")
}
