//! Instance networking on one host: a Linux bridge with the gateway address (so the host
//! reaches every `instance-ip:port`), one network namespace and veth pair per instance, and an
//! address from a persistent IPAM. Bridge ports are isolated, so instances cannot reach each
//! other directly — only through the host (the router) — and the host guard
//! ([`super::firewall`]) keeps them from opening connections to the host itself. An
//! `unreachable` route for the whole CIDR keeps traffic for it on this host even when the bridge
//! is gone. Outbound NAT is on by default for public egress (never in tests). The host side is
//! IPv4 only: the bridge and the host ends of the veths have IPv6 turned off.
//!
//! Links, addresses, routes and namespaces are managed over rtnetlink (`netlink.rs`): no `ip`
//! process runs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use berth_core::network::Cidr;
use sha2::{Digest as _, Sha256};

use super::files::write_atomic;
use super::firewall;
use super::netlink::{self, Rtnl};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no free address left in {0}")]
    Exhausted(Cidr),
    #[error("loading nftables rules failed: {0}")]
    Nft(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    Netlink(#[from] super::netlink::NetlinkError),
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
        let mut host = Rtnl::new()?;
        // Keep traffic for the CIDR on this host whatever happens to the bridge.
        host.add_unreachable(self.cidr.addr, self.cidr.prefix, UNREACHABLE_METRIC)?;
        host.add_bridge(&self.bridge)?;
        // A fixed address (locally administered, from the bridge's name): the gateway's MAC
        // must not change when an instance's veth joins or leaves.
        let hash = Sha256::digest(format!("berth bridge {}", self.bridge).as_bytes());
        host.set_mac(&self.bridge, [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]])?;
        ipv4_only(&self.bridge);
        host.add_address(&self.bridge, self.cidr.gateway(), self.cidr.prefix)?;
        host.set_up(&self.bridge)?;
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

    /// Loads the rules for `members` (every instance on the bridge), counters counting on;
    /// turns on forwarding on the devices of the LANs they reach (restoring it on those no
    /// longer reached) and routing to loopback when a host endpoint needs it.
    pub fn apply_rules(
        &self,
        members: Vec<firewall::Member<'_>>,
        outbound_nat: bool,
        open_ports: &[(firewall::Proto, u16)],
    ) -> Result<(), NetworkError> {
        let _one_at_a_time = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = firewall::loaded(&self.bridge)?;
        let plan = firewall::Plan { bridge: &self.bridge, cidr: self.cidr, outbound_nat, open_ports, members, loaded: &loaded };
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

    /// Turns IPv4 forwarding on again on the bridge and the attached devices in use where
    /// something else on the host turned it off (writing `net.ipv4.ip_forward`, say, which
    /// resets every interface): the devices it was off on.
    pub fn keep_forwarding(&self) -> Vec<String> {
        let saved: BTreeMap<String, String> =
            std::fs::read(self.state_dir.join("forwarding.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let mut fixed = Vec::new();
        for dev in std::iter::once(self.bridge.clone()).chain(saved.into_keys()) {
            let now = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/forwarding")).unwrap_or_default();
            // A device that is gone has no value: nothing to turn on.
            if now.trim() == "0" && sysctl(&dev, "forwarding", "1").is_ok() {
                fixed.push(dev);
            }
        }
        fixed
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
        // Only an instance with a namespace of the old name can be one: the common case asks
        // nothing of the kernel.
        let ns = format!("berth-{id}");
        if !Path::new("/run/netns").join(&ns).exists() {
            return None;
        }
        let veth = format!("bv{}", hex::encode(&Sha256::digest(id.as_bytes())[..5]));
        let mut host = Rtnl::new().ok()?;
        let bridge = host.link_index(&self.bridge).ok()??;
        let on_our_bridge = host.link(&veth).ok()?.is_some_and(|l| l.master == Some(bridge));
        on_our_bridge.then_some((ns, veth))
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
        let netns = netlink::create_netns(&ns)?;
        let mut host = Rtnl::new()?;
        if host.link_index(&host_veth)?.is_none() {
            let peer_ns =
                std::fs::File::open(&netns).map_err(|e| NetworkError::Io { context: format!("opening {}", netns.display()), source: e })?;
            host.add_veth(&host_veth, "eth0", &peer_ns)?;
        }
        ipv4_only(&host_veth);
        host.attach_isolated(&host_veth, &self.bridge)?;
        let mut inside = Rtnl::in_netns(&netns)?;
        inside.add_address("eth0", address, self.cidr.prefix)?;
        inside.set_up("eth0")?;
        inside.set_up("lo")?;
        inside.add_default_route(self.cidr.gateway())?;
        // A neighbour entry left from an earlier holder of the address would send the host's
        // packets to a veth that no longer exists until it expires.
        host.forget_neighbour(&self.bridge, address)?;
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
            Rtnl::new()?.forget_neighbour(&self.bridge, a)?;
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
        netlink::delete_netns(ns)?;
        // Deleting the namespace takes the veth pair with it, asynchronously: a device that
        // vanishes under us is what we wanted.
        let mut host = Rtnl::new()?;
        if host.link_index(host_veth)?.is_some() {
            match host.delete_link(host_veth) {
                Err(e) if e.errno() == Some(libc::ENODEV) => {}
                other => other?,
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
        let mut host = Rtnl::new().map_err(|e| e.to_string())?;
        let links = host.links().map_err(|e| e.to_string())?;
        let addresses = host.all_addresses().map_err(|e| e.to_string())?;
        let our_bridge = links.iter().find(|l| l.name == self.bridge).map(|l| l.index);
        if let Some(attach) = &spec.attach {
            let dev = attach.device();
            match links.iter().find(|l| l.name == dev) {
                None => problems.push(format!("there is no interface `{dev}` on this host (see `ip link`)")),
                Some(link) => {
                    if matches!(attach, Attachment::Bridge(_)) && !link.is_bridge {
                        problems.push(format!("`{dev}` is not a bridge; attach it with --attach-interface"));
                    }
                    if dev == self.bridge || (link.master.is_some() && link.master == our_bridge) {
                        problems.push(format!("`{dev}` is berth's own instance network"));
                    } else if !addresses.iter().any(|(i, a, _)| *i == link.index && spec.cidr.contains(*a)) {
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
        for (name, target) in &spec.host_endpoints {
            if !target.ip().is_loopback() && !addresses.iter().any(|(_, a, _)| a == target.ip()) {
                problems.push(format!(
                    "host endpoint `{name}`: {} is not an address of this host; a machine on a LAN is reached through an attached network (--attach-interface, --attach-bridge, --host)",
                    target.ip()
                ));
            }
        }
        let routes = host.routes().map_err(|e| e.to_string())?;
        let name_of = |i: u32| links.iter().find(|l| l.index == i).map(|l| l.name.clone());
        problems.extend(route_conflicts(&routes, &name_of, spec.cidr, device, self.cidr));
        problems.dedup();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Removes the bridge and the unreachable route (tests; an uninstall).
    pub fn remove_bridge(&self) -> Result<(), NetworkError> {
        let mut host = Rtnl::new()?;
        if host.link_index(&self.bridge)?.is_some() {
            host.delete_link(&self.bridge)?;
        }
        host.delete_unreachable(self.cidr.addr, self.cidr.prefix, UNREACHABLE_METRIC)?;
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

/// How `routes` of the host conflict with a network on `cidr` attached through `device`: a route
/// overlapping it through another device, or of another kind (unreachable, blackhole). Default
/// routes, the host's own and broadcast addresses, and berth's own unreachable route for the
/// instance CIDR do not count.
fn route_conflicts(
    routes: &[netlink::Route],
    name_of: &dyn Fn(u32) -> Option<String>,
    cidr: Cidr,
    device: Option<&str>,
    instances: Cidr,
) -> Vec<String> {
    use netlink_packet_route::route::RouteType;
    let mut out = Vec::new();
    for r in routes {
        if r.prefix == 0
            || matches!(r.kind, RouteType::Local | RouteType::Broadcast | RouteType::Multicast | RouteType::Anycast | RouteType::Nat)
        {
            continue;
        }
        let dst = Cidr::new(r.destination, r.prefix);
        let dev = r.oif.and_then(name_of);
        if !dst.overlaps(&cidr) || (dev.is_some() && dev.as_deref() == device) || (dev.is_none() && dst == instances) {
            continue;
        }
        let how = match (&dev, r.kind) {
            (Some(d), _) => format!("dev {d}"),
            (None, RouteType::Unreachable) => "unreachable".into(),
            (None, RouteType::BlackHole) => "blackhole".into(),
            (None, RouteType::Prohibit) => "prohibit".into(),
            (None, kind) => format!("{kind:?}").to_lowercase(),
        };
        out.push(format!("cidr {cidr} overlaps the host's route to {dst} ({how})"));
    }
    out
}

/// The metric of the `unreachable` route for the instance CIDR: below any real route to it.
const UNREACHABLE_METRIC: u32 = 4000;

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
    fn route_conflicts_are_named() {
        use netlink_packet_route::route::RouteType;
        let route = |d: [u8; 4], prefix: u8, oif: Option<u32>, kind: RouteType| netlink::Route {
            destination: Ipv4Addr::from(d),
            prefix,
            oif,
            kind,
        };
        let names = |i: u32| [(1, "eth0"), (2, "br-db"), (3, "eth1")].iter().find(|(n, _)| *n == i).map(|(_, s)| s.to_string());
        let routes = [
            route([0, 0, 0, 0], 0, Some(1), RouteType::Unicast),
            route([10, 90, 0, 0], 24, Some(2), RouteType::Unicast),
            route([10, 90, 0, 1], 32, Some(2), RouteType::Local),
            route([10, 77, 0, 0], 16, None, RouteType::Unreachable),
            route([10, 90, 0, 128], 25, Some(3), RouteType::Unicast),
            route([10, 0, 0, 0], 8, None, RouteType::BlackHole),
        ];
        let cidr = |s: &str| s.parse::<Cidr>().unwrap_or(Cidr::new(Ipv4Addr::UNSPECIFIED, 0));
        let found = route_conflicts(&routes, &names, cidr("10.90.0.0/24"), Some("br-db"), cidr("10.77.0.0/16"));
        assert_eq!(
            found,
            [
                "cidr 10.90.0.0/24 overlaps the host's route to 10.90.0.128/25 (dev eth1)",
                "cidr 10.90.0.0/24 overlaps the host's route to 10.0.0.0/8 (blackhole)"
            ]
        );
        let found = route_conflicts(&routes, &names, cidr("10.77.1.0/24"), None, cidr("10.77.0.0/16"));
        assert_eq!(
            found,
            ["cidr 10.77.1.0/24 overlaps the host's route to 10.0.0.0/8 (blackhole)"],
            "berth's own unreachable route is the instance CIDR's check"
        );
    }

    #[test]
    fn hosts_file_names_the_instance() {
        let (hosts, resolv) = etc_files("web-1", Some(Ipv4Addr::new(10, 88, 0, 2)), Ipv4Addr::new(10, 88, 0, 1));
        assert!(hosts.ends_with("10.88.0.2\tweb-1\n"));
        assert!(resolv.starts_with("nameserver 10.88.0.1\n") && resolv.matches("nameserver").count() == 1, "{resolv}");
    }
}
