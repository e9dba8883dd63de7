//! `berth run` and `berth instance` against a real server with the embedded runtime (as root):
//! an image built with `berth image build` runs, answers, logs; kill -9 of the server while it
//! serves loses no request, and the restarted server re-adopts the instance.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_testkit::hello_binary;
use support::*;

/// GETs `url` until the instance answers (it may still be starting).
fn get_when_up(agent: &ureq::Agent, url: &str) -> Result<String> {
    for _ in 0..100 {
        if let Ok(r) = agent.get(url).call() {
            return Ok(r.into_string()?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{url} did not answer").into())
}

#[test]
fn run_serve_survive_a_server_crash_and_clean_up() -> Result {
    let mut s = Server::start_with_runtime("c", 252, "h")?;
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?;
    s.cli_ok(&["image", "build", "--binary", &bin.display().to_string(), "--port", "8080", "--env", "HELLO_VERSION=v3", "-t", "hello:v3"])?;

    let out: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["-o", "json", "run", "hello:v3", "--name", "h1", "--memory-mb", "64"])?)?;
    assert_eq!(out["status"], "running");
    let addr = out["address"].as_str().ok_or("no address")?.to_owned();
    let url = format!("http://{addr}/");
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    assert_eq!(get_when_up(&agent, &url)?.trim(), "hello from v3 on h1");

    // The router serves it over HTTPS at h1.localhost, with a certificate from the local CA.
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, s.cli_ok(&["ca", "export"])?)?;
    let routers = std::fs::read_to_string(s.dir.join("router-address"))?;
    let https = routers.lines().find_map(|l| l.strip_prefix("https://")).ok_or("no https listener")?.to_owned();
    let port = https.rsplit(':').next().unwrap_or("0").to_owned();
    let mut routed = String::new();
    for _ in 0..60 {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("h1.localhost:{port}:127.0.0.1"), &format!("https://h1.localhost:{port}/")])
            .output()?;
        routed = String::from_utf8_lossy(&out.stdout).into_owned();
        if routed.starts_with("hello") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(routed.trim(), "hello from v3 on h1");

    // Load while the server is killed with SIGKILL and restarted: the instance keeps serving.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
            while !stop.load(Ordering::Relaxed) {
                match agent.get(&url).call() {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    s.restart()?;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().map_err(|_| "load thread panicked")?;
    assert!(ok.load(Ordering::Relaxed) > 20, "too little load to mean anything");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed while the server restarted");

    // The restarted server re-adopted the instance.
    let list = s.cli_ok(&["instance", "list"])?;
    assert!(list.lines().any(|l| l.contains("h1") && l.contains("running") && l.contains(&addr)), "{list}");
    let logs = s.cli_ok(&["instance", "logs", "h1"])?;
    assert!(logs.contains("stdout hello v3 listening on port 8080") && logs.contains("GET / 200"), "{logs}");

    let stopped = s.cli_ok(&["instance", "stop", "h1", "--grace", "10"])?;
    assert!(stopped.contains("exited (0)"), "{stopped}");
    s.cli_ok(&["instance", "delete", "h1"])?;
    assert!(!s.cli_ok(&["instance", "list"])?.contains("h1"));
    let missing = s.cli(&["instance", "show", "h1"])?;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("instance `h1` does not exist"));
    let bad = s.cli(&["run", "nothere:v1"])?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tag `v1` is not in repository `nothere`"));

    // An image named with another registry's host is pulled from there (docker-registry here).
    let anchor = berth_testkit::DockerRegistry::start()?;
    let copy = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &s.creds(),
        &format!("docker://{}/hello:v3", s.addr),
        &format!("docker://{}/mirror/hello:v3", anchor.addr),
    ])?;
    support::ok(&copy)?;
    let remote = format!("{}/mirror/hello:v3", anchor.addr);
    let out: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "run", &remote, "--name", "h2"])?)?;
    assert!(out["image"].as_str().is_some_and(|i| i.starts_with(&format!("{}/mirror/hello@sha256:", anchor.addr))), "{out}");
    let url = format!("http://{}/", out["address"].as_str().ok_or("no address")?);
    assert_eq!(get_when_up(&agent, &url)?.trim(), "hello from v3 on h2");
    s.cli_ok(&["instance", "delete", "h2"])?;
    Ok(())
}

/// An image made by umoci, whose layer starts with a `/` entry for the root directory (as
/// `umoci insert … /` writes it), runs like any other: pushed with skopeo, run with `berth run`.
#[test]
fn images_made_by_umoci_run() -> Result {
    let s = Server::start_with_runtime("m", 248, "m")?;
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("app"))?;
    std::fs::copy(&bin, src.join("app/hello"))?;
    let layout = tmp.path().join("layout");
    let image = format!("{}:v1", layout.display());
    let umoci = |args: &[&str]| -> Result {
        let out = std::process::Command::new("umoci").args(args).output()?;
        support::ok(&out)
    };
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["insert", "--image", &image, &src.display().to_string(), "/"])?;
    umoci(&["config", "--image", &image, "--config.entrypoint", "/app/hello", "--config.env", "HELLO_VERSION=umoci"])?;
    support::ok(&skopeo_copy(&format!("oci:{image}"), &format!("docker://{}/umoci:v1", s.addr), &s.creds())?)?;

    let out: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "run", "umoci:v1", "--name", "m1", "--port", "8080"])?)?;
    let url = format!("http://{}/", out["address"].as_str().ok_or("no address")?);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    assert_eq!(get_when_up(&agent, &url)?.trim(), "hello from umoci on m1");
    s.cli_ok(&["instance", "delete", "m1"])?;
    Ok(())
}
