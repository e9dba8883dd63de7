//! The story, part one, end to end with real containers (as root): CI pushes `examples/hello`
//! as `<sha>` and `latest` to a repository that is immutable except `latest`; a service on
//! `latest` auto-deploys. Under continuous load through the router: a new version is deployed
//! with zero failed requests; a broken version rolls back with zero failed requests; a killed
//! instance is replaced; pause answers 503 and resume serves again; a rollback to the first
//! revision by its id brings the first version back; a network is attached and detached.

mod support;

use std::time::{Duration, Instant};

use berth_testkit::hello_binary;
use support::*;

fn push(s: &Server, bin: &str, version: &str, healthy: bool, sha: &str) -> Result {
    let healthy = format!("HELLO_HEALTHY={healthy}");
    let version = format!("HELLO_VERSION={version}");
    let (t1, t2) = (format!("web:{sha}"), "web:latest".to_string());
    s.cli_ok(&["image", "build", "--binary", bin, "--port", "8080", "--env", &version, "--env", &healthy, "-t", &t1, "-t", &t2])?;
    Ok(())
}

/// `berth service create <name>` on `web:latest` with an HTTP health check on `/healthz`.
fn create(s: &Server, name: &str, extra: &[&str]) -> Result<std::process::Output> {
    let base = [
        "service",
        "create",
        name,
        "--image",
        "web:latest",
        "--health-check",
        "http",
        "--health-path",
        "/healthz",
        "--memory",
        "128",
        "--wait",
    ];
    s.cli(&[&base[..], extra].concat())
}

fn last_operation(s: &Server) -> Result<serde_json::Value> {
    let ops: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "operations", "web-app"])?)?;
    Ok(ops["operations"][0].clone())
}

#[test]
fn push_deploy_roll_back_replace_pause_resume_and_roll_back_by_id() -> Result {
    let s = Server::start_with_runtime("s", 251, "web-app-")?;
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    let router = s.router_http()?;

    // CI's repository and its first push.
    s.cli_ok(&["repo", "create", "web", "--mutability", "IMMUTABLE_WITH_EXCLUSION", "--exclude", "latest"])?;
    push(&s, &bin, "v1", true, "1111111-20261126")?;
    let created = create(&s, "web-app", &["--health-interval", "1", "--unhealthy-threshold", "2", "--min-size", "2"])?;
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "web-app"])?)?;
    assert_eq!(shown["status"], "RUNNING");
    assert_eq!(shown["current_revision"]["tags"], serde_json::json!(["1111111-20261126", "latest"]));

    // Over HTTPS at its URL, with the exported CA.
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, s.cli_ok(&["ca", "export"])?)?;
    let url = shown["url"].as_str().ok_or("no url")?.to_owned();
    let port = url.rsplit(':').next().unwrap_or("0").to_owned();
    let out = std::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("web-app.localhost:{port}:127.0.0.1"), &format!("{url}/")])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello from v1 on web-app-1-"), "{out:?}");

    let load = Load::start(&router, "web-app.localhost");
    std::thread::sleep(Duration::from_millis(500));

    // 1. A new version: deployed automatically, answers switch, nothing fails.
    let t = Instant::now();
    push(&s, &bin, "v2", true, "2222222-20261126")?;
    wait_until("v2 to answer", Duration::from_secs(60), || Ok(load.since(t).0.last().is_some_and(|b| b.starts_with("hello from v2"))))?;
    wait_until("the deployment to finish", Duration::from_secs(60), || Ok(last_operation(&s)?["status"] == "SUCCEEDED"))?;
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.since(t);
    assert!(failed.is_empty(), "{} requests failed during the deployment: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok.len() > 50, "only {} requests", ok.len());
    assert!(ok.last().is_some_and(|b| b.starts_with("hello from v2")));

    // 2. A broken version: rolled back, v2 keeps answering, nothing fails.
    let t = Instant::now();
    push(&s, &bin, "v3", false, "3333333-20261126")?;
    wait_until("the rollback", Duration::from_secs(90), || {
        let op = last_operation(&s)?;
        Ok(op["target_revision"] == 3 && op["status"] == "ROLLBACK_SUCCEEDED")
    })?;
    let op = last_operation(&s)?;
    assert!(op.to_string().contains("GET /healthz answered 503"), "{op}");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.since(t);
    assert!(failed.is_empty(), "{} requests failed during the rollback: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok.iter().all(|b| b.starts_with("hello from v2")), "only v2 answered");

    // 3. kill -9 of an instance: it is replaced.
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "web-app"])?)?;
    let victim = shown["instances"][0]["id"].as_str().ok_or("no instance")?.to_owned();
    let pid = std::fs::read_to_string(s.dir.join("runtime/instances").join(&victim).join("container.pid"))?;
    let t = Instant::now();
    std::process::Command::new("kill").args(["-9", pid.trim()]).status()?;
    wait_until("a replacement", Duration::from_secs(60), || {
        let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "web-app"])?)?;
        let ready: Vec<&str> = shown["instances"]
            .as_array()
            .map(|a| a.iter().filter(|i| i["state"] == "ready").filter_map(|i| i["id"].as_str()).collect())
            .unwrap_or_default();
        Ok(ready.len() == 2 && !ready.contains(&victim.as_str()))
    })?;
    let events = s.cli_ok(&["service", "events", "web-app"])?;
    assert!(events.contains("instance_replaced") && events.contains(&victim), "{events}");
    let (_, failed) = load.since(t);
    eprintln!("requests failed around the kill -9 of one of two instances: {}", failed.len());
    load.finish();

    // 4. Pause: 503 with a clear message; resume: it serves again.
    s.cli_ok(&["service", "pause", "web-app", "--wait"])?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    match agent.get(&format!("http://{router}/")).set("Host", "web-app.localhost").call() {
        Err(ureq::Error::Status(503, r)) => {
            let body = r.into_string()?;
            assert!(body.contains("is paused"), "{body}");
        }
        other => return Err(format!("expected 503 while paused, got {other:?}").into()),
    }
    s.cli_ok(&["service", "resume", "web-app", "--wait"])?;
    let body = agent.get(&format!("http://{router}/")).set("Host", "web-app.localhost").call()?.into_string()?;
    assert!(body.starts_with("hello from v2"), "{body}");

    // 5. Roll back to the first revision by its id: v1 answers.
    s.cli_ok(&["service", "rollback", "web-app", "web-app-0001", "--wait"])?;
    let body = agent.get(&format!("http://{router}/")).set("Host", "web-app.localhost").call()?.into_string()?;
    assert!(body.starts_with("hello from v1"), "{body}");
    let revisions = s.cli_ok(&["service", "revisions", "web-app"])?;
    assert!(
        revisions.lines().any(|l| l.contains("web-app-0001") && l.contains("serving") && l.contains("1111111-20261126")),
        "{revisions}"
    );

    // An operation's log, by its id, as a table.
    let last = last_operation(&s)?;
    let shown = s.cli_ok(&["service", "operation", last["id"].as_str().ok_or("no id")?])?;
    assert!(shown.contains("rolling back to revision web-app-0001") && shown.contains("SUCCEEDED"), "{shown}");

    // 6. A network: created, checked against the host, named by the service, kept while used.
    let cidr = "10.251.201.0/24"; // beside the sandbox's 10.251.<0–199>.0/24
    let made = s.cli_ok(&[
        "network",
        "create",
        "db",
        "--cidr",
        cidr,
        "--host-endpoint",
        "mysql=127.0.0.1:3306",
        "--host",
        "mariadb=10.251.201.10",
    ])?;
    assert!(made.contains("mysql=127.0.0.1:3306") && made.contains("mariadb=10.251.201.10"), "{made}");
    let refused = s.cli(&["network", "create", "lan", "--cidr", "10.251.201.128/25", "--attach-interface", "nosuchif0"])?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("overlaps network `db`") && said.contains("no interface `nosuchif0`"), "{said}");
    s.cli_ok(&["service", "update", "web-app", "--network", "db", "--egress", "networks", "--allow-from", "other-app", "--wait"])?;
    let shown = s.cli_ok(&["service", "show", "web-app"])?;
    assert!(shown.lines().any(|l| l.starts_with("NETWORKS:") && l.contains("db")), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("VISIBILITY:") && l.contains("public, from other-app")), "{shown}");
    let refused = s.cli(&["network", "delete", "db"])?;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use by `web-app`"), "{refused:?}");
    assert!(s.cli_ok(&["network", "list"])?.contains("web-app"));
    s.cli_ok(&["service", "update", "web-app", "--no-network", "db", "--egress", "public", "--wait"])?;
    s.cli_ok(&["network", "delete", "db"])?;
    assert!(!s.cli_ok(&["network", "list"])?.contains(cidr));

    // Deleting frees every instance; the service's events stay readable.
    s.cli_ok(&["service", "delete", "web-app", "--wait"])?;
    let left = s.cli_ok(&["instance", "list"])?;
    assert!(!left.contains("web-app-"), "{left}");
    let events = s.cli_ok(&["service", "events", "web-app"])?;
    assert!(events.contains("instance_replaced"), "{events}");
    // So do the logs of its instances.
    let logs = s.cli_ok(&["service", "logs", "web-app"])?;
    assert!(logs.contains("listening on port 8080"), "{logs}");
    Ok(())
}

#[test]
fn a_server_killed_during_a_deployment_finishes_it_after_the_restart() -> Result {
    let mut s = Server::start_with_runtime("k", 250, "crash-app-")?;
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["repo", "create", "web"])?;
    push(&s, &bin, "v1", true, "aaaaaaa")?;
    let created = create(&s, "crash-app", &[])?;
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    // A push starts an automatic deployment; the server is killed while it runs.
    push(&s, &bin, "v2", true, "bbbbbbb")?;
    std::thread::sleep(Duration::from_millis(30));
    s.restart()?;

    // After the restart the deployment is finished or started over (or, had it not started,
    // auto-deploy catches the push up): v2 serves, and only its instances run.
    let router = s.router_http()?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    wait_until("v2 to serve after the restart", Duration::from_secs(60), || {
        let body =
            agent.get(&format!("http://{router}/")).set("Host", "crash-app.localhost").call().ok().and_then(|r| r.into_string().ok());
        Ok(body.is_some_and(|b| b.starts_with("hello from v2")))
    })?;
    wait_until("every operation to end", Duration::from_secs(60), || {
        let ops: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "operations", "crash-app"])?)?;
        Ok(ops["operations"]
            .as_array()
            .is_some_and(|a| a.iter().all(|o| !matches!(o["status"].as_str(), Some("PENDING" | "IN_PROGRESS" | "ROLLBACK_IN_PROGRESS")))))
    })?;
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "crash-app"])?)?;
    assert_eq!(shown["status"], "RUNNING");
    let serving = shown["current_revision"]["number"].as_u64().ok_or("no revision")?;
    wait_until("the other revision's instances to be gone", Duration::from_secs(30), || {
        let list = s.cli_ok(&["instance", "list"])?;
        Ok(list.lines().filter(|l| l.contains("crash-app-")).all(|l| l.contains(&format!("crash-app-{serving}-"))))
    })?;
    s.cli_ok(&["service", "delete", "crash-app", "--wait"])?;
    Ok(())
}

#[test]
fn berth_up_leaves_the_demo_service_running() -> Result {
    // `berth up` on a data directory of its own, with a runtime sandbox of its own.
    let dir = tempfile::tempdir()?;
    let (env, _sandbox) = runtime_sandbox("u", 249, "hello-", dir.path())?;
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    let home = dir.path().join("home");
    cmd.envs(env).env("BERTH_ROUTER_HTTP", "127.0.0.1:0").env("BERTH_ROUTER_HTTPS", "127.0.0.1:0");
    cmd.env("HOME", &home).env_remove("XDG_CONFIG_HOME");
    let out = dir.path().join("up.out");
    let child = cmd.stdout(std::fs::File::create(&out)?).stderr(std::process::Stdio::null()).spawn()?;
    let up = berth_testkit::BerthProcess { child, addr: String::new(), token: String::new() };
    wait_until("the demo service", Duration::from_secs(90), || {
        Ok(std::fs::read_to_string(&out)?.contains("The demo service `hello` is RUNNING"))
    })?;
    let text = std::fs::read_to_string(&out)?;
    let url =
        text.lines().find_map(|l| l.split(": ").nth(1).filter(|u| u.starts_with("https://hello.localhost:"))).ok_or("no URL")?.to_owned();
    assert!(text.contains("berth ca export") && text.contains("berth service show hello"), "{text}");
    let port = url.rsplit(':').next().unwrap_or("0").to_owned();
    let ca = dir.path().join("tls/ca.pem");
    let curl = std::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("hello.localhost:{port}:127.0.0.1"), &format!("{url}/")])
        .output()?;
    assert!(String::from_utf8_lossy(&curl.stdout).starts_with("hello from v1"), "{curl:?}");
    // `berth up` saved a login: the CLI works from any directory.
    assert!(home.join(".config/berth/login.json").exists(), "{text}");
    let anywhere = std::process::Command::new(BIN)
        .args(["service", "show", "hello"])
        .current_dir("/")
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .output()?;
    assert!(String::from_utf8_lossy(&anywhere.stdout).contains("RUNNING"), "{}", String::from_utf8_lossy(&anywhere.stderr));
    // Remove the demo's instances through the API before the server goes.
    let del = std::process::Command::new(BIN).arg("--data-dir").arg(dir.path()).args(["service", "delete", "hello", "--wait"]).output()?;
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    drop(up);
    Ok(())
}
