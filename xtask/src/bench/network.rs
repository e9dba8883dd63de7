//! `cargo xtask bench network` (as root): berth's private networks on a private LAN made here —
//! a network namespace holding MariaDB (Debian's mariadb-server), joined to a host bridge that
//! berth's network `db` attaches to. Nothing is sent to an address this benchmark did not make.
//!
//! - Start: from the create call until the instance accepts TCP, for `examples/hello` with
//!   network `db` attached (egress `networks`: veth, addresses, routes and the nftables rules of
//!   its policy), against runc with the CNI plugins of Debian's containernetworking-plugins
//!   (loopback; bridge with host-local addresses, a default route and masquerade; firewall), as
//!   a container engine drives them: `runc create` of the same root filesystem in a new network
//!   namespace, the plugins' ADD in it, `runc start`. berth's figure includes mounting the root
//!   filesystem and writing the bundle, which the anchor is handed ready.
//! - Database connect: `guestbook ping` (a new connection and `SELECT 1`, timed in the process)
//!   from a berth instance's network namespace, from the runc container's and from the host, in
//!   alternating batches: the p50 each path adds over the host's.
//! - Cold starts: `examples/guestbook` started 200 times with `db` attached; each connects to
//!   MariaDB before it listens and exits if it cannot. Any that did not serve is a failure; so is
//!   a request to a `berth server` service of it scaled to zero that its woken instance does not
//!   answer (that instance finds MariaDB by the name berth's DNS answers).
//! - Service to service: the `berth server`; service `web-app` (on a network whose host
//!   endpoint is an nginx) calls private service `api-svc` as `http://api-svc.internal` (the name
//!   answered by berth's DNS on the gateway), through the router's internal listener; and through
//!   that nginx, which proxies to `api-svc`'s instance doing the same work per request as the
//!   router (see `bench router`). Both from `web-app`'s network namespace, through berth's rules;
//!   direct is the host calling the instance. Added p50 of each over direct; berth's router
//!   writes its access log, nginx none.
//! - Isolation: from instances of both, every destination their policy allows connects and every
//!   other (other instances, the host's ports, the LAN of a network not attached, the metadata
//!   address, a private service from the public listener or from a caller not allowed) does not.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_core::network::Attachment;
use berth_core::{Egress, NetworkSpec};
use berth_image::build::{build_from_binary, ImageSettings};
use berth_runtime::embedded::EmbeddedRuntime;
use berth_runtime::InstanceNetwork;
use berth_runtime::{ImageRef, InstanceId, InstanceState, Runtime};
use berth_testkit::{BerthProcess, MariaDb, RuntimeSandbox};

use super::http::Conn;
use super::nginx::{free_port, nginx, PROXY_TO_BACKEND, REQUEST_ID_MAP};
use super::runtime::{open_runtime, runc, spec, wait_tcp};
use super::{build_berth, build_release, median, print_table, Figure};

/// The embedded runtime this process drives.
const BRIDGE: &str = "bbnet0";
const CIDR: &str = "10.251.0.0/24";
const GATEWAY: &str = "10.251.0.1";
const CGROUP_PARENT: &str = "berth-bench-net";
const NETNS_PREFIX: &str = "bbnet-";
/// The `berth server`'s.
const SERVER_BRIDGE: &str = "bbnets0";
const SERVER_CIDR: &str = "10.250.0.0/24";
const SERVER_GATEWAY: &str = "10.250.0.1";
const SERVER_CGROUP_PARENT: &str = "berth-bench-nets";
/// The private LAN: its namespace, the host bridge it is joined to, MariaDB's address.
const LAN_NS: &str = "bblan-db";
const LAN_BRIDGE: &str = "bblan0";
const LAN_CIDR: &str = "10.252.0.0/24";
const LAN_HOST: &str = "10.252.0.1/24";
const DB_IP: &str = "10.252.0.10";
/// A port the LAN namespace accepts on, on its address and on the metadata address it holds.
const LAN_PORT: u16 = 7000;
const METADATA: &str = "169.254.169.254";
/// The network of `web`, with nginx as its host endpoint.
const EDGE_CIDR: &str = "10.248.0.0/24";
/// The anchor's CNI bridge and subnet.
const CNI_BRIDGE: &str = "bbcni0";
const CNI_SUBNET: &str = "10.253.0.0/24";
const CNI_PLUGINS: &str = "/usr/lib/cni";
const PASSWORD: &str = "bench-pw";
const COLD_STARTS: usize = 200;
const PINGS: usize = 2000;
const PING_BATCHES: usize = 20;
const CALLS: usize = 2000;

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args(args)).map(drop)
}

/// A server that accepts connections and closes them (python's standard library).
const ACCEPTOR: &str =
    "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',int(sys.argv[1])))\ns.listen(128)\nwhile True:\n c,_=s.accept()\n c.close()\n";

/// The LAN: a namespace with MariaDB and an acceptor on `LAN_PORT` (also on the metadata
/// address), joined by a veth to a host bridge; removed when dropped.
struct Lan {
    acceptor: Option<Child>,
    db: Option<MariaDb>,
    _lan: berth_testkit::Lan,
}

impl Lan {
    fn start() -> anyhow::Result<Lan> {
        let addrs = [format!("{DB_IP}/24"), format!("{METADATA}/32")];
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let lan = berth_testkit::Lan::add(LAN_NS, LAN_BRIDGE, &[LAN_HOST], &addrs).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut lan = Lan { acceptor: None, db: None, _lan: lan };
        ip(&["route", "add", &format!("{METADATA}/32"), "dev", LAN_BRIDGE])?;
        lan.acceptor = Some(
            Command::new("ip")
                .args(["netns", "exec", LAN_NS, "python3", "-c", ACCEPTOR, &LAN_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        eprintln!("starting MariaDB on the LAN ({DB_IP}:3306)");
        lan.db = Some(MariaDb::start(Some(LAN_NS), DB_IP, 3306, PASSWORD).map_err(|e| anyhow::anyhow!("{e}"))?);
        wait_tcp(format!("{DB_IP}:{LAN_PORT}").parse()?, Duration::from_secs(10))?;
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(c) = &mut self.acceptor {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The database before its namespace.
        drop(self.db.take());
    }
}

/// What the CNI plugins change on the host, put back when dropped: their bridge, IPv4
/// forwarding (the bridge plugin turns it on for every interface at once; turning it off for all
/// again would turn it off on berth's bridges too, so each interface gets its own value back) and
/// the firewall plugin's iptables chains.
struct CniHost {
    /// `net.ipv4.conf.<name>.forwarding` of every interface, `all` first, as it was before the
    /// first ADD.
    forwarding: std::sync::Mutex<Option<Vec<(PathBuf, String)>>>,
    /// iptables' filter and nat tables existed before: then only the plugins' chains are removed
    /// (the masquerade chains go with each container's DEL).
    filter_existed: bool,
    nat_existed: bool,
    ipam: tempfile::TempDir,
}

const IPV4_CONF: &str = "/proc/sys/net/ipv4/conf";

fn forwarding_now() -> Vec<(PathBuf, String)> {
    let mut all: Vec<(PathBuf, String)> = std::fs::read_dir(IPV4_CONF)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path().join("forwarding");
            std::fs::read_to_string(&path).ok().map(|v| (path, v))
        })
        .collect();
    all.sort_by_key(|(p, _)| !p.starts_with(Path::new(IPV4_CONF).join("all")));
    all
}

impl CniHost {
    fn new() -> anyhow::Result<CniHost> {
        let exists = |table: &str| Command::new("nft").args(["list", "table", "ip", table]).output().is_ok_and(|o| o.status.success());
        let (filter_existed, nat_existed) = (exists("filter"), exists("nat"));
        Ok(CniHost { forwarding: std::sync::Mutex::new(None), filter_existed, nat_existed, ipam: tempfile::tempdir()? })
    }

    fn conf(&self, plugin: &str) -> serde_json::Value {
        match plugin {
            "bridge" => serde_json::json!({
                "cniVersion": "1.0.0", "name": "bbench", "type": "bridge", "bridge": CNI_BRIDGE,
                "isGateway": true, "ipMasq": true,
                "ipam": {"type": "host-local", "subnet": CNI_SUBNET, "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.ipam.path()},
            }),
            other => serde_json::json!({"cniVersion": "1.0.0", "name": "bbench", "type": other}),
        }
    }

    /// Runs one plugin: its result, if it printed one.
    fn plugin(
        &self,
        plugin: &str,
        command: &str,
        id: &str,
        netns: &str,
        prev: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut conf = self.conf(plugin);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut child = Command::new(Path::new(CNI_PLUGINS).join(plugin))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", if plugin == "loopback" { "lo" } else { "eth0" })
            .env("CNI_PATH", CNI_PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running the CNI plugin {plugin}"))?;
        child.stdin.take().context("no stdin")?.write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("CNI {plugin} {command}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
    }

    /// ADD of the chain: the bridge plugin's result (the container's address).
    fn add(&self, id: &str, netns: &str) -> anyhow::Result<serde_json::Value> {
        self.forwarding.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(forwarding_now);
        self.plugin("loopback", "ADD", id, netns, None)?;
        let result = self.plugin("bridge", "ADD", id, netns, None)?;
        self.plugin("firewall", "ADD", id, netns, Some(&result))?;
        Ok(result)
    }

    fn del(&self, id: &str, netns: &str, result: &serde_json::Value) -> anyhow::Result<()> {
        self.plugin("firewall", "DEL", id, netns, Some(result))?;
        self.plugin("bridge", "DEL", id, netns, Some(result))?;
        self.plugin("loopback", "DEL", id, netns, None)?;
        Ok(())
    }
}

impl Drop for CniHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", "dev", CNI_BRIDGE]).stderr(Stdio::null()).status();
        let saved = self.forwarding.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        for (path, value) in saved {
            if std::fs::read_to_string(&path).is_ok_and(|now| now != value) {
                let _ = std::fs::write(&path, &value);
            }
        }
        if !self.nat_existed {
            let _ = Command::new("nft").args(["delete", "table", "ip", "nat"]).stderr(Stdio::null()).status();
        }
        if !self.filter_existed {
            let _ = Command::new("nft").args(["delete", "table", "ip", "filter"]).stderr(Stdio::null()).status();
            return;
        }
        // The jump to the plugin's chain, as iptables prints it (shell-quoted), then the chains.
        if let Ok(out) = Command::new("iptables").args(["-S", "FORWARD"]).output() {
            for rule in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("-j CNI-FORWARD")) {
                let delete = rule.replacen("-A ", "-D ", 1);
                let _ = Command::new("sh").arg("-c").arg(format!("iptables {delete}")).status();
            }
        }
        for args in [["-F", "CNI-FORWARD"], ["-F", "CNI-ADMIN"], ["-X", "CNI-FORWARD"], ["-X", "CNI-ADMIN"]] {
            let _ = Command::new("iptables").args(args).stderr(Stdio::null()).status();
        }
    }
}

/// Runs `f` on a thread inside the network namespace `netns` (a name under /run/netns):
/// connections it makes leave from there, as an instance's do.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let path = PathBuf::from("/run/netns").join(netns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the network namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in a network namespace panicked"))?
}

/// Whether a TCP connection to `addr` is made within two seconds.
fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// p50 of `n` sequential requests for `/` on one keep-alive connection (after 100 unmeasured),
/// µs; each must answer 200.
fn call_p50(addr: &str, host: &str, n: usize) -> anyhow::Result<f64> {
    let mut c = Conn::connect_as(addr, host, None)?;
    let mut us = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t0 = Instant::now();
        let r = c.request("GET", "/", &[], b"", false)?;
        if r.status != 200 {
            bail!("GET http://{host}/ via {addr} answered {}", r.status);
        }
        if i >= 100 {
            us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(median(us))
}

/// The status of `GET /` at `addr` with `Host: host`.
fn status_of(addr: &str, host: &str) -> anyhow::Result<u16> {
    Ok(Conn::connect_as(addr, host, None)?.request("GET", "/", &[], b"", false)?.status)
}

/// Asks the DNS server at `server` for the A record of `name` over UDP: the first address.
fn resolve(server: &str, name: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let mut query = vec![0x5b, 0x17, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(&query, server)?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    let answer = &buf[..n];
    let (rcode, answers) = (answer.get(3).map_or(0xf, |b| b & 0xf), u16::from_be_bytes([answer[6], answer[7]]));
    if answer.len() < 12 || answer[..2] != query[..2] || rcode != 0 || answers == 0 {
        return Ok(None);
    }
    // The question as sent, then the first answer: a compressed name (2 bytes), type, class, TTL,
    // length, data.
    let at = query.len() + 2 + 2 + 2 + 4 + 2;
    Ok(answer.get(at..at + 4).map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3])))
}

/// `guestbook ping`: per-connection µs, or why it failed; `enter` is the command that runs it
/// in a network namespace (none: on the host).
fn ping(guestbook: &Path, enter: &[String], count: usize) -> anyhow::Result<Vec<f64>> {
    let mut cmd = match enter.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(guestbook);
            c
        }
        None => Command::new(guestbook),
    };
    cmd.args(["ping", &count.to_string()]).env("DB_HOST", DB_IP).env("DB_USER", "gb").env("DB_PASSWORD", PASSWORD);
    let out = cmd.stdin(Stdio::null()).output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("guestbook ping printed no report: {}", String::from_utf8_lossy(&out.stderr)))?;
    if report["failed"].as_u64() != Some(0) {
        bail!("guestbook ping via {enter:?}: {}", report["error"]);
    }
    Ok(report["us"].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default())
}

fn db_network() -> anyhow::Result<NetworkSpec> {
    Ok(NetworkSpec {
        name: "db".into(),
        cidr: LAN_CIDR.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        attach: Some(Attachment::Bridge(LAN_BRIDGE.into())),
        host_endpoints: BTreeMap::new(),
        hosts: BTreeMap::new(),
    })
}

/// Pairs tried by the isolation checks: (what, where, whether the policy allows it).
type Pairs = Vec<(String, SocketAddr, bool)>;

/// Tries every pair from `netns`: (allowed pairs that failed, denied pairs that connected).
fn try_pairs(netns: &str, pairs: Pairs) -> anyhow::Result<(usize, usize, Vec<String>)> {
    in_netns(netns, move || {
        let (mut failed, mut reached, mut lines) = (0, 0, Vec::new());
        for (what, addr, allowed) in pairs {
            let connected = connects(addr);
            match (allowed, connected) {
                (true, false) => failed += 1,
                (false, true) => reached += 1,
                _ => {}
            }
            let verdict = match (allowed, connected) {
                (true, true) => "allowed, connects",
                (false, false) => "denied, refused",
                (true, false) => "ALLOWED BUT FAILED",
                (false, true) => "DENIED BUT CONNECTED",
            };
            lines.push(format!("  {what:<44} {addr:<22} {verdict}"));
        }
        Ok((failed, reached, lines))
    })
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the network benchmark makes namespaces, bridges and containers: run it as root");
    }
    crate::test::ensure_tools(&[
        ("runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("iptables", "iptables"),
        ("nginx", "nginx-light"),
        ("mariadbd", "mariadb-server"),
        ("mariadb", "mariadb-client"),
        ("python3", "python3"),
        ("ip", "iproute2"),
    ])?;
    let bin = build_berth()?;
    let guestbook = build_release("guestbook")?;
    let tmp = tempfile::Builder::new().prefix("berth-bench-network").tempdir()?;
    let hello = tmp.path().join("hello");
    super::compile_hello(&hello, true)?;
    let settings = ImageSettings { port: Some(8080), ..Default::default() };
    let hello_image = build_from_binary(&hello, false, &settings)?;
    let guestbook_image = build_from_binary(&guestbook, true, &settings)?;
    let images = vec![("hello".to_owned(), hello_image), ("guestbook".to_owned(), guestbook_image)];

    let sandbox = RuntimeSandbox {
        berth: bin.clone(),
        instances: tmp.path().join("runtime/instances"),
        netns_prefix: NETNS_PREFIX.into(),
        bridge: BRIDGE.into(),
        cidr: CIDR.into(),
        cgroup_parent: CGROUP_PARENT.into(),
    };
    let server_sandbox = RuntimeSandbox {
        berth: bin.clone(),
        instances: tmp.path().join("server/runtime/instances"),
        netns_prefix: format!("berth-{SERVER_BRIDGE}-"),
        bridge: SERVER_BRIDGE.into(),
        cidr: SERVER_CIDR.into(),
        cgroup_parent: SERVER_CGROUP_PARENT.into(),
    };
    let lan = Lan::start()?;
    let cni = CniHost::new()?;
    let result = (|| {
        let part1 = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(on_the_runtime(
            &bin,
            tmp.path(),
            images,
            &guestbook,
            cni,
            rounds,
        ))?;
        let part2 = through_the_server(&bin, tmp.path(), &hello, &guestbook, &part1.instance, rounds)?;
        report(part1, part2);
        Ok(())
    })();
    drop(lan);
    drop(server_sandbox);
    drop(sandbox);
    result
}

/// What the first part measured with the embedded runtime.
struct RuntimeFigures {
    start: Figure,
    connect: Figure,
    /// What runc's container on the CNI bridge adds to the same connect, µs per round.
    cni_added: Vec<f64>,
    cold_start_ms: Vec<f64>,
    cold_failures: usize,
    allowed_failed: usize,
    denied_reached: usize,
    /// The address of an instance of this runtime, that the server's instances must not reach.
    instance: SocketAddr,
}

async fn on_the_runtime(
    bin: &Path,
    dir: &Path,
    images: Vec<(String, berth_image::build::BuiltImage)>,
    guestbook: &Path,
    cni: CniHost,
    rounds: usize,
) -> anyhow::Result<RuntimeFigures> {
    let image_ref = |name: &str| {
        images.iter().find(|(n, _)| n == name).map(|(n, i)| ImageRef { repository: n.clone(), digest: i.manifest.digest.clone() })
    };
    let (hello, gb) = (image_ref("hello").context("no hello image")?, image_ref("guestbook").context("no guestbook image")?);
    let rt = open_runtime(bin, &dir.join("runtime"), (BRIDGE, CIDR, NETNS_PREFIX, CGROUP_PARENT), images)?;
    let on_db = InstanceNetwork { group: "bench".into(), egress: Egress::Networks, networks: vec![db_network()?] };
    let runc_root = dir.join("runc-state");

    // Images unpacked once, outside what is measured.
    for (id, image) in [("warm-hello", &hello), ("warm-guestbook", &gb)] {
        rt.create(spec(id, image, &[], &InstanceNetwork::default())?).await?;
        rt.delete(&InstanceId::new(id)?).await?;
    }

    let mut start = Figure::new("start to first accept", "ms");
    for round in 0..rounds {
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for berth in order {
            let ms = if berth {
                let id = InstanceId::new(format!("start-{round}"))?;
                let t0 = Instant::now();
                let st = rt.create(spec(id.as_str(), &hello, &[], &on_db)?).await?;
                rt.start(&id).await?;
                wait_tcp(st.address.context("no address")?, Duration::from_secs(10))?;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                rt.delete(&id).await?;
                ms
            } else {
                let (ms, c) = cni_start(&rt, dir, &runc_root, &cni, &hello, &format!("cni-{round}")).await?;
                cni_stop(&rt, &runc_root, &cni, c).await?;
                ms
            };
            eprintln!("round {}/{rounds} {:<9} start {ms:.1} ms", round + 1, if berth { "berth" } else { "runc+CNI" });
            if berth {
                start.berth.push(ms);
            } else {
                start.anchor.push(ms);
            }
        }
    }

    // Connect + SELECT 1 from an instance's namespace, from a runc container on the CNI bridge,
    // and from the host, in alternating batches (so that drift in the database's own speed falls
    // on all three), all while the plugins' chains are in place.
    let pinger = InstanceId::new("pinger")?;
    let st = rt.create(spec(pinger.as_str(), &hello, &[], &on_db)?).await?;
    rt.start(&pinger).await?;
    wait_tcp(st.address.context("no address")?, Duration::from_secs(10))?;
    let netns = format!("{NETNS_PREFIX}{}", pinger.as_str());
    let (_, anchor) = cni_start(&rt, dir, &runc_root, &cni, &hello, "cni-pinger").await?;
    let places: [Vec<String>; 3] = [
        vec!["ip".into(), "netns".into(), "exec".into(), netns.clone()],
        vec!["nsenter".into(), format!("--net={}", anchor.netns)],
        Vec::new(),
    ];
    let mut connect = Figure::new("connect + SELECT 1, p50", "µs");
    let mut cni_added = Vec::new();
    let measured = (|| {
        for round in 0..rounds {
            let mut samples: [Vec<f64>; 3] = Default::default();
            for batch in 0..PING_BATCHES {
                for k in 0..3 {
                    let place = (batch + k) % 3;
                    samples[place].extend(ping(guestbook, &places[place], PINGS / PING_BATCHES)?);
                }
            }
            let [b, c, h] = samples.map(median);
            eprintln!("round {}/{rounds} connect + SELECT 1 p50: from berth's instance {b:.0} µs, from runc+CNI {c:.0} µs, from the host {h:.0} µs", round + 1);
            connect.berth.push(b);
            connect.anchor.push(h);
            cni_added.push(c - h);
        }
        anyhow::Ok(())
    })();
    cni_stop(&rt, &runc_root, &cni, anchor).await?;
    rt.delete(&pinger).await?;
    measured?;

    // What the plugins left (their bridge, iptables chains on every forwarded packet) goes now,
    // before anything else is measured.
    drop(cni);

    // Cold starts of the app of the story: each connects to MariaDB before it listens.
    let env = [("DB_HOST", DB_IP), ("DB_USER", "gb"), ("DB_PASSWORD", PASSWORD)];
    let (mut cold_start_ms, mut cold_failures) = (Vec::new(), 0);
    for i in 0..COLD_STARTS {
        let id = InstanceId::new(format!("cold-{i}"))?;
        let t0 = Instant::now();
        let st = rt.create(spec(id.as_str(), &gb, &env, &on_db)?).await?;
        rt.start(&id).await?;
        let addr = st.address.context("no address")?;
        let served = loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break true;
            }
            let exited = matches!(rt.inspect(&id).await?.map(|s| s.state), Some(InstanceState::Exited { .. }) | None);
            if exited || t0.elapsed() > Duration::from_secs(20) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if served {
            cold_start_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            cold_failures += 1;
            let logs = rt.logs(&id, 0).await.unwrap_or_default().join("\n");
            eprintln!("cold start {i} did not serve within 20 s; its log:\n{logs}");
        }
        rt.delete(&id).await?;
        if (i + 1) % 50 == 0 {
            eprintln!("{} cold starts of guestbook, {cold_failures} failed", i + 1);
        }
    }

    // What an instance on `db` may reach and what not: one made after the plugins' changes to
    // the host were put back (turning IPv4 forwarding off for all interfaces at once reaches
    // the ones berth turned on too, until berth next sets them).
    let prober = InstanceId::new("prober")?;
    let st = rt.create(spec(prober.as_str(), &hello, &[], &on_db)?).await?;
    rt.start(&prober).await?;
    let instance = st.address.context("no address")?;
    wait_tcp(instance, Duration::from_secs(10))?;
    let netns = format!("{NETNS_PREFIX}{}", prober.as_str());
    let pairs: Pairs = vec![
        ("MariaDB on its LAN".into(), format!("{DB_IP}:3306").parse()?, true),
        ("another port on its LAN".into(), format!("{DB_IP}:{LAN_PORT}").parse()?, true),
        ("the metadata address".into(), format!("{METADATA}:{LAN_PORT}").parse()?, false),
        ("the host's SSH port on the gateway".into(), format!("{GATEWAY}:22").parse()?, false),
        ("the host's LAN address".into(), format!("{}:{LAN_PORT}", LAN_HOST.split('/').next().unwrap_or_default()).parse()?, false),
    ];
    let (allowed_failed, denied_reached, lines) = try_pairs(&netns, pairs)?;
    eprintln!("from an instance on network db (egress networks):\n{}", lines.join("\n"));
    Ok(RuntimeFigures { start, connect, cni_added, cold_start_ms, cold_failures, allowed_failed, denied_reached, instance })
}

/// A container the anchor started: runc's, on the CNI bridge.
struct CniContainer {
    id: String,
    /// Its network namespace, as the plugins were given it.
    netns: String,
    /// The bridge plugin's result.
    result: serde_json::Value,
}

/// The anchor's start: `runc create` of the root filesystem of an instance berth made (in a new
/// network namespace), the CNI chain's ADD in it, `runc start`, until it accepts. ms, and the
/// container, running.
async fn cni_start(
    rt: &EmbeddedRuntime,
    dir: &Path,
    runc_root: &Path,
    cni: &CniHost,
    image: &ImageRef,
    id: &str,
) -> anyhow::Result<(f64, CniContainer)> {
    rt.create(spec(id, image, &[], &InstanceNetwork::default())?).await?;
    let berth_bundle = dir.join("runtime/instances").join(id).join("bundle");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(berth_bundle.join("config.json"))?)?;
    let root = config["root"]["path"].as_str().context("no root path")?.to_owned();
    config["root"]["path"] = serde_json::Value::from(berth_bundle.join(root).display().to_string());
    for ns in config["linux"]["namespaces"].as_array_mut().context("no namespaces")? {
        if ns["type"] == "network" {
            if let Some(o) = ns.as_object_mut() {
                o.remove("path");
            }
        }
    }
    let bundle = dir.join(format!("bundle-{id}"));
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(bundle.join("config.json"), config.to_string())?;
    let pid_file = bundle.join("pid");

    let t0 = Instant::now();
    runc(runc_root, &["create", "--bundle", &bundle.display().to_string(), "--pid-file", &pid_file.display().to_string(), id])?;
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    let c = CniContainer { id: id.to_owned(), netns: format!("/proc/{pid}/ns/net"), result: serde_json::Value::Null };
    let started = async {
        let result = cni.add(id, &c.netns)?;
        let address =
            result["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).context("the bridge plugin gave no address")?;
        let address: SocketAddr = format!("{address}:8080").parse()?;
        runc(runc_root, &["start", id])?;
        wait_tcp(address, Duration::from_secs(10))?;
        anyhow::Ok(result)
    }
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match started {
        Ok(result) => Ok((ms, CniContainer { result, ..c })),
        Err(e) => {
            let _ = cni_stop(rt, runc_root, cni, c).await;
            Err(e)
        }
    }
}

async fn cni_stop(rt: &EmbeddedRuntime, runc_root: &Path, cni: &CniHost, c: CniContainer) -> anyhow::Result<()> {
    let deleted = if c.result.is_null() { Ok(()) } else { cni.del(&c.id, &c.netns, &c.result) };
    runc(runc_root, &["delete", "-f", &c.id])?;
    rt.delete(&InstanceId::new(&c.id)?).await?;
    deleted
}

/// What the second part measured with a `berth server`.
struct ServerFigures {
    berth_added: Vec<f64>,
    nginx_added: Vec<f64>,
    direct: Vec<f64>,
    allowed_failed: usize,
    denied_reached: usize,
    /// A request to guestbook with no instance was answered by the instance it woke.
    from_zero_ok: bool,
    from_zero_ms: f64,
}

fn through_the_server(
    bin: &Path,
    dir: &Path,
    hello: &Path,
    guestbook: &Path,
    other_instance: &SocketAddr,
    rounds: usize,
) -> anyhow::Result<ServerFigures> {
    let data = dir.join("server");
    let server = BerthProcess::start(
        bin,
        &data,
        &[
            ("BERTH_RUNTIME", "on"),
            ("BERTH_RUNTIME_OUTBOUND_NAT", "false"),
            ("BERTH_RUNTIME_BRIDGE", SERVER_BRIDGE),
            ("BERTH_RUNTIME_CIDR", SERVER_CIDR),
            ("BERTH_RUNTIME_CGROUP_PARENT", SERVER_CGROUP_PARENT),
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cli = |args: &[&str]| run_ok(Command::new(bin).arg("--data-dir").arg(&data).args(args));
    let router = std::fs::read_to_string(data.join("router-address"))?
        .lines()
        .find_map(|l| l.strip_prefix("http://"))
        .context("no router address")?
        .to_owned();
    cli(&["image", "build", "--binary", &hello.display().to_string(), "--port", "8080", "-t", "hello:v1"])?;
    let nginx_port = free_port()?;
    cli(&["network", "create", "edge", "--cidr", EDGE_CIDR, "--host-endpoint", &format!("nginx=127.0.0.1:{nginx_port}")])?;
    let base = ["--image", "hello:v1", "--memory", "128", "--wait"];
    cli(&[&["service", "create", "web-app", "--network", "edge", "--egress", "networks"][..], &base].concat())?;
    cli(&[&["service", "create", "bystander"][..], &base].concat())?;
    cli(&[&["service", "create", "api-svc", "--visibility", "private", "--allow-from", "web-app"][..], &base].concat())?;
    let instance_of = |name: &str| -> anyhow::Result<(String, SocketAddr)> {
        let shown: serde_json::Value = serde_json::from_str(&cli(&["-o", "json", "service", "show", name])?)?;
        let i = &shown["instances"][0];
        Ok((i["id"].as_str().context("no instance id")?.to_owned(), i["address"].as_str().context("no address")?.parse()?))
    };
    let ((web, _), (other, _), (_, api)) = (instance_of("web-app")?, instance_of("bystander")?, instance_of("api-svc")?);
    let (web_ns, other_ns) = (format!("berth-{SERVER_BRIDGE}-{web}"), format!("berth-{SERVER_BRIDGE}-{other}"));
    let proxy = nginx(
        dir,
        "nginx",
        "auto",
        &format!("{REQUEST_ID_MAP}  upstream backend {{ server {api}; keepalive 16; }}\n  server {{ listen 127.0.0.1:{nginx_port}; {PROXY_TO_BACKEND} }}"),
    )?;
    // A throwaway listener on every address of the host.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0")?;
    let host_port = host_listener.local_addr()?.port();
    std::thread::spawn(move || {
        for c in host_listener.incoming() {
            drop(c);
        }
    });

    // `api-svc.internal` as berth's DNS answers it to `web-app`.
    let dns = format!("{SERVER_GATEWAY}:53");
    let answered = in_netns(&web_ns, move || resolve(&dns, "api-svc.internal"))?;
    let internal = format!("{}:80", answered.context("berth's DNS did not answer api-svc.internal to web-app")?);
    let edge_endpoint = format!("{SERVER_GATEWAY}:{nginx_port}");
    eprintln!("api-svc.internal is {internal} for web-app; nginx is its host endpoint at {edge_endpoint}; api-svc's instance is {api}");

    let (mut berth_added, mut nginx_added, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let d = call_p50(&api.to_string(), "api-svc.internal", CALLS)?;
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        let (mut b, mut n) = (0.0, 0.0);
        for berth in order {
            let addr = if berth { internal.clone() } else { edge_endpoint.clone() };
            let p50 = in_netns(&web_ns, move || call_p50(&addr, "api-svc.internal", CALLS))?;
            if berth {
                b = p50;
            } else {
                n = p50;
            }
        }
        eprintln!("round {}/{rounds} p50: direct {d:.0} µs, via berth {b:.0} µs, via nginx {n:.0} µs", round + 1);
        direct.push(d);
        berth_added.push(b - d);
        nginx_added.push(n - d);
    }

    // Isolation of the server's instances, and `api` where it is not served.
    let pairs: Pairs = vec![
        ("web-app → api-svc.internal, the router".into(), internal.parse()?, true),
        ("web-app → berth's DNS over TCP".into(), format!("{SERVER_GATEWAY}:53").parse()?, true),
        ("web-app → its host endpoint (nginx)".into(), edge_endpoint.parse()?, true),
        ("web-app → api-svc's instance directly".into(), api, false),
        ("web-app → a port of the host on the gateway".into(), format!("{SERVER_GATEWAY}:{host_port}").parse()?, false),
        ("web-app → MariaDB (network db not attached)".into(), format!("{DB_IP}:3306").parse()?, false),
        ("web-app → the metadata address".into(), format!("{METADATA}:{LAN_PORT}").parse()?, false),
        ("web-app → an instance of another runtime".into(), *other_instance, false),
    ];
    let (mut allowed_failed, mut denied_reached, mut lines) = try_pairs(&web_ns, pairs)?;
    let public = status_of(&router, "api-svc.localhost")?;
    lines.push(format!("  {:<44} {:<22} {}", "api-svc on the public listener", router, if public == 404 { "404" } else { "SERVED" }));
    denied_reached += usize::from(public != 404);
    let not_allowed = in_netns(&other_ns, move || status_of(&internal, "api-svc.internal"))?;
    lines.push(format!("  {:<44} {:<22} {}", "bystander → api-svc.internal (not allowed)", "", not_allowed));
    denied_reached += usize::from(not_allowed != 403);
    let through_nginx = in_netns(&web_ns, move || status_of(&edge_endpoint, "api-svc.internal"))?;
    allowed_failed += usize::from(through_nginx != 200);
    eprintln!("from the server's instances:\n{}", lines.join("\n"));

    // Scale from zero: guestbook with no instance until a request comes; its instance resolves
    // the database by name from berth's DNS and connects at start, the request waiting meanwhile.
    cli(&["image", "build", "--binary", &guestbook.display().to_string(), "--with-libs", "--port", "8080", "-t", "guestbook:v1"])?;
    let lan = ["network", "create", "db", "--cidr", LAN_CIDR, "--attach-bridge", LAN_BRIDGE, "--host", &format!("mariadb={DB_IP}")];
    cli(&lan)?;
    let env = ["--env", "DB_HOST=mariadb.db.internal", "--env", "DB_USER=gb", "--env", &format!("DB_PASSWORD={PASSWORD}")];
    let sleeper = [
        "service",
        "create",
        "guestbook",
        "--image",
        "guestbook:v1",
        "--memory",
        "128",
        "--min-size",
        "0",
        "--network",
        "db",
        "--egress",
        "networks",
    ];
    cli(&[&sleeper[..], &env].concat())?;
    // Its first revision is deployed on one instance, which goes once the service has been idle
    // for the autoscaler's grace (a minute); the next request then wakes a new one.
    let instances = || -> anyhow::Result<usize> {
        let shown: serde_json::Value = serde_json::from_str(&cli(&["-o", "json", "service", "show", "guestbook"])?)?;
        Ok(shown["instances"].as_array().map_or(0, Vec::len))
    };
    eprintln!("waiting for guestbook to scale to zero");
    let deployed = Instant::now();
    let mut was_up = false;
    while deployed.elapsed() < Duration::from_secs(300) {
        let n = instances()?;
        was_up |= n > 0;
        if was_up && n == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let at_zero = instances()? == 0;
    let t0 = Instant::now();
    let woke =
        if at_zero { status_of(&router, "guestbook.localhost") } else { Err(anyhow::anyhow!("it did not scale to zero in 5 minutes")) };
    let from_zero_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let from_zero_ok = matches!(woke, Ok(200));
    eprintln!("guestbook from zero: {woke:?} after {from_zero_ms:.0} ms");

    drop(proxy);
    for name in ["api-svc", "web-app", "bystander", "guestbook"] {
        let _ = cli(&["service", "delete", name]);
    }
    drop(server);
    Ok(ServerFigures { berth_added, nginx_added, direct, allowed_failed, denied_reached, from_zero_ok, from_zero_ms })
}

fn report(r: RuntimeFigures, s: ServerFigures) {
    let connect_added = median(r.connect.berth.iter().zip(&r.connect.anchor).map(|(i, h)| i - h).collect());
    let s2s = Figure { name: "added p50, via name", unit: "µs", berth: s.berth_added, anchor: s.nginx_added };
    let figures = [r.start, r.connect, s2s];
    println!();
    println!("anchors: start — runc + CNI (loopback, bridge, firewall); connect — the host; added p50 — nginx");
    print_table("anchor", &figures);
    println!("{:<28} {:>14}", "connect added by berth (µs)", format!("{connect_added:.1}"));
    println!("{:<28} {:>14}", "connect added by CNI (µs)", format!("{:.1}", median(r.cni_added)));
    println!("{:<28} {:>14}", "direct call p50 (µs)", format!("{:.1}", median(s.direct)));
    println!(
        "{:<28} {:>14}",
        "guestbook cold starts",
        format!("{} ok, {} failed, p50 {:.0} ms", r.cold_start_ms.len(), r.cold_failures, median(r.cold_start_ms.clone()))
    );
    println!(
        "{:<28} {:>14}",
        "guestbook from zero",
        format!("{} in {:.0} ms (request to answer)", if s.from_zero_ok { "answered" } else { "FAILED" }, s.from_zero_ms)
    );
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let json = serde_json::json!({
        "bench": "network",
        "start_ratio_vs_cni": round2(figures[0].ratio()),
        "db_connect_added_p50_us": round2(connect_added),
        "s2s_added_p50_ratio": round2(figures[2].ratio()),
        "denied_pairs_reached": r.denied_reached + s.denied_reached,
        "allowed_pairs_failed": r.allowed_failed + s.allowed_failed,
        "cold_start_connect_failures": r.cold_failures + usize::from(!s.from_zero_ok),
    });
    println!("{json}");
}
