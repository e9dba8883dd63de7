//! Instance networking with real namespaces (as root): the host reaches each instance, the
//! instances cannot reach each other, addresses survive a reopen, detaching leaves nothing,
//! and reloading the rules neither refuses a connection nor lets a forged packet through.

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

impl Sandbox {
    /// A sandbox named `<tag><n>` with its instances in `10.<octet>.<n>.0/24`, `n` from the
    /// process id; an error unless run as root.
    fn new(tag: &str, octet: u8) -> Result<Sandbox> {
        if !nix::unistd::geteuid().is_root() {
            return Err("network namespaces need root: this test runs as root (CI does)".into());
        }
        let n = std::process::id() % 200;
        Ok(Sandbox {
            bridge: format!("{tag}{n}"),
            prefix: format!("{tag}{n}-"),
            cidr: format!("10.{octet}.{n}.0/24").parse()?,
            dir: tempfile::tempdir()?,
            servers: vec![],
        })
    }
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
    let mut sb = Sandbox::new("btn", 250)?;
    let cidr = sb.cidr;
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

/// Counts connections from a namespace to `argv[1]:argv[2]` for `argv[3]` seconds, each opened
/// and closed at once: `ok refused other`.
const CONNECTOR: &str = "import socket,sys,time\nok=refused=other=0\nend=time.time()+float(sys.argv[3])\nwhile time.time()<end:\n s=socket.socket()\n s.settimeout(3)\n try:\n  s.connect((sys.argv[1],int(sys.argv[2])))\n  ok+=1\n except ConnectionRefusedError:\n  refused+=1\n except OSError:\n  other+=1\n s.close()\nprint(ok,refused,other)\n";

/// A server that accepts connections and closes them, as fast as they come.
const ACCEPTOR: &str = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen(4096)\nwhile True:\n c,_=s.accept()\n c.close()\n";

/// Sends UDP datagrams to `argv[2]:argv[3]` for `argv[4]` seconds from the address `argv[1]`
/// (another's: forged), after ten from `argv[5]` (its own); prints how many it sent.
const SPOOFER: &str = "import socket,struct,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\ndef send(src,body):\n udp=struct.pack('!HHHH',40000,int(sys.argv[3]),8+len(body),0)+body\n ip=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(udp),0,0,64,17,0,socket.inet_aton(src),socket.inet_aton(sys.argv[2]))\n s.sendto(ip+udp,(sys.argv[2],0))\nfor _ in range(10):\n send(sys.argv[5],b'own')\nn=0\nend=time.time()+float(sys.argv[4])\nwhile time.time()<end:\n send(sys.argv[1],b'forged')\n n+=1\n time.sleep(0.0005)\nprint(n)\n";

/// Counts the datagrams arriving at `argv[1]:argv[2]` for `argv[3]` seconds, by what they say:
/// `own forged`.
const RECEIVER: &str = "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.settimeout(0.2)\nc={b'own':0,b'forged':0}\nend=time.time()+float(sys.argv[3])\nwhile time.time()<end:\n try:\n  d=s.recv(100)\n  c[d]=c.get(d,0)+1\n except socket.timeout:\n  pass\nprint(c[b'own'],c[b'forged'])\n";

/// Loading the rules again (as each instance created or deleted does) neither refuses a
/// connection an instance may open, nor lets through what it may not send, nor loses count of
/// what it refuses: while the bridge's rules are reloaded over and over with members coming and
/// going, connections to an attached LAN keep succeeding, every one, datagrams with another
/// instance's address never arrive, and each connection refused (to the host) is counted.
#[test]
fn connections_pass_while_the_rules_reload() -> Result {
    use berth_core::network::{Attachment, Egress, NetworkSpec};
    use berth_runtime::embedded::firewall::Member;
    use berth_runtime::InstanceNetwork;

    let mut sb = Sandbox::new("btr", 234)?;
    let (cidr, n) = (sb.cidr, std::process::id() % 200);
    let lan: Cidr = format!("10.233.{n}.0/24").parse()?;
    let lan_bridge = format!("btl{n}");
    let lan_ns = format!("{}lan", sb.prefix);
    let _lan = Lan::create(&lan_bridge, &lan_ns, lan)?;
    let net = Network::open(&sb.bridge, cidr, &sb.prefix, sb.dir.path())?;
    let a = net.attach("a")?;
    let server = lan.nth(10).to_string();
    sb.servers.push(
        Command::new("ip")
            .args(["netns", "exec", &lan_ns, "python3", "-c", ACCEPTOR, &server, "9000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let policy = InstanceNetwork {
        group: "web".into(),
        egress: Egress::Networks,
        networks: vec![NetworkSpec {
            name: "lan".into(),
            cidr: lan,
            attach: Some(Attachment::Bridge(lan_bridge.clone())),
            host_endpoints: Default::default(),
            hosts: Default::default(),
        }],
    };
    let other = InstanceNetwork { group: "api".into(), ..policy.clone() };
    let members = |others: u32| {
        let mut m = vec![Member { address: a.address, veth: a.host_veth.clone(), network: &policy }];
        m.extend((0..others).map(|i| Member { address: cidr.nth(100 + i), veth: format!("btr{n}x{i}"), network: &other }));
        m
    };
    net.apply_rules(members(0), false, &[])?;
    let ns_a = format!("{}a", sb.prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    let connect =
        |secs: &str| Command::new("ip").args(["netns", "exec", &ns_a, "python3", "-c", CONNECTOR, &server, "9000", secs]).output();
    while String::from_utf8_lossy(&connect("0.01")?.stdout).split_whitespace().next() == Some("0") {
        if Instant::now() > deadline {
            return Err("the instance never reached the LAN".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let in_ns = |ns: &str, script: &str, args: &[&str]| {
        Command::new("ip").args(["netns", "exec", ns, "python3", "-c", script]).args(args).stdout(Stdio::piped()).spawn()
    };
    let receiver = in_ns(&lan_ns, RECEIVER, &[&server, "9001", "10"])?;
    std::thread::sleep(Duration::from_millis(500));
    // Another member's address: a forged datagram let through would take on its rules.
    let forged = cidr.nth(100).to_string();
    let spoofer = in_ns(&ns_a, SPOOFER, &[&forged, &server, "9001", "8", &a.address.to_string()])?;
    let mut client = in_ns(&ns_a, CONNECTOR, &[&server, "9000", "8"])?;
    let refused_by_rule = in_ns(&ns_a, CONNECTOR, &[&cidr.gateway().to_string(), "9", "8"])?;
    let mut reloads = 0;
    while client.try_wait()?.is_none() {
        net.apply_rules(members(reloads % 3), false, &[])?;
        reloads += 1;
    }
    let numbers = |child: Child| -> Result<Vec<u64>> {
        Ok(String::from_utf8_lossy(&child.wait_with_output()?.stdout).split_whitespace().filter_map(|c| c.parse().ok()).collect())
    };
    let (counts, sent, arrived, to_host) = (numbers(client)?, numbers(spoofer)?, numbers(receiver)?, numbers(refused_by_rule)?);
    let counted = berth_runtime::embedded::firewall::counters(&sb.bridge)?.get("denied_web_host").map_or(0, |c| c.0);
    eprintln!("{reloads} reloads; connections ok, refused, failed otherwise: {counts:?}; to the host {to_host:?}, counted {counted}; forged datagrams sent {sent:?}, datagrams arrived (own, forged) {arrived:?}");
    assert!(reloads >= 20, "only {reloads} reloads");
    assert!(counts.len() == 3 && counts[0] > 1000, "too few connections to tell: {counts:?}");
    assert_eq!(&counts[1..], [0, 0], "connections failed while the rules reloaded ({reloads} reloads)");
    assert!(sent.first().is_some_and(|n| *n > 1000), "too few forged datagrams to tell: {sent:?}");
    assert!(
        arrived.len() == 2 && arrived[0] > 0,
        "the instance's own datagrams did not arrive, so forged ones could not be told: {arrived:?}"
    );
    assert_eq!(arrived[1], 0, "datagrams with another instance's address reached the LAN while the rules reloaded");
    assert!(to_host.len() == 3 && to_host[0] == 0 && to_host[1] > 100, "connections to the host were not refused: {to_host:?}");
    assert_eq!(counted, to_host[1], "refusals went uncounted while the rules reloaded");
    net.detach("a")?;
    Ok(())
}

/// A LAN on the host: a bridge with the host's address on it and a namespace with a machine
/// on it (the 10th address); removed when dropped.
struct Lan {
    bridge: String,
    ns: String,
    cidr: Cidr,
}

impl Lan {
    fn create(bridge: &str, ns: &str, cidr: Cidr) -> Result<Lan> {
        let lan = Lan { bridge: bridge.to_owned(), ns: ns.to_owned(), cidr };
        let host_end = format!("{bridge}h");
        let at = |ip: std::net::Ipv4Addr| format!("{ip}/{}", cidr.prefix);
        for args in [
            vec!["route", "add", "unreachable", &cidr.to_string(), "metric", "4000"],
            vec!["link", "add", bridge, "type", "bridge"],
            vec!["addr", "add", &at(cidr.gateway()), "dev", bridge],
            vec!["link", "set", bridge, "up"],
            vec!["netns", "add", ns],
            vec!["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns],
            vec!["link", "set", &host_end, "master", bridge, "up"],
            vec!["-n", ns, "addr", "add", &at(cidr.nth(10)), "dev", "eth0"],
            vec!["-n", ns, "link", "set", "eth0", "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ] {
            let status = Command::new("ip").args(&args).status()?;
            if !status.success() {
                return Err(format!("ip {} failed", args.join(" ")).into());
            }
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["link", "del", "dev", &self.bridge]).status();
        let _ = Command::new("ip").args(["route", "del", "unreachable", &self.cidr.to_string(), "metric", "4000"]).status();
    }
}
