//! The data plane outlives the control plane (as root, real containers). Under steady load
//! through the router, none of these costs a request: a kill -9 of the server and its restart, a
//! clean stop while instances run and a restart, a restart on another build of berth (whose
//! server hands the router's listeners to a successor router), and a router upgrade by SIGUSR2;
//! a router being replaced lets a long request finish; a deployment after all that drains old
//! instances by the router's reports; and a clean stop with nothing left stops the router.

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
    load.wait_for(50)?;
    let (ok, failed) = load.finish();
    eprintln!("{} requests through the faults", ok.len() + failed.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), ok.len() + failed.len(), &failed[..failed.len().min(10)]);

    // Nothing left to serve: a clean stop stops the router too.
    let router_now = router_pid(&s.dir)?;
    s.cli_ok(&["service", "delete", "dp-app", "--wait"])?;
    s.terminate()?;
    wait_until("the router to stop with the server", Duration::from_secs(20), || Ok(!alive(router_now)))?;
    Ok(())
}
