//! Private networks with real containers (as root). The test makes a private LAN inside this
//! machine: a network namespace holding a TCP server, joined to a host bridge that a berth
//! network attaches to. A service attached to the network (egress `networks`) reaches the LAN
//! and its host endpoint; what it may not reach (the host's other ports, other instances, the
//! metadata address, other private ranges, the internet) is refused at once and counted per
//! destination class; a service on no network reaches neither the LAN nor the endpoint. Every
//! address tried lies in a namespace the test made, so nothing leaves the machine even if a rule
//! were wrong (and a wrong rule shows: those namespaces accept connections).

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};

use berth_testkit::hello_binary;
use support::*;

/// An HTTP server on `addr:port` that answers each request after 4 s.
const SLOW_HTTP: &str = "import socket,sys,time,threading\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen()\ndef answer(c):\n c.recv(4096)\n time.sleep(4)\n c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 12\\r\\nConnection: close\\r\\n\\r\\nslow answer\\n')\n c.close()\nwhile True:\n c,_=s.accept()\n threading.Thread(target=answer,args=(c,)).start()\n";

/// A UDP receiver on `addr:port` that appends what it receives to a file.
const RECEIVER: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],int(sys.argv[2])))\nf=open(sys.argv[3],'ab',0)\nwhile True:\n d,_=s.recvfrom(2048)\n f.write(d+b'\\n')\n";

/// Accepts and closes connections on `listener` until the test ends.
fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
}

/// What `/connect/<target>` of `service` answered: `connected`, or the error.
fn connect(agent: &ureq::Agent, router: &str, service: &str, target: &str) -> Result<String> {
    let url = format!("http://{router}/connect/{target}");
    Ok(match agent.get(&url).set("Host", &format!("{service}.localhost")).call() {
        Ok(r) => r.into_string()?.trim().to_owned(),
        Err(ureq::Error::Status(502, r)) => format!("refused: {}", r.into_string()?.trim()),
        Err(e) => return Err(e.into()),
    })
}

/// A connection refused by the rules: reset at once, not timed out (every target of these tests
/// has a listener, so a reset is the rules').
fn refused_at_once(answer: &str) -> bool {
    answer.starts_with("refused") && answer.contains("Connection refused")
}

#[test]
fn a_service_reaches_its_lan_and_endpoint_and_nothing_else() -> Result {
    let mut s = Server::start_with_runtime("w", 241, "")?;
    let n = std::process::id() % 200;
    // The private LAN the network attaches, and, behind another bridge the network does not
    // attach, the far side: a private range, the metadata address and an "internet" address
    // (documentation ranges), all in a namespace of the test's own.
    let mut lans = Lans::default();
    let lan_bridge = format!("bnl{n}");
    lans.add(&format!("bnl{n}"), &lan_bridge, &["10.241.250.1/24"], &[], &["10.241.250.10/24"], Some(3306))?;
    lans.add(
        &format!("bnf{n}"),
        &format!("bnf{n}"),
        &["10.241.251.1/24", "203.0.113.1/24"],
        &["169.254.169.254/32"],
        &["10.241.251.7/24", "203.0.113.9/24", "169.254.169.254/32"],
        Some(7000),
    )?;
    let gateway = format!("10.241.{n}.1");
    // A service on the host, published as a host endpoint; another port of the host, not.
    let endpoint = TcpListener::bind("127.0.0.1:0")?;
    let endpoint_port = endpoint.local_addr()?.port();
    serve(endpoint);
    let private_port = TcpListener::bind("0.0.0.0:0")?;
    let host_port = private_port.local_addr()?.port();
    serve(private_port);

    // Refused, each reason named: a bridge with no host address in the CIDR, an endpoint that is
    // not on this host.
    let refused = s.cli(&[
        "network",
        "create",
        "far",
        "--cidr",
        "10.241.252.0/24",
        "--attach-bridge",
        &format!("bnf{n}"),
        "--host-endpoint",
        "pg=10.241.250.10:5432",
    ])?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("the host has no address in 10.241.252.0/24") && said.contains("10.241.250.10 is not an address of this host"),
        "{said}"
    );

    let made = s.cli(&[
        "network",
        "create",
        "lan",
        "--cidr",
        "10.241.250.0/24",
        "--attach-bridge",
        &lan_bridge,
        "--host-endpoint",
        &format!("db=127.0.0.1:{endpoint_port}"),
    ])?;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "-t", "hello:v1"])?;
    for (name, extra) in [("inside-app", &["--network", "lan", "--egress", "networks"][..]), ("outside-app", &[][..])] {
        let base = ["service", "create", name, "--image", "hello:v1", "--memory", "128", "--wait"];
        let out = s.cli(&[&base[..], extra].concat())?;
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let router = s.router_http()?;
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(20)).build();
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "outside-app"])?)?;
    let other_instance = shown["instances"][0]["address"].as_str().ok_or("no address")?.to_owned();

    // Allowed: the LAN through the attached bridge, the host endpoint on the gateway.
    let lan_db = "10.241.250.10:3306";
    let endpoint = format!("{gateway}:{endpoint_port}");
    assert_eq!(connect(&agent, &router, "inside-app", lan_db)?, "connected");
    assert_eq!(connect(&agent, &router, "inside-app", &endpoint)?, "connected");
    // Denied, at once: each class once.
    let denied_targets = [
        ("host", format!("{gateway}:{host_port}")),
        ("instances", other_instance),
        ("metadata", "169.254.169.254:7000".to_owned()),
        ("private", "10.241.251.7:7000".to_owned()),
        ("internet", "203.0.113.9:7000".to_owned()),
    ];
    for (class, target) in &denied_targets {
        let got = connect(&agent, &router, "inside-app", target)?;
        assert!(refused_at_once(&got), "inside-app and {class} at {target}: {got}");
    }
    // No instance sends with another's address: a one-off instance (on no network) sends UDP to
    // the LAN from inside-app's address, and nothing arrives. The host's own datagram does, so the
    // receiver works.
    let received = tmp.path().join("udp.log");
    let receiver = Command::new("ip")
        .args(["netns", "exec", &format!("bnl{n}"), "python3", "-c", RECEIVER, "10.241.250.10", "5353"])
        .arg(&received)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    lans.servers.push(receiver);
    let probe_bin = berth_testkit::probe_binary(tmp.path())?;
    s.cli_ok(&["image", "build", "--binary", &probe_bin.display().to_string(), "-t", "probe:v1"])?;
    let inside: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "inside-app"])?)?;
    let inside_ip = inside["instances"][0]["address"].as_str().and_then(|a| a.split(':').next()).ok_or("no address")?.to_owned();
    wait_until("the LAN's UDP receiver", std::time::Duration::from_secs(10), || {
        std::net::UdpSocket::bind("10.241.250.1:0")?.send_to(b"from the host", "10.241.250.10:5353")?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        Ok(std::fs::read_to_string(&received).is_ok_and(|r| r.contains("from the host")))
    })?;
    let said = probe(&s, "spoofer", &format!("spoof {inside_ip} 10.241.250.10:5353"))?;
    assert_eq!(said.trim(), "probe spoof ok", "the probe could not send at all");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let got = std::fs::read_to_string(&received)?;
    assert!(!got.contains("spoofed"), "a datagram with another instance's address reached the LAN: {got}");

    // A service on no network reaches neither the LAN nor the endpoint.
    for target in [lan_db, endpoint.as_str()] {
        let got = connect(&agent, &router, "outside-app", target)?;
        assert!(refused_at_once(&got), "outside-app and {target}: {got}");
    }

    // Counted per service and destination class: in `service show` and in /metrics.
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "inside-app"])?)?;
    for (class, _) in &denied_targets {
        assert!(shown["denied"][class].as_u64().is_some_and(|c| c >= 1), "{class} not counted: {}", shown["denied"]);
    }
    let outside: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "outside-app"])?)?;
    assert!(outside["denied"]["private"].as_u64().is_some_and(|c| c >= 1), "{}", outside["denied"]);
    assert!(outside["denied"]["host"].as_u64().is_some_and(|c| c >= 1), "{}", outside["denied"]);
    let metrics = ureq::get(&s.url("/metrics")).set("Authorization", &format!("Bearer {}", s.token)).call()?.into_string()?;
    assert!(metrics.contains(r#"berth_network_denied_total{service="inside-app",destination="metadata"}"#), "{metrics}");
    eprintln!("denied: inside-app {} outside-app {}", shown["denied"], outside["denied"]);

    // A connection from an instance to its LAN outlives a kill -9 of the server and the reload
    // of the rules by the next one: a slow answer started before comes back after.
    let slow = Command::new("ip")
        .args(["netns", "exec", &format!("bnl{n}"), "python3", "-c", SLOW_HTTP, "10.241.250.10", "7001"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    lans.servers.push(slow);
    berth_testkit::wait_for_port("10.241.250.10:7001", std::time::Duration::from_secs(10))?;
    let long_call = {
        let (agent, router) = (agent.clone(), router.clone());
        std::thread::spawn(move || call(&agent, &router, "inside-app", "10.241.250.10:7001/"))
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    s.kill9()?;
    s.restart()?;
    let got = long_call.join().map_err(|_| "the long call panicked")??;
    assert!(got.starts_with("HTTP/1.1 200 OK") && got.contains("slow answer"), "{got}");

    // Detached, the LAN is refused too; the rules follow the instances.
    s.cli_ok(&["service", "delete", "inside-app", "--wait"])?;
    s.cli_ok(&["service", "delete", "outside-app", "--wait"])?;
    s.cli_ok(&["network", "delete", "lan"])?;
    Ok(())
}

/// What `/call/<target>` of `service` answered: the status line and body the app got, or
/// `failed: <error>`.
fn call(agent: &ureq::Agent, router: &str, service: &str, target: &str) -> Result<String> {
    let url = format!("http://{router}/call/{target}");
    Ok(match agent.get(&url).set("Host", &format!("{service}.localhost")).call() {
        Ok(r) => r.into_string()?.trim().to_owned(),
        Err(ureq::Error::Status(502, r)) => format!("failed: {}", r.into_string()?.trim()),
        Err(e) => return Err(e.into()),
    })
}

#[test]
fn private_services_are_called_by_name_from_the_services_allowed() -> Result {
    let s = Server::start_with_runtime("v", 240, "")?;
    let n = std::process::id() % 200;
    let gateway = format!("10.240.{n}.1");
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "--env", "HELLO_VERSION=api-v1", "-t", "hello:api"])?;
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "-t", "hello:v1"])?;
    let services: [(&str, &[&str]); 3] = [
        ("api-app", &["--image", "hello:api", "--visibility", "private", "--allow-from", "web-app", "--min-size", "2"]),
        ("web-app", &["--image", "hello:v1"]),
        ("other-app", &["--image", "hello:v1", "--egress", "none"]),
    ];
    for (name, extra) in services {
        let base = ["service", "create", name, "--memory", "128", "--health-check", "http", "--health-path", "/healthz", "--wait"];
        let out = s.cli(&[&base[..], extra].concat())?;
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let router = s.router_http()?;
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build();

    // Allowed: by name, through berth's DNS and the router.
    let got = call(&agent, &router, "web-app", "api-app.internal/")?;
    assert!(got.starts_with("HTTP/1.1 200 OK") && got.contains("hello from api-v1"), "{got}");
    // A public service is called the same way, by every service (`none` egress keeps the router).
    let got = call(&agent, &router, "other-app", "web-app.internal/")?;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    // Not allowed: no such name, and refused by the router even at its address.
    let got = call(&agent, &router, "other-app", "api-app.internal/")?;
    assert!(got.contains("NXDOMAIN"), "{got}");
    let got = call(&agent, &router, "other-app", &format!("api-app.internal@{gateway}/"))?;
    assert!(got.starts_with("HTTP/1.1 403") && got.contains("`other-app` may not call `api-app`"), "{got}");
    // Private: not on the public listeners.
    match agent.get(&format!("http://{router}/")).set("Host", "api-app.localhost").call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => return Err(format!("a private service on the public listener: {other:?}").into()),
    }
    // A one-off instance (`berth run`) calls public services by name too.
    s.cli_ok(&["run", "hello:v1", "--name", "oneoff"])?;
    wait_until("the one-off instance calling web-app", std::time::Duration::from_secs(20), || {
        Ok(call(&agent, &router, "oneoff", "web-app.internal/").is_ok_and(|got| got.starts_with("HTTP/1.1 200 OK")))
    })?;
    // A name that is not berth's, for a service whose egress is `none`: refused.
    let got = call(&agent, &router, "other-app", "example.org/")?;
    assert!(got.contains("REFUSED"), "{got}");

    // Calls go on while api-app is redeployed: none fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let (stop, agent, router) = (stop.clone(), agent.clone(), router.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match call(&agent, &router, "web-app", "api-app.internal/") {
                    Ok(got) if got.starts_with("HTTP/1.1 200 OK") => ok += 1,
                    Ok(got) => failed.push(got),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    s.cli_ok(&["service", "update", "api-app", "--env", "HELLO_VERSION=api-v2", "--wait"])?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = caller.join().map_err(|_| "the caller panicked")?;
    eprintln!("service-to-service calls during a redeploy: {ok} succeeded, {} failed", failed.len());
    assert!(failed.is_empty(), "{} of {} calls failed: {:?}", failed.len(), ok as usize + failed.len(), &failed[..failed.len().min(3)]);
    assert!(ok > 10, "only {ok} calls");
    let got = call(&agent, &router, "web-app", "api-app.internal/")?;
    assert!(got.contains("hello from api-v2"), "{got}");
    Ok(())
}

/// The story: MariaDB on a private LAN, `guestbook` attached to its network with egress
/// `networks` reaches it by name, answers through the router with rows from the database; a
/// service without the network cannot connect (refused at once, counted) and never becomes
/// ready; a kill -9 of the server leaves the data plane as it was.
#[test]
fn guestbook_reaches_mariadb_on_a_private_lan() -> Result {
    let mut s = Server::start_with_runtime("g", 239, "")?;
    let n = std::process::id() % 200;
    let mut lans = Lans::default();
    let bridge = format!("bnd{n}");
    lans.add(&format!("bnd{n}"), &bridge, &["10.239.250.1/24"], &[], &["10.239.250.10/24"], None)?;
    let db = berth_testkit::MariaDb::start(Some(&format!("bnd{n}")), "10.239.250.10", 3306, "s3cret-pw")?;
    let bin = berth_testkit::guestbook_binary()?;
    s.cli_ok(&["image", "build", "--binary", &bin.display().to_string(), "--with-libs", "--port", "8080", "-t", "guestbook:v1"])?;
    s.cli_ok(&["network", "create", "db", "--cidr", "10.239.250.0/24", "--attach-bridge", &bridge, "--host", "mariadb=10.239.250.10"])?;
    // The credentials come from a secret, as env vars resolved when each instance starts.
    let creds = s.dir.join("creds.json");
    std::fs::write(&creds, r#"{"user":"gb","password":"s3cret-pw"}"#)?;
    s.cli_ok(&["secret", "create", "db-creds", "--from-file", &creds.display().to_string()])?;
    std::fs::remove_file(&creds)?;
    let env =
        ["--env", "DB_HOST=mariadb.db.internal", "--secret-env", "DB_USER=db-creds#user", "--secret-env", "DB_PASSWORD=db-creds#password"];
    let base = ["--image", "guestbook:v1", "--memory", "128", "--health-check", "http", "--health-path", "/healthz", "--wait"];
    let created = s.cli(&[&["service", "create", "guestbook", "--network", "db", "--egress", "networks"][..], &env, &base].concat())?;
    if !created.status.success() {
        let logs = s.cli(&["service", "logs", "guestbook"])?;
        return Err(format!("{}\nits logs:\n{}", String::from_utf8_lossy(&created.stderr), String::from_utf8_lossy(&logs.stdout)).into());
    }

    // Entries go through the router into MariaDB on the LAN, and come back.
    let router = s.router_http()?;
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(20)).build();
    let url = format!("http://{router}/entries");
    let posted = agent
        .post(&url)
        .set("Host", "guestbook.localhost")
        .send_json(serde_json::json!({"name": "ada", "message": "hello from the LAN"}))?;
    assert_eq!(posted.status(), 201);
    let page = agent.get(&format!("http://{router}/")).set("Host", "guestbook.localhost").call()?.into_string()?;
    assert!(page.contains("ada: hello from the LAN"), "{page}");
    assert_eq!(db.sql("SELECT name FROM guestbook.entries")?.trim(), "ada", "the row is in MariaDB");
    let shown = s.cli_ok(&["service", "show", "guestbook"])?;
    assert!(shown.contains("DB_PASSWORD=db-creds#password@") && !shown.contains("s3cret-pw"), "{shown}");
    let used = s.cli_ok(&["secret", "describe", "db-creds"])?;
    assert!(used.contains("guestbook-0001 env") && used.contains("(1 instances)"), "{used}");

    // New credentials (another user with the same grants) put as the secret's CURRENT: the
    // service is deployed again by itself and serves with them.
    db.sql("CREATE USER 'gb_clone'@'%' IDENTIFIED BY 'second-pw'; GRANT ALL ON guestbook.* TO 'gb_clone'@'%'; FLUSH PRIVILEGES;")?;
    std::fs::write(&creds, r#"{"user":"gb_clone","password":"second-pw"}"#)?;
    s.cli_ok(&["secret", "put", "db-creds", "--from-file", &creds.display().to_string()])?;
    std::fs::remove_file(&creds)?;
    wait_until("guestbook deployed with the new credentials", std::time::Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "guestbook"])?)?;
        Ok(v["current_revision"]["number"] == 2 && v["operation_in_progress"].is_null())
    })?;
    // The old user can go: every instance now connects as the new one.
    db.sql("DROP USER 'gb'@'%';")?;
    let posted =
        agent.post(&url).set("Host", "guestbook.localhost").send_json(serde_json::json!({"name": "cy", "message": "as the clone"}))?;
    assert_eq!(posted.status(), 201);

    // Without the network: the name is not its to resolve, and the address itself is refused at
    // once and counted; the service never becomes ready.
    let by_address = ["--env", "DB_HOST=10.239.250.10", "--env", "DB_USER=gb", "--env", "DB_PASSWORD=s3cret-pw"];
    let without = s.cli(&[&["service", "create", "lonely-book"][..], &by_address, &base].concat())?;
    assert!(!without.status.success(), "a guestbook without its network became ready");
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "lonely-book"])?)?;
    assert!(shown["denied"]["private"].as_u64().is_some_and(|c| c >= 1), "{}", shown["denied"]);
    let logs = s.cli_ok(&["service", "logs", "lonely-book"])?;
    assert!(logs.contains("connecting to the database"), "{logs}");

    // A kill -9 of the server: rules, DNS and the router stay; the app keeps its database; the
    // restarted server carries on.
    s.kill9()?;
    let page = agent.get(&format!("http://{router}/")).set("Host", "guestbook.localhost").call()?.into_string()?;
    assert!(page.contains("ada: hello from the LAN"), "{page}");
    s.restart()?;
    let posted = agent
        .post(&url)
        .set("Host", "guestbook.localhost")
        .send_json(serde_json::json!({"name": "bob", "message": "after the restart"}))?;
    assert_eq!(posted.status(), 201);
    assert_eq!(db.sql("SELECT COUNT(*) FROM guestbook.entries")?.trim(), "3");

    // The password as a file from its own secret (guestbook reads DB_PASSWORD_FILE for every new
    // connection): changed in the database and then in the secret, the file follows in place —
    // the same instance serves with the new password, with no new revision.
    std::fs::write(&creds, "second-pw")?;
    s.cli_ok(&["secret", "create", "gb-password", "--from-file", &creds.display().to_string()])?;
    let file_env = ["--env", "DB_HOST=mariadb.db.internal", "--env", "DB_PASSWORD_FILE=/run/secrets/db-password"];
    let file = ["--secret-file", "/run/secrets/db-password=gb-password", "--wait"];
    s.cli_ok(&[&["service", "update", "guestbook"][..], &file_env, &file].concat())?;
    let serving = |s: &Server| -> Result<(u64, String)> {
        let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "guestbook"])?)?;
        Ok((v["current_revision"]["number"].as_u64().unwrap_or(0), v["instances"][0]["id"].as_str().unwrap_or("").to_owned()))
    };
    let before = serving(&s)?;
    db.sql("ALTER USER 'gb_clone'@'%' IDENTIFIED BY 'third-pw'; FLUSH PRIVILEGES;")?;
    std::fs::write(&creds, "third-pw")?;
    s.cli_ok(&["secret", "put", "gb-password", "--from-file", &creds.display().to_string()])?;
    std::fs::remove_file(&creds)?;
    let put_at = std::time::Instant::now();
    wait_until("guestbook to connect with the new password", std::time::Duration::from_secs(10), || {
        let r =
            agent.post(&url).set("Host", "guestbook.localhost").send_json(serde_json::json!({"name": "di", "message": "from the file"}));
        Ok(matches!(r, Ok(ref ok) if ok.status() == 201))
    })?;
    eprintln!("the file followed the secret: the first request with the new password succeeded {:?} after the put", put_at.elapsed());
    assert_eq!(serving(&s)?, before, "the file was followed by a new revision or instance, not in place");
    Ok(())
}

/// Every service × every destination: LANs and host endpoints of two networks, a port of the
/// host, the metadata address, another instance. Every allowed pair connects, every other is
/// refused at once; the matrix and the counts are printed.
#[test]
fn isolation_matrix() -> Result {
    let s = Server::start_with_runtime("m", 238, "")?;
    let n = std::process::id() % 200;
    let gateway = format!("10.238.{n}.1");
    let mut lans = Lans::default();
    lans.add(&format!("bma{n}"), &format!("bma{n}"), &["10.238.250.1/24"], &[], &["10.238.250.10/24"], Some(7000))?;
    lans.add(&format!("bmb{n}"), &format!("bmb{n}"), &["10.238.251.1/24"], &[], &["10.238.251.10/24"], Some(7000))?;
    lans.add(
        &format!("bmm{n}"),
        &format!("bmm{n}"),
        &["10.238.252.1/24"],
        &["169.254.169.254/32"],
        &["10.238.252.10/24", "169.254.169.254/32"],
        Some(7000),
    )?;
    let listener = |addr: &str| -> Result<u16> {
        let l = TcpListener::bind(addr)?;
        let port = l.local_addr()?.port();
        serve(l);
        Ok(port)
    };
    let (ea, eb, host_port) = (listener("127.0.0.1:0")?, listener("127.0.0.1:0")?, listener("0.0.0.0:0")?);
    for (net, cidr, bridge, port) in
        [("neta", "10.238.250.0/24", format!("bma{n}"), ea), ("netb", "10.238.251.0/24", format!("bmb{n}"), eb)]
    {
        let endpoint = format!("ep=127.0.0.1:{port}");
        s.cli_ok(&["network", "create", net, "--cidr", cidr, "--attach-bridge", &bridge, "--host-endpoint", &endpoint])?;
    }
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "-t", "hello:v1"])?;
    let services: [(&str, &[&str]); 4] = [
        ("one-net", &["--network", "neta", "--egress", "networks"]),
        ("two-nets", &["--network", "neta", "--network", "netb", "--egress", "networks"]),
        ("public-app", &[]),
        ("sealed-app", &["--egress", "none"]),
    ];
    for (name, extra) in services {
        let base = ["service", "create", name, "--image", "hello:v1", "--memory", "128", "--wait"];
        let out = s.cli(&[&base[..], extra].concat())?;
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Another service's instance: one-net's, and two-nets' for one-net.
    let instance_of = |name: &str| -> Result<String> {
        let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", name])?)?;
        Ok(shown["instances"][0]["address"].as_str().ok_or("no address")?.to_owned())
    };
    let (one_net, two_nets) = (instance_of("one-net")?, instance_of("two-nets")?);
    let targets: [(&str, String); 7] = [
        ("lan-a", "10.238.250.10:7000".into()),
        ("lan-b", "10.238.251.10:7000".into()),
        ("endpoint-a", format!("{gateway}:{ea}")),
        ("endpoint-b", format!("{gateway}:{eb}")),
        ("host-port", format!("{gateway}:{host_port}")),
        ("metadata", "169.254.169.254:7000".into()),
        ("instance", String::new()),
    ];
    let allowed = |service: &str, target: &str| match service {
        "one-net" => matches!(target, "lan-a" | "endpoint-a"),
        "two-nets" => matches!(target, "lan-a" | "lan-b" | "endpoint-a" | "endpoint-b"),
        _ => false,
    };
    let router = s.router_http()?;
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(20)).build();
    let (mut allowed_ok, mut denied_ok, mut wrong) = (0, 0, Vec::new());
    let mut table = format!("{:<12}", "");
    for (t, _) in &targets {
        table.push_str(&format!("{t:>12}"));
    }
    table.push('\n');
    for (service, _) in services {
        table.push_str(&format!("{service:<12}"));
        for (target, addr) in &targets {
            let addr = match (*target, service) {
                ("instance", "one-net") => two_nets.as_str(),
                ("instance", _) => one_net.as_str(),
                _ => addr.as_str(),
            };
            let got = connect(&agent, &router, service, addr)?;
            let (connected, refused) = (got == "connected", refused_at_once(&got));
            table.push_str(&format!(
                "{:>12}",
                if connected {
                    "connects"
                } else if refused {
                    "refused"
                } else {
                    "OTHER"
                }
            ));
            match (allowed(service, target), connected, refused) {
                (true, true, _) => allowed_ok += 1,
                (false, _, true) => denied_ok += 1,
                _ => wrong.push(format!("{service} → {target}: {got}")),
            }
        }
        table.push('\n');
    }
    let counts: Vec<String> = services
        .iter()
        .map(|(name, _)| {
            let v: serde_json::Value =
                s.cli_ok(&["-o", "json", "service", "show", name]).ok().and_then(|o| serde_json::from_str(&o).ok()).unwrap_or_default();
            format!("{name}: {}", v["denied"])
        })
        .collect();
    eprintln!(
        "{table}allowed pairs that connected: {allowed_ok}; denied pairs refused: {denied_ok}\ncounted refusals:\n  {}",
        counts.join("\n  ")
    );
    assert!(wrong.is_empty(), "pairs not as allowed:\n{}\n{table}", wrong.join("\n"));
    assert_eq!((allowed_ok, denied_ok), (6, 22));
    Ok(())
}
