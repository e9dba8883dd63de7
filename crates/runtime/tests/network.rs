//! Instance networking with real namespaces (as root): the host reaches each instance, the
//! instances cannot reach each other, addresses survive a reopen, detaching leaves nothing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::embedded::network::{Cidr, Network};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Names unique to this test run, and cleanup of everything with them.
struct Sandbox {
    bridge: String,
    prefix: String,
    cidr: Cidr,
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&self.prefix) {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
        let _ = Command::new("ip").args(["link", "del", "dev", &self.bridge]).status();
        for (family, table) in [
            ("inet", format!("berth_{}", self.bridge)),
            ("ip", format!("berth_nat_{}", self.bridge)),
            ("bridge", format!("berth_br_{}", self.bridge)),
        ] {
            let _ = Command::new("nft").args(["delete", "table", family, &table]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["route", "del", "unreachable", &self.cidr.to_string(), "metric", "4000"]).status();
    }
}

/// A minimal HTTP server (python's http.server looks up its own name first, which hangs in a
/// namespace with no route to a name server).
const SERVER: &str = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],8080))\ns.listen()\nwhile True:\n c,_=s.accept()\n c.recv(4096)\n c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok')\n c.close()\n";

fn curl(ns: Option<&str>, url: &str) -> bool {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-s", "-o", "/dev/null", "--max-time", "1", url]).status().is_ok_and(|s| s.success())
}

#[test]
fn bridge_veth_isolation_and_leases() -> Result {
    if !nix::unistd::geteuid().is_root() {
        return Err("network namespaces need root: this test runs as root (CI does)".into());
    }
    let n = std::process::id() % 200;
    let cidr: Cidr = format!("10.250.{n}.0/24").parse()?;
    let mut sb = Sandbox { bridge: format!("btn{n}"), prefix: format!("btn{n}-"), cidr, dir: tempfile::tempdir()?, servers: vec![] };
    let net = Network::open(&sb.bridge, cidr, &sb.prefix, sb.dir.path())?;
    let a = net.attach("a")?;
    let b = net.attach("b")?;
    assert_ne!(a.address, b.address);
    assert_eq!(net.attach("a")?, a, "attach is idempotent");
    // A server in each namespace.
    for (ns, att) in [("a", &a), ("b", &b)] {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}{ns}", sb.prefix), "python3", "-c", SERVER, &att.address.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        sb.servers.push(child);
    }
    let url_a = format!("http://{}:8080/", a.address);
    // Each server may take a moment to start listening.
    for (name, url) in [("a", url_a.clone()), ("b", format!("http://{}:8080/", b.address))] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !curl(None, &url) {
            if Instant::now() > deadline {
                return Err(format!("the host cannot reach instance {name}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Bridge ports are isolated: b cannot reach a.
    assert!(!curl(Some(&format!("{}b", sb.prefix)), &url_a), "instances reach each other directly");
    // The host side is IPv4 only: no link-local address, so no route per instance.
    for dev in [sb.bridge.as_str(), a.host_veth.as_str(), b.host_veth.as_str()] {
        let v6 = String::from_utf8_lossy(&Command::new("ip").args(["-6", "-o", "addr", "show", "dev", dev]).output()?.stdout).into_owned();
        assert!(v6.trim().is_empty(), "{dev} has IPv6 addresses: {v6}");
    }
    // The bridge keeps its address when a port with a lower one joins (instances keep the
    // gateway's MAC in their ARP caches).
    let mac = |dev: &str| std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).unwrap_or_default();
    let before = mac(&sb.bridge);
    let low = format!("{}lo", sb.bridge);
    let ip = |args: &[&str]| Command::new("ip").args(args).status();
    ip(&["link", "add", &low, "address", "00:00:00:00:00:01", "type", "veth", "peer", "name", &format!("{low}p")])?;
    ip(&["link", "set", &low, "master", &sb.bridge, "up"])?;
    let after = mac(&sb.bridge);
    ip(&["link", "del", &low])?;
    assert_eq!(after, before, "the bridge took a new port's address");
    // Forwarding turned off behind berth's back (as writing net.ipv4.ip_forward does to every
    // interface) is turned on again.
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/forwarding", sb.bridge), "0")?;
    assert_eq!(net.keep_forwarding(), [sb.bridge.clone()]);
    assert_eq!(std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{}/forwarding", sb.bridge))?.trim(), "1");
    assert!(net.keep_forwarding().is_empty());
    // The CIDR never leaves the host.
    let routes = String::from_utf8_lossy(&Command::new("ip").args(["route", "show", "type", "unreachable"]).output()?.stdout).into_owned();
    assert!(routes.contains(&cidr.to_string()), "{routes}");

    // Leases survive a reopen; detaching frees the address and the namespace.
    drop(net);
    let net = Network::open(&sb.bridge, cidr, &sb.prefix, sb.dir.path())?;
    assert_eq!(net.lease("a"), Some(a.address));
    let c = net.attach("c")?;
    assert!(c.address != a.address && c.address != b.address);
    for s in &mut sb.servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    for id in ["a", "b", "c"] {
        net.detach(id)?;
        assert_eq!(net.lease(id), None);
        assert!(!std::path::Path::new("/run/netns").join(format!("{}{id}", sb.prefix)).exists());
    }
    let links = String::from_utf8_lossy(&Command::new("ip").args(["link", "show", "master", &sb.bridge]).output()?.stdout).into_owned();
    assert!(links.trim().is_empty(), "veths left: {links}");
    net.remove_bridge()?;
    Ok(())
}
