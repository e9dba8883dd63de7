//! The data plane outlives the control plane (as root, real containers). Under steady load
//! through the router, none of these costs a request: a kill -9 of the server and its restart, a
//! clean stop while instances run and a restart, a restart on another build of berth (whose
//! server hands the router's listeners to a successor router), and a router upgrade by SIGUSR2;
//! a router being replaced lets a long request finish; a deployment after all that drains old
//! instances by the router's reports; the metrics history counts every request once through it
//! all; and a clean stop with nothing left stops the router.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_testkit::hello_binary;
use support::*;

fn router_pid(dir: &Path) -> Result<i32> {
    Ok(std::fs::read_to_string(dir.join("router.pid"))?.trim().parse()?)
}

fn alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[test]
fn restarts_kills_and_upgrades_of_server_and_router_cost_no_request() -> Result {
    let mut s = Server::start_with_runtime("d", 243, "dp-app-")?;
    let began = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "--env", "HELLO_VERSION=v1", "-t", "web:v1"])?;
    let create = "service create dp-app --image web:v1 --min-size 2 --health-check http --health-path /healthz --memory 128 --wait";
    s.cli_ok(&create.split(' ').collect::<Vec<_>>())?;
    let router = s.router_http()?;
    let load = Load::start(&router, "dp-app.localhost");
    load.wait_for(50)?;
    let first_router = router_pid(&s.dir)?;

    // The server killed: the router serves on; a new server picks it up.
    s.kill9()?;
    load.wait_for(100)?;
    s.restart()?;
    assert_eq!(router_pid(&s.dir)?, first_router, "a restarted server started another router");
    load.wait_for(100)?;

    // A clean stop with instances running leaves the router serving.
    s.terminate()?;
    assert!(alive(first_router), "a clean stop with instances running stopped the router");
    load.wait_for(100)?;
    s.restart()?;
    load.wait_for(50)?;

    // A router upgrade (SIGUSR2): a successor takes the listeners over while a long request is
    // in flight on the old router; the old one finishes it and exits.
    let long = {
        let url = format!("http://{router}/sleep/1500");
        std::thread::spawn(move || ureq::get(&url).set("Host", "dp-app.localhost").call().map(|r| r.status()).map_err(|e| e.to_string()))
    };
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first_router), nix::sys::signal::Signal::SIGUSR2)?;
    wait_until("a successor router", Duration::from_secs(20), || Ok(router_pid(&s.dir)? != first_router))?;
    assert_eq!(long.join().map_err(|_| "the long request panicked")?, Ok(200), "the long request was cut by the upgrade");
    wait_until("the old router to exit", Duration::from_secs(20), || Ok(!alive(first_router)))?;
    load.wait_for(100)?;

    // The server restarted on another build of berth: its router is replaced the same way.
    let second_router = router_pid(&s.dir)?;
    let other_build = tmp.path().join("berth-other-build");
    std::fs::copy(BIN, &other_build)?;
    s.kill9()?;
    s.restart_with(&other_build)?;
    wait_until("the router of the other build", Duration::from_secs(20), || Ok(router_pid(&s.dir)? != second_router))?;
    wait_until("the replaced router to exit", Duration::from_secs(20), || Ok(!alive(second_router)))?;
    load.wait_for(100)?;

    // The control plane works through the new router: a deployment, drained by its reports.
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "--env", "HELLO_VERSION=v2", "-t", "web:v2"])?;
    s.cli_ok(&["service", "deploy", "dp-app", "--image", "web:v2", "--wait"])?;
    let deployed = Instant::now();
    wait_until("v2 to serve", Duration::from_secs(20), || {
        Ok(load.since(deployed).0.last().is_some_and(|b| b.starts_with("hello from v2")))
    })?;
    // The metrics history kept what went through the router across all of that: each request
    // counted once (though the router reported its intervals to four servers and handed them to
    // two successors), by revision, with CPU and memory from the instances' cgroups and the
    // deployment marked. The instances' CPU is looked for while they still serve (an idle
    // instance uses less than the millisecond the history keeps).
    let history = || -> Result<(u64, serde_json::Value)> {
        let m = http("GET", &s.url("/api/v1/services/dp-app/metrics?step=10"), Some(&s.creds()), &[], b"")?.json();
        let requests = |p: &serde_json::Value| p["requests"].as_object().map_or(0, |c| c.values().filter_map(|v| v.as_u64()).sum::<u64>());
        Ok((m["points"].as_array().map_or(0, |ps| ps.iter().map(requests).sum()), m))
    };
    let used = |m: &serde_json::Value, key: &str| {
        let points = m["instances"].as_array().into_iter().flatten().flat_map(|i| i["points"].as_array().cloned().unwrap_or_default());
        points.into_iter().any(|p| p[key].as_f64().is_some_and(|v| v > 0.0))
    };
    wait_until("the instances' CPU in the history", Duration::from_secs(60), || Ok(used(&history()?.1, "cpu_millicores")))?;
    load.wait_for(50)?;
    let (ok, failed) = load.finish();
    eprintln!("{} requests through the faults", ok.len() + failed.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), ok.len() + failed.len(), &failed[..failed.len().min(10)]);
    let answered = (ok.len() + failed.len() + 1) as u64;
    // Requests a router serves after handing over to a successor are not counted; on a loaded
    // machine that was up to a sixth of them here (8083 of 8162 when it is quiet).
    let waited =
        wait_until("the history to hold three quarters of the requests", Duration::from_secs(60), || Ok(history()?.0 * 4 >= answered * 3));
    if waited.is_err() {
        eprintln!("history: {} of {answered}", history()?.0);
    }
    waited?;
    let (counted, m) = history()?;
    eprintln!("history: {counted} of {answered} requests");
    assert!(counted <= answered, "the history counts {counted} requests of {answered} made: some twice");
    let revisions: Vec<u64> = m["revisions"].as_array().into_iter().flatten().filter_map(|r| r["revision"].as_u64()).collect();
    assert!(revisions.contains(&1) && revisions.contains(&2), "revisions in the history: {revisions:?}");
    let points = m["points"].as_array().cloned().unwrap_or_default();
    assert!(points.first().and_then(|p| p["t"].as_u64()).is_some_and(|t| t <= began + 10), "the points before the restarts are gone");
    assert!(points.iter().any(|p| p["p99_ms"].as_f64().is_some_and(|v| v > 0.0)), "no latency in {points:?}");
    assert!(used(&m, "memory_bytes"), "no memory in {}", m["instances"]);
    let markers = m["markers"].as_array().cloned().unwrap_or_default();
    let table = s.cli_ok(&["service", "metrics", "dp-app", "--since", "10m", "--step", "10"])?;
    assert!(table.contains("P99 MS") && table.lines().count() > 1, "{table}");
    assert!(
        markers.iter().any(|e| e["kind"] == "deployed" && e["message"].as_str().is_some_and(|t| t.contains("dp-app-0002"))),
        "{markers:?}"
    );

    // Nothing left to serve: a clean stop stops the router too.
    let router_now = router_pid(&s.dir)?;
    s.cli_ok(&["service", "delete", "dp-app", "--wait"])?;
    s.terminate()?;
    wait_until("the router to stop with the server", Duration::from_secs(20), || Ok(!alive(router_now)))?;
    Ok(())
}
