//! The router under load over real sockets: table changes every few hundred milliseconds with
//! zero failed requests (draining), the concurrency cap and its bounded queue, scale from zero
//! through an activator, and what the metrics and the access log record.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_router::{AccessLog, Activator, RouteSettings, RouteSpec, RouterOptions, RoutingTable};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{full, serve, start_router, Result};

/// A backend that takes `delay` per request, counts how many it works on at once, and answers
/// 500 once stopped — a request reaching it then would be a failure the client sees.
struct Backend {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
    busy: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

async fn backend(name: &'static str, delay: Duration) -> Result<Backend> {
    let stopped = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (s, b, p) = (stopped.clone(), busy.clone(), peak.clone());
    let addr = serve(move |_req| {
        let (s, b, p) = (s.clone(), b.clone(), p.clone());
        async move {
            let now = b.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            b.fetch_sub(1, Ordering::SeqCst);
            if s.load(Ordering::SeqCst) {
                let mut r = Response::new(full("stopped"));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
            Response::new(full(name))
        }
    })
    .await?;
    Ok(Backend { addr, stopped, busy, peak })
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, router: SocketAddr, host: &str) -> Result<(StatusCode, String, Option<String>)> {
    let req = Request::builder().uri(format!("http://{router}/")).header("host", host).body(Empty::new())?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), retry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_changes_under_load_fail_no_request() -> Result {
    let names = ["a", "b", "c", "d"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Arc::new(backend(n, Duration::from_millis(15)).await?));
    }
    let table = Arc::new(RoutingTable::new());
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("logs/access.log");
    let options = RouterOptions { access_log: Some(AccessLog::open(&log_path)?), ..RouterOptions::default() };
    let spec = |set: &[usize]| vec![RouteSpec::new("web.localhost", "web", set.iter().map(|i| backends[*i].addr).collect())];
    table.replace(&spec(&[0, 1]));
    let router = start_router(table.clone(), options).await?;

    let running = Arc::new(AtomicBool::new(true));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (running, ok, failures) = (running.clone(), ok.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while running.load(Ordering::SeqCst) {
                match get(&c, router, "web.localhost").await {
                    Ok((StatusCode::OK, _, _)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{other:?}")),
                }
            }
        }));
    }
    // Every 200 ms another pair serves; instances that leave are stopped as soon as the router
    // reports them drained, and started again before they come back.
    let sets: [&[usize]; 4] = [&[1, 2], &[2, 3], &[3, 0], &[0, 1]];
    let mut drains = Vec::new();
    for round in 0..12 {
        let set = sets[round % sets.len()];
        for i in set {
            backends[*i].stopped.store(false, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for up in table.replace(&spec(set)) {
            let b = backends.iter().find(|b| b.addr == up.addr).cloned();
            drains.push(tokio::spawn(async move {
                up.drained().await;
                if let Some(b) = b {
                    b.stopped.store(true, Ordering::SeqCst);
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::SeqCst);
    for l in load {
        l.await?;
    }
    for d in drains {
        tokio::time::timeout(Duration::from_secs(10), d).await??;
    }
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let served = ok.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 500, "only {served} requests were served");
    assert!(backends.iter().all(|b| b.busy.load(Ordering::SeqCst) == 0));

    // Metrics count every request; the access log has a JSON line for each.
    let web = table.services().remove(0);
    assert_eq!(web.stats.responses(2) as usize, served);
    let mut metrics = String::new();
    berth_router::RouteSink::render_metrics(&*table, &mut metrics);
    assert!(metrics.contains(&format!("berth_router_requests_total{{service=\"web\",code=\"2xx\"}} {served}")), "{metrics}");
    assert!(metrics.contains("berth_router_instances{service=\"web\"} 2"), "{metrics}");
    let mut lines = 0;
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log_path)?.lines().count();
        if lines >= served {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines, served);
    let text = std::fs::read_to_string(&log_path)?;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or("{}"))?;
    assert_eq!(first["service"], "web");
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "GET");
    assert!(first["upstream"].as_str().is_some_and(|u| u.starts_with("127.0.0.1:")), "{first}");
    assert!(first["request_id"].as_str().is_some_and(|r| r.len() == 32), "{first}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_queue_and_overflow() -> Result {
    // Slow enough that the requests of one round all arrive while the first is in service, even
    // on a loaded machine.
    let slow = backend("slow", Duration::from_millis(2000)).await?;
    let table = Arc::new(RoutingTable::new());
    let capped = |queue_timeout: Duration| RouteSpec {
        settings: RouteSettings { max_concurrency: 1, queue_depth: 2, queue_timeout, ..RouteSettings::default() },
        ..RouteSpec::new("slow.localhost", "slow", vec![slow.addr])
    };
    let router = start_router(table.clone(), RouterOptions::default()).await?;

    // Queued requests are served one after another as the instance frees up.
    table.replace(&[capped(Duration::from_secs(30))]);
    let c = client();
    let all = futures_util::future::join_all((0..3).map(|_| get(&c, router, "slow.localhost"))).await;
    for r in &all {
        assert_eq!(r.as_ref().map(|r| r.0).ok(), Some(StatusCode::OK), "{all:?}");
    }
    assert_eq!(slow.peak.load(Ordering::SeqCst), 1, "the instance never worked on two at once");

    // One in service, two waiting until the queue timeout, the rest refused at once.
    table.replace(&[capped(Duration::from_millis(200))]);
    let all = futures_util::future::join_all((0..5).map(|_| get(&c, router, "slow.localhost"))).await;
    let mut outcomes: Vec<(u16, String, Option<String>)> = Vec::new();
    for r in all {
        let (s, body, retry) = r?;
        outcomes.push((s.as_u16(), body, retry));
    }
    outcomes.sort();
    assert_eq!(outcomes[0], (200, "slow".to_owned(), None));
    let full_queue = "`slow` is overloaded: its request queue is full\n";
    let timed_out = "every instance of `slow` is at its concurrency limit\n";
    let refused: Vec<&str> = outcomes[1..]
        .iter()
        .map(|(s, b, r)| {
            assert_eq!((*s, r.as_deref()), (503, Some("1")), "503 with Retry-After");
            b.as_str()
        })
        .collect();
    assert_eq!(refused.iter().filter(|b| **b == full_queue).count(), 2, "{refused:?}");
    assert_eq!(refused.iter().filter(|b| **b == timed_out).count(), 2, "{refused:?}");
    Ok(())
}

/// Starts a backend when asked, after `delay`, and puts it in the table.
struct StartOnDemand {
    table: Arc<RoutingTable>,
    delay: Duration,
    asked: AtomicUsize,
}

impl Activator for StartOnDemand {
    fn activate(&self, service: &str) {
        if self.asked.fetch_add(1, Ordering::SeqCst) > 0 {
            return;
        }
        let (table, delay, service) = (self.table.clone(), self.delay, service.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(b) = backend("woken", Duration::ZERO).await else { return };
            let settings = RouteSettings { scale_from_zero: true, ..RouteSettings::default() };
            table.replace(&[RouteSpec { settings, ..RouteSpec::new(format!("{service}.localhost"), service.clone(), vec![b.addr]) }]);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_from_zero_holds_requests_until_an_instance_is_ready() -> Result {
    let table = Arc::new(RoutingTable::new());
    let activator = Arc::new(StartOnDemand { table: table.clone(), delay: Duration::from_millis(300), asked: AtomicUsize::new(0) });
    let options = RouterOptions { activator: Some(activator.clone()), ..RouterOptions::default() };
    let zero = |timeout: Duration, host: &str| RouteSpec {
        settings: RouteSettings { scale_from_zero: true, activation_timeout: timeout, ..RouteSettings::default() },
        ..RouteSpec::new(format!("{host}.localhost"), host, vec![])
    };
    table.replace(&[zero(Duration::from_secs(10), "idle")]);
    let router = start_router(table.clone(), options).await?;
    let c = client();
    let all = futures_util::future::join_all((0..4).map(|_| get(&c, router, "idle.localhost"))).await;
    for r in &all {
        assert_eq!(r.as_ref().ok().map(|r| (r.0, r.1.as_str())), Some((StatusCode::OK, "woken")), "{all:?}");
    }
    assert_eq!(activator.asked.load(Ordering::SeqCst), 4, "every held request asked");
    let idle = table.services().remove(0);
    assert_eq!(idle.stats.cold_start_count(), 1);
    assert_eq!(idle.queued(), 0);
    let mut metrics = String::new();
    berth_router::RouteSink::render_metrics(&*table, &mut metrics);
    assert!(metrics.contains("berth_router_cold_starts_total{service=\"idle\"} 1"), "{metrics}");

    // Nobody starts an instance: held requests give up after the bound.
    table.replace(&[zero(Duration::from_millis(300), "never")]);
    let (status, body, retry) = get(&c, router, "never.localhost").await?;
    assert_eq!(
        (status, body.as_str(), retry.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, "no instance of `never` became ready in time\n", Some("1"))
    );
    Ok(())
}

/// While every instance of a service is being replaced (its route has none for a moment), a
/// request waits for the new one instead of getting an immediate 503 — within the queue's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_while_every_instance_is_replaced() -> Result {
    let next = backend("next", Duration::ZERO).await?;
    let table = Arc::new(RoutingTable::new());
    let spec = |upstreams| RouteSpec {
        settings: RouteSettings { queue_timeout: Duration::from_secs(5), ..RouteSettings::default() },
        ..RouteSpec::new("web.localhost", "web", upstreams)
    };
    table.replace(&[spec(vec![])]);
    let router = start_router(table.clone(), RouterOptions::default()).await?;
    let c = client();
    let waiting = tokio::spawn(async move { get(&c, router, "web.localhost").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    table.replace(&[spec(vec![next.addr])]);
    let (status, body, _) = waiting.await??;
    assert_eq!((status.as_u16(), body.as_str()), (200, "next"));
    Ok(())
}
