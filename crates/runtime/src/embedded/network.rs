//! Instance networking on one host: a Linux bridge with the gateway address (so the host
//! reaches every `instance-ip:port`), one network namespace and veth pair per instance, and an
//! address from a persistent IPAM. Bridge ports are isolated, so instances cannot reach each
//! other directly — only through the host (the router) — and the host guard
//! ([`super::firewall`]) keeps them from opening connections to the host itself. An
//! `unreachable` route for the whole CIDR keeps traffic for it on this host even when the bridge
//! is gone. Outbound NAT is an option, off by default (and never on in tests). The host side is
//! IPv4 only: the bridge and the host ends of the veths have IPv6 turned off.
//!
//! Links and namespaces are managed with iproute2's `ip`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub use berth_core::network::Cidr;
use sha2::{Digest as _, Sha256};

use super::files::write_atomic;
use super::firewall;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no free address left in {0}")]
    Exhausted(Cidr),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("loading nftables rules failed: {0}")]
    Nft(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn ip(args: &[&str]) -> Result<String, NetworkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetworkError::Io { context: "running ip (install iproute2)".into(), source: e })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// Address assignments, persisted so a restart never hands out an address twice.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Leases {
    /// address → instance id
    leases: BTreeMap<Ipv4Addr, String>,
    /// The host number handed out last: the next lease starts after it, so a freed address is
    /// reused as late as possible (peers may still hold it in caches).
    #[serde(default)]
    last: u32,
}

/// One instance's attachment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub netns: PathBuf,
    pub address: Ipv4Addr,
    pub host_veth: String,
}

pub struct Network {
    bridge: String,
    cidr: Cidr,
    /// Prefix of namespace names, so a test's leftovers can be swept.
    prefix: String,
    leases_file: PathBuf,
    leases: Mutex<Leases>,
    state_dir: PathBuf,
    /// Held while rules load: one ruleset at a time.
    rules: Mutex<()>,
}

impl Network {
    /// Sets up the bridge (idempotent) and loads the leases kept in `state_dir`.
    pub fn open(bridge: &str, cidr: Cidr, prefix: &str, state_dir: &Path) -> Result<Network, NetworkError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| NetworkError::Io { context: "creating the network state directory".into(), source: e })?;
        let leases_file = state_dir.join("leases.json");
        let leases = std::fs::read(&leases_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let net = Network {
            bridge: bridge.to_owned(),
            cidr,
            prefix: prefix.to_owned(),
            leases_file,
            leases: Mutex::new(leases),
            state_dir: state_dir.to_owned(),
            rules: Mutex::new(()),
        };
        net.ensure_bridge()?;
        Ok(net)
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    fn ensure_bridge(&self) -> Result<(), NetworkError> {
        let cidr = self.cidr.to_string();
        // Keep traffic for the CIDR on this host whatever happens to the bridge.
        if !ip(&["route", "show", "table", "main", "type", "unreachable"])?.lines().any(|l| l.starts_with(&format!("unreachable {cidr}"))) {
            ip(&["route", "add", "unreachable", &cidr, "metric", "4000"])?;
        }
        if ip(&["link", "show", "dev", &self.bridge]).is_err() {
            ip(&["link", "add", "name", &self.bridge, "type", "bridge"])?;
        }
        ipv4_only(&self.bridge);
        let gw = format!("{}/{}", self.cidr.gateway(), self.cidr.prefix);
        if !ip(&["-4", "addr", "show", "dev", &self.bridge])?.contains(&gw) {
            ip(&["addr", "add", &gw, "dev", &self.bridge])?;
        }
        ip(&["link", "set", "dev", &self.bridge, "up"])?;
        // The host routes between instances and their LANs, and answers every instance's ARP
        // itself (so a connection to another instance meets the rules, and is counted, rather
        // than an isolated port); it never redirects an instance to another.
        for (key, value) in [("forwarding", "1"), ("proxy_arp", "1"), ("proxy_arp_pvlan", "1"), ("send_redirects", "0")] {
            sysctl(&self.bridge, key, value)?;
        }
        // Until the runtime loads the rules of its instances: the guard alone. Rules already
        // loaded (instances that outlived a server) stay as they are.
        if !firewall::exists(&self.bridge)? {
            self.apply_rules(Vec::new(), false, &[])?;
        }
        Ok(())
    }

    /// Loads the rules for `members` (every instance on the bridge), carrying the counters over;
    /// turns on forwarding on the devices of the LANs they reach (restoring it on those no
    /// longer reached) and routing to loopback when a host endpoint needs it.
    pub fn apply_rules(
        &self,
        members: Vec<firewall::Member<'_>>,
        outbound_nat: bool,
        open_ports: &[(firewall::Proto, u16)],
    ) -> Result<(), NetworkError> {
        let _one_at_a_time = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let counters = firewall::counters(&self.bridge)?;
        let plan = firewall::Plan { bridge: &self.bridge, cidr: self.cidr, outbound_nat, open_ports, members, counters: &counters };
        sysctl(&self.bridge, "route_localnet", if firewall::needs_localnet(&plan) { "1" } else { "0" })?;
        let devices = firewall::attached_devices(&plan);
        // Forwarding on an attached device: its original value is kept to be restored.
        let saved_file = self.state_dir.join("forwarding.json");
        let mut saved: BTreeMap<String, String> =
            std::fs::read(&saved_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        for dev in &devices {
            if !saved.contains_key(dev) {
                let was = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/forwarding")).unwrap_or_default();
                saved.insert(dev.clone(), was.trim().to_owned());
            }
            sysctl(dev, "forwarding", "1")?;
        }
        firewall::apply(&firewall::ruleset(&plan))?;
        saved.retain(|dev, was| {
            let keep = devices.contains(dev);
            if !keep && !was.is_empty() {
                let _ = sysctl(dev, "forwarding", was);
            }
            keep
        });
        write_atomic(&saved_file, &serde_json::to_vec_pretty(&saved).unwrap_or_default())
            .map_err(|e| NetworkError::Io { context: "saving forwarding settings".into(), source: e })
    }

    fn save(&self, leases: &Leases) -> Result<(), NetworkError> {
        write_atomic(&self.leases_file, &serde_json::to_vec_pretty(leases).unwrap_or_default())
            .map_err(|e| NetworkError::Io { context: "saving address leases".into(), source: e })
    }

    /// The instance's namespace and host-side veth names. Both are host-global: the namespace
    /// name carries this server's prefix and the veth name hashes the bridge with the id, so two
    /// servers on one host (each with its own bridge) never touch each other's.
    fn names(&self, id: &str) -> (String, String) {
        let hash = hex::encode(&Sha256::digest(format!("{}/{id}", self.bridge).as_bytes())[..5]);
        (format!("{}{id}", self.prefix), format!("bv{hash}"))
    }

    /// The host end of `id`'s veth.
    pub fn host_veth(&self, id: &str) -> String {
        self.legacy_names(id).unwrap_or_else(|| self.names(id)).1
    }

    /// Names an earlier berth gave instances (`berth-<id>`, a veth hashed from the id alone),
    /// when that veth is on this server's bridge: an instance created before an upgrade.
    fn legacy_names(&self, id: &str) -> Option<(String, String)> {
        let veth = format!("bv{}", hex::encode(&Sha256::digest(id.as_bytes())[..5]));
        let on_our_bridge = ip(&["-o", "link", "show", "dev", &veth]).is_ok_and(|l| l.contains(&format!(" master {} ", self.bridge)));
        on_our_bridge.then(|| (format!("berth-{id}"), veth))
    }

    /// Gives `id` an address (the same one again if it has one), a namespace and a veth pair.
    pub fn attach(&self, id: &str) -> Result<Attachment, NetworkError> {
        let address = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let existing = leases.leases.iter().find(|(_, who)| who.as_str() == id).map(|(a, _)| *a);
            match existing {
                Some(a) => a,
                None => {
                    let hosts = 2..u32::try_from(self.cidr.size() - 1).unwrap_or(u32::MAX);
                    let after = if hosts.contains(&leases.last) { leases.last + 1 } else { hosts.start };
                    let order = (after..hosts.end).chain(hosts.start..after);
                    let free = order.map(|n| (n, self.cidr.nth(n))).find(|(_, a)| !leases.leases.contains_key(a));
                    let (n, a) = free.ok_or(NetworkError::Exhausted(self.cidr))?;
                    leases.last = n;
                    leases.leases.insert(a, id.to_owned());
                    self.save(&leases)?;
                    a
                }
            }
        };
        let (ns, host_veth) = self.names(id);
        let netns = PathBuf::from("/run/netns").join(&ns);
        if !netns.exists() {
            ip(&["netns", "add", &ns])?;
        }
        if ip(&["link", "show", "dev", &host_veth]).is_err() {
            ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        }
        ipv4_only(&host_veth);
        ip(&["link", "set", "dev", &host_veth, "master", &self.bridge])?;
        ip(&["link", "set", "dev", &host_veth, "type", "bridge_slave", "isolated", "on"])?;
        ip(&["link", "set", "dev", &host_veth, "up"])?;
        let addr = format!("{address}/{}", self.cidr.prefix);
        if !ip(&["-n", &ns, "-4", "addr", "show", "dev", "eth0"])?.contains(&addr) {
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        }
        ip(&["-n", &ns, "link", "set", "dev", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        // A neighbour entry left from an earlier holder of the address would send the host's
        // packets to a veth that no longer exists until it expires.
        let _ = ip(&["neigh", "flush", "to", &address.to_string(), "dev", &self.bridge]);
        if !ip(&["-n", &ns, "route", "show", "default"])?.contains("default") {
            ip(&["-n", &ns, "route", "add", "default", "via", &self.cidr.gateway().to_string()])?;
        }
        Ok(Attachment { netns, address, host_veth })
    }

    /// Ids that hold a namespace or an address here but are not `known`: left by a create a
    /// crash cut short.
    pub fn orphans(&self, known: impl Fn(&str) -> bool) -> Vec<String> {
        let mut ids: std::collections::BTreeSet<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(&self.prefix)).map(str::to_owned))
            .collect();
        ids.extend(self.leases.lock().unwrap_or_else(|p| p.into_inner()).leases.values().cloned());
        ids.into_iter().filter(|id| !known(id)).collect()
    }

    /// Removes the namespace (and with it the veth pair) and frees the address.
    pub fn detach(&self, id: &str) -> Result<(), NetworkError> {
        if let Some((ns, host_veth)) = self.legacy_names(id) {
            self.remove_link(&ns, &host_veth)?;
        }
        let (ns, host_veth) = self.names(id);
        self.remove_link(&ns, &host_veth)?;
        if let Some(a) = self.lease(id) {
            let _ = ip(&["neigh", "flush", "to", &a.to_string(), "dev", &self.bridge]);
        }
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let before = leases.leases.len();
        leases.leases.retain(|_, who| who != id);
        if leases.leases.len() != before {
            self.save(&leases)?;
        }
        Ok(())
    }

    /// Removes a namespace and its veth pair.
    fn remove_link(&self, ns: &str, host_veth: &str) -> Result<(), NetworkError> {
        if Path::new("/run/netns").join(ns).exists() {
            ip(&["netns", "del", ns])?;
        }
        // Deleting the namespace takes the veth pair with it, asynchronously: a device that
        // vanishes under us is what we wanted.
        if ip(&["link", "show", "dev", host_veth]).is_ok() {
            match ip(&["link", "del", "dev", host_veth]) {
                Err(NetworkError::Ip { stderr, .. }) if stderr.contains("Cannot find device") => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// The address `id` holds, if any.
    pub fn lease(&self, id: &str) -> Option<Ipv4Addr> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).leases.iter().find(|(_, w)| w.as_str() == id).map(|(a, _)| *a)
    }

    /// Whether `spec` fits this host: its CIDR overlaps neither the instance CIDR nor a route of
    /// the host's other than through the device it attaches, and that device exists (a bridge
    /// where one is named). Returns every conflict, named.
    pub fn check(&self, spec: &berth_core::NetworkSpec) -> Result<(), String> {
        use berth_core::network::Attachment;
        let mut problems = Vec::new();
        if spec.cidr.overlaps(&self.cidr) {
            problems.push(format!("cidr {} overlaps the instance CIDR {} (runtime.cidr)", spec.cidr, self.cidr));
        }
        let device = spec.attach.as_ref().map(Attachment::device);
        if let Some(attach) = &spec.attach {
            let dev = attach.device();
            match ip(&["-d", "-o", "link", "show", "dev", dev]) {
                Err(_) => problems.push(format!("there is no interface `{dev}` on this host (see `ip link`)")),
                Ok(line) => {
                    if matches!(attach, Attachment::Bridge(_)) && !line.contains(" bridge ") {
                        problems.push(format!("`{dev}` is not a bridge; attach it with --attach-interface"));
                    }
                    if dev == self.bridge || line.contains(&format!(" master {} ", self.bridge)) {
                        problems.push(format!("`{dev}` is berth's own instance network"));
                    } else if !host_addresses(Some(dev))?.iter().any(|a| spec.cidr.contains(*a)) {
                        problems.push(format!(
                            "the host has no address in {} on `{dev}`, which instances' connections to the LAN are masqueraded to; give it one (`ip addr add {}/{} dev {dev}`)",
                            spec.cidr,
                            spec.cidr.gateway(),
                            spec.cidr.prefix
                        ));
                    }
                }
            }
        }
        let local = host_addresses(None)?;
        for (name, target) in &spec.host_endpoints {
            if !target.ip().is_loopback() && !local.contains(target.ip()) {
                problems.push(format!(
                    "host endpoint `{name}`: {} is not an address of this host; a machine on a LAN is reached through an attached network (--attach-interface, --attach-bridge, --host)",
                    target.ip()
                ));
            }
        }
        let routes = ip(&["-4", "-o", "route", "show", "table", "all"]).map_err(|e| e.to_string())?;
        for line in routes.lines() {
            let Some((dst, dev)) = route_of(line) else { continue };
            if dst.overlaps(&spec.cidr) && dev.as_deref() != device && !(dev.is_none() && dst == self.cidr) {
                let how = dev.map(|d| format!("dev {d}")).unwrap_or_else(|| line.split_whitespace().next().unwrap_or("").to_owned());
                problems.push(format!("cidr {} overlaps the host's route to {dst} ({how})", spec.cidr));
            }
        }
        problems.dedup();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Removes the bridge and the unreachable route (tests; an uninstall).
    pub fn remove_bridge(&self) -> Result<(), NetworkError> {
        if ip(&["link", "show", "dev", &self.bridge]).is_ok() {
            ip(&["link", "del", "dev", &self.bridge])?;
        }
        let _ = ip(&["route", "del", "unreachable", &self.cidr.to_string(), "metric", "4000"]);
        firewall::delete_table("inet", &firewall::guard_table(&self.bridge))?;
        firewall::delete_table("bridge", &firewall::spoof_table(&self.bridge))?;
        firewall::delete_table("ip", &firewall::nat_table(&self.bridge))
    }
}

/// Turns IPv4 forwarding on for the whole host, as outbound NAT needs (the masquerade itself is
/// part of the rules).
pub fn enable_forwarding() -> Result<(), NetworkError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetworkError::Io { context: "enabling IPv4 forwarding".into(), source: e })
}

/// Sets `net.ipv4.conf.<dev>.<key>`.
fn sysctl(dev: &str, key: &str, value: &str) -> Result<(), NetworkError> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/{key}"), value)
        .map_err(|e| NetworkError::Io { context: format!("setting net.ipv4.conf.{dev}.{key} to {value}"), source: e })
}

/// The host's IPv4 addresses, on `dev` or on every device.
fn host_addresses(dev: Option<&str>) -> Result<Vec<Ipv4Addr>, String> {
    let mut args = vec!["-4", "-o", "addr", "show"];
    if let Some(d) = dev {
        args.extend(["dev", d]);
    }
    let out = ip(&args).map_err(|e| e.to_string())?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// The destination and device of one line of `ip -o route show table all`; none for default
/// routes, broadcast and local addresses (a host's own address on an attached device is expected).
fn route_of(line: &str) -> Option<(Cidr, Option<String>)> {
    let mut words = line.split_whitespace().peekable();
    let first = *words.peek()?;
    if matches!(first, "broadcast" | "local" | "multicast" | "anycast" | "nat") {
        return None;
    }
    if matches!(first, "unicast" | "unreachable" | "blackhole" | "prohibit" | "throw") {
        words.next();
    }
    let dst = words.next()?;
    if dst == "default" {
        return None;
    }
    let dst: Cidr = match dst.split_once('/') {
        Some((a, p)) => Cidr::new(a.parse().ok()?, p.parse().ok()?),
        None => Cidr::new(dst.parse().ok()?, 32),
    };
    let rest: Vec<&str> = words.collect();
    let dev = rest.windows(2).find(|w| w[0] == "dev").map(|w| w[1].to_owned());
    Some((dst, dev))
}

/// Keeps IPv6 off a host-side link: instance networking is IPv4, and a link-local address would
/// add routes to the host's tables for every instance. Hosts without IPv6 have no such switch.
fn ipv4_only(dev: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
}

/// `/etc/hosts` and `/etc/resolv.conf` for an instance: its own name, and berth's DNS on its
/// gateway (which relays other names to the host's resolvers where the service's egress allows),
/// with the host's search domains and options.
pub fn etc_files(hostname: &str, address: Option<Ipv4Addr>, gateway: Ipv4Addr) -> (String, String) {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    hosts.push_str(&format!("{}\t{hostname}\n", address.map(|a| a.to_string()).unwrap_or_else(|| "127.0.1.1".into())));
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut resolv = format!("nameserver {gateway}\n");
    for l in host_resolv.lines().map(str::trim).filter(|l| l.starts_with("search") || l.starts_with("options")) {
        resolv.push_str(l);
        resolv.push('\n');
    }
    (hosts, resolv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read() {
        let r = |l: &str| route_of(l).map(|(c, d)| (c.to_string(), d));
        assert_eq!(r("10.90.0.0/24 dev br-db proto kernel scope link src 10.90.0.1"), Some(("10.90.0.0/24".into(), Some("br-db".into()))));
        assert_eq!(r("unreachable 10.77.0.0/16 metric 4000"), Some(("10.77.0.0/16".into(), None)));
        assert_eq!(r("192.168.5.9 via 10.0.0.1 dev eth0"), Some(("192.168.5.9/32".into(), Some("eth0".into()))));
        assert_eq!(r("default via 10.0.0.1 dev eth0"), None);
        assert_eq!(r("local 10.90.0.1 dev br-db table local proto kernel scope host src 10.90.0.1"), None);
        assert_eq!(r("broadcast 10.90.0.255 dev br-db table local proto kernel scope link src 10.90.0.1"), None);
    }

    #[test]
    fn hosts_file_names_the_instance() {
        let (hosts, resolv) = etc_files("web-1", Some(Ipv4Addr::new(10, 88, 0, 2)), Ipv4Addr::new(10, 88, 0, 1));
        assert!(hosts.ends_with("10.88.0.2\tweb-1\n"));
        assert!(resolv.starts_with("nameserver 10.88.0.1\n") && resolv.matches("nameserver").count() == 1, "{resolv}");
    }
}
