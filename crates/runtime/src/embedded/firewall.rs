//! The host's packet filter for instances, through nftables' JSON interface (`nft -j -f -`).
//! Rulesets are built as data, never as command strings. The whole of berth's rules for a bridge
//! is rebuilt from the instances' network settings and loaded in one transaction, so reloading
//! is idempotent, never leaves a gap, and drops what no instance needs any more. The filter
//! table stays: its rules are flushed and made again, chains and counters no longer needed are
//! deleted, so its named counters count on through a reload and lose nothing. The NAT and
//! bridge tables, which count nothing, are added, deleted and made again. No rule looks
//! anything up in a verdict map: the kernel retires a map's elements with the rule that holds
//! it, so a packet meeting the old rule as a reload commits would miss — a connection an
//! instance may open refused, a forged frame let through. Plain sets are used instead.
//!
//! - `inet berth_<bridge>`: default deny for instances. Answers to connections the host opened
//!   (the router, health checks) pass. An instance may open connections to the ports open to all
//!   on the gateway (berth's DNS and router), to host endpoints published to it (DNATed, below),
//!   to the LANs of its networks (unless its egress is `none`), and to the internet when its
//!   egress is `public` and outbound NAT is on. Everything else is rejected at once (a TCP reset
//!   for TCP, which no ICMP rate limit delays; ICMP administratively prohibited for the rest, so a
//!   blocked call fails fast) and counted per service and destination class: `host`, `instances`, `metadata`, `link_local`, `private`, `internet`.
//!   Nothing from outside opens a connection into an instance.
//! - `ip berth_nat_<bridge>`: host endpoints (a port of the gateway DNATed to a service on the
//!   host, for the instances allowed only), masquerade towards each attached LAN, and outbound
//!   NAT (off by default).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use berth_core::network::{Cidr, Egress};
use serde_json::{json, Value};

use super::network::NetworkError;
use crate::InstanceNetwork;

/// The name of the filter table for `bridge`.
pub fn guard_table(bridge: &str) -> String {
    format!("berth_{bridge}")
}

/// The name of the bridge-level table for `bridge`, which keeps each instance to its own address.
pub fn spoof_table(bridge: &str) -> String {
    format!("berth_br_{bridge}")
}

/// The name of the NAT table for `bridge`.
pub fn nat_table(bridge: &str) -> String {
    format!("berth_nat_{bridge}")
}

/// Destination classes of denied connections, most specific first.
pub const DENIED_CLASSES: &[&str] = &["host", "instances", "metadata", "link_local", "private", "internet"];

/// Private and shared address ranges an instance reaches only through an attached network.
const PRIVATE_RANGES: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
];

/// The group of one-off instances (`berth run`), which belong to no service.
const ONE_OFF: &str = "run";

/// One instance as the rules see it.
pub struct Member<'a> {
    pub address: Ipv4Addr,
    /// The host end of its veth: what it sends arrives there.
    pub veth: String,
    pub network: &'a InstanceNetwork,
}

impl Member<'_> {
    fn group(&self) -> &str {
        if self.network.group.is_empty() {
            ONE_OFF
        } else {
            &self.network.group
        }
    }
}

/// A transport protocol of a port open on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Everything the rules of one bridge are made from.
pub struct Plan<'a> {
    pub bridge: &'a str,
    /// The instance CIDR; its first address, the gateway, is the bridge's.
    pub cidr: Cidr,
    pub outbound_nat: bool,
    /// Ports of the gateway every instance may reach (berth's DNS and router).
    pub open_ports: &'a [(Proto, u16)],
    pub members: Vec<Member<'a>>,
    /// What the filter table holds now.
    pub loaded: &'a Loaded,
}

/// The chains and named counters of a bridge's filter table as loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    pub chains: BTreeSet<String>,
    /// name → (packets, bytes).
    pub counters: BTreeMap<String, (u64, u64)>,
}

/// The name of the counter of `group`'s connections denied towards `class`.
pub fn counter_name(group: &str, class: &str) -> String {
    format!("denied_{group}_{class}")
}

/// The group and class a counter counts, from its name.
pub fn counter_of(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("denied_")?;
    DENIED_CLASSES.iter().find_map(|class| rest.strip_suffix(class).and_then(|g| g.strip_suffix('_')).map(|g| (g, *class)))
}

fn is(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn field(protocol: &str, name: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": name}})
}

fn prefix(addr: Ipv4Addr, len: u8) -> Value {
    json!({"prefix": {"addr": addr.to_string(), "len": len}})
}

fn cidr(c: Cidr) -> Value {
    prefix(c.addr, c.prefix)
}

fn established() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})
}

/// Refuses at once: jumps to the `refuse` chain (a TCP reset for TCP, which no rate limit
/// holds back; ICMP administratively prohibited for the rest).
fn reject() -> Value {
    json!({"jump": {"target": "refuse"}})
}

fn accept() -> Value {
    json!({"accept": null})
}

fn addresses(members: &[&Member<'_>]) -> Value {
    json!({"set": members.iter().map(|m| m.address.to_string()).collect::<Vec<_>>()})
}

/// The ruleset of `plan`: both tables, in one transaction.
pub fn ruleset(plan: &Plan<'_>) -> Value {
    let mut cmds = Vec::new();
    let (filter, nat, spoof) = (guard_table(plan.bridge), nat_table(plan.bridge), spoof_table(plan.bridge));
    let t = json!({"family": "inet", "name": filter});
    cmds.extend([json!({"add": {"table": t}}), json!({"flush": {"table": t}})]);
    for (family, table) in [("ip", &nat), ("bridge", &spoof)] {
        let t = json!({"family": family, "name": table});
        cmds.extend([json!({"add": {"table": t}}), json!({"delete": {"table": t}}), json!({"add": {"table": t}})]);
    }
    filter_table(plan, &filter, &mut cmds);
    nat_rules(plan, &nat, &mut cmds);
    spoof_rules(plan, &spoof, &mut cmds);
    json!({ "nftables": cmds })
}

/// Each instance sends from its own address only: IPv4 and ARP with another source, and any
/// IPv6, are dropped as they enter the bridge, so no instance takes on another's rules. A frame
/// from an instance's port is checked by two lookups (its port among the instances', its port
/// and source address among theirs), so the cost per frame does not grow with the instances
/// (the hook sees every bridge's frames, the attached LANs' too).
fn spoof_rules(plan: &Plan<'_>, table: &str, cmds: &mut Vec<Value>) {
    let chain = json!({"family": "bridge", "table": table, "name": "prerouting", "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"});
    cmds.push(json!({"add": {"chain": chain}}));
    if plan.members.is_empty() {
        return;
    }
    let rule = |expr: Vec<Value>| json!({"add": {"rule": {"family": "bridge", "table": table, "chain": "prerouting", "expr": expr}}});
    let ether = |kind: &str| is(field("ether", "type"), kind.into());
    let from_instances = json!({"match": {"op": "==", "left": meta("iifname"), "right": {"set": plan.members.iter().map(|m| m.veth.clone()).collect::<Vec<_>>()}}});
    let own: Vec<Value> = plan.members.iter().map(|m| json!({"concat": [m.veth, m.address.to_string()]})).collect();
    let not_own = |source: Value| json!({"match": {"op": "!=", "left": {"concat": [meta("iifname"), source]}, "right": {"set": own}}});
    cmds.push(rule(vec![from_instances.clone(), ether("ip"), not_own(field("ip", "saddr")), json!({"drop": null})]));
    cmds.push(rule(vec![from_instances.clone(), ether("arp"), not_own(field("arp", "saddr ip")), json!({"drop": null})]));
    cmds.push(rule(vec![from_instances, ether("ip6"), json!({"drop": null})]));
}

fn filter_table(plan: &Plan<'_>, table: &str, cmds: &mut Vec<Value>) {
    let br = plan.bridge;
    let gateway = plan.cidr.gateway();
    let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": "inet", "table": table, "chain": chain, "expr": expr}}});
    // Counters first: rules refer to them. Adding one that is loaded keeps its values. Those of
    // services with no instance now are kept while they count something: a service whose
    // instances failed still shows what they tried. The rest go, as the rules that counted them
    // were flushed.
    let groups: BTreeSet<&str> = plan.members.iter().map(Member::group).collect();
    let mut names: BTreeSet<String> = groups.iter().flat_map(|g| DENIED_CLASSES.iter().map(move |c| counter_name(g, c))).collect();
    let loaded = &plan.loaded.counters;
    names.extend(loaded.iter().filter(|(n, (packets, _))| *packets > 0 && counter_of(n).is_some()).map(|(n, _)| n.clone()));
    for name in loaded.keys().filter(|n| !names.contains(*n)) {
        cmds.push(json!({"delete": {"counter": {"family": "inet", "table": table, "name": name}}}));
    }
    for name in names {
        cmds.push(json!({"add": {"counter": {"family": "inet", "table": table, "name": name}}}));
    }
    for (name, hook) in [("input", "input"), ("forward", "forward")] {
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": table, "name": name, "type": "filter", "hook": hook, "prio": 0, "policy": "accept"}}}));
    }
    cmds.push(json!({"add": {"chain": {"family": "inet", "table": table, "name": "refuse"}}}));
    cmds.push(rule("refuse", vec![is(meta("l4proto"), "tcp".into()), json!({"reject": {"type": "tcp reset"}})]));
    cmds.push(rule("refuse", vec![json!({"reject": {"type": "icmpx", "expr": "admin-prohibited"}})]));
    // One chain per distinct policy: instances of one service share it (a deployment may run
    // two policies side by side for a while). Its instances are found by a plain set of their
    // addresses (see the module's notes on reloads): one rule per policy.
    let mut policies: Vec<(&str, &InstanceNetwork, Vec<&Member<'_>>)> = Vec::new();
    for m in &plan.members {
        match policies.iter_mut().find(|(g, n, _)| *g == m.group() && *n == m.network) {
            Some((_, _, ms)) => ms.push(m),
            None => policies.push((m.group(), m.network, vec![m])),
        }
    }
    let mut by_source = Vec::new();
    let mut chains: BTreeSet<String> = ["input", "forward", "refuse"].map(String::from).into();
    for (i, (group, policy, members)) in policies.iter().enumerate() {
        let chain = format!("from_{group}_{i}");
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": table, "name": chain}}}));
        chains.insert(chain.clone());
        by_source.push(vec![is(field("ip", "saddr"), addresses(members)), json!({"jump": {"target": chain}})]);
        let denied = |class: &str| vec![json!({"counter": counter_name(group, class)}), reject()];
        let local = json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
        cmds.push(rule(&chain, [vec![local], denied("host")].concat()));
        if policy.egress != Egress::None {
            for n in &policy.networks {
                if let Some(a) = &n.attach {
                    cmds.push(rule(&chain, vec![is(field("ip", "daddr"), cidr(n.cidr)), is(meta("oifname"), a.device().into()), accept()]));
                }
            }
        }
        cmds.push(rule(&chain, [vec![is(field("ip", "daddr"), cidr(plan.cidr))], denied("instances")].concat()));
        cmds.push(rule(
            &chain,
            [vec![is(field("ip", "daddr"), Ipv4Addr::new(169, 254, 169, 254).to_string().into())], denied("metadata")].concat(),
        ));
        cmds.push(rule(&chain, [vec![is(field("ip", "daddr"), prefix(Ipv4Addr::new(169, 254, 0, 0), 16))], denied("link_local")].concat()));
        let private = json!({"set": PRIVATE_RANGES.iter().map(|(a, l)| prefix(*a, *l)).collect::<Vec<_>>()});
        cmds.push(rule(&chain, [vec![is(field("ip", "daddr"), private)], denied("private")].concat()));
        if policy.egress == Egress::Public && plan.outbound_nat {
            cmds.push(rule(&chain, vec![accept()]));
        }
        cmds.push(rule(&chain, denied("internet")));
    }
    let from_instances = is(meta("iifname"), br.into());
    let mut input = vec![vec![from_instances.clone(), established(), accept()]];
    for (proto, port) in plan.open_ports {
        let p = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        input.push(vec![
            from_instances.clone(),
            is(field("ip", "daddr"), gateway.to_string().into()),
            is(field(p, "dport"), (*port).into()),
            accept(),
        ]);
    }
    // Host endpoints: DNATed in prerouting, for the instances allowed only.
    input.push(vec![from_instances.clone(), json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}), accept()]);
    let mut forward =
        vec![vec![from_instances.clone(), established(), accept()], vec![is(meta("oifname"), br.into()), established(), accept()]];
    for policy in by_source {
        input.push([vec![from_instances.clone()], policy.clone()].concat());
        forward.push([vec![from_instances.clone()], policy].concat());
    }
    // An address no instance holds, and anything from outside towards an instance.
    input.push(vec![from_instances.clone(), reject()]);
    forward.push(vec![from_instances, reject()]);
    forward.push(vec![is(meta("oifname"), br.into()), reject()]);
    cmds.extend(input.into_iter().map(|e| rule("input", e)));
    cmds.extend(forward.into_iter().map(|e| rule("forward", e)));
    // The chains of policies gone (flushed above: nothing jumps to them).
    for name in plan.loaded.chains.difference(&chains) {
        cmds.push(json!({"delete": {"chain": {"family": "inet", "table": table, "name": name}}}));
    }
}

fn nat_rules(plan: &Plan<'_>, table: &str, cmds: &mut Vec<Value>) {
    let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": "ip", "table": table, "chain": chain, "expr": expr}}});
    for (name, hook, prio) in [("prerouting", "prerouting", -100), ("postrouting", "postrouting", 100)] {
        cmds.push(json!({"add": {"chain": {"family": "ip", "table": table, "name": name, "type": "nat", "hook": hook, "prio": prio, "policy": "accept"}}}));
    }
    // Each host endpoint, for the instances of the networks publishing it.
    let mut endpoints: BTreeMap<(u16, std::net::SocketAddrV4), Vec<&Member<'_>>> = BTreeMap::new();
    let mut devices = BTreeSet::new();
    for m in plan.members.iter().filter(|m| m.network.egress != Egress::None) {
        for n in &m.network.networks {
            for target in n.host_endpoints.values() {
                endpoints.entry((target.port(), *target)).or_default().push(m);
            }
            if let Some(a) = &n.attach {
                devices.insert(a.device().to_owned());
            }
        }
    }
    let gateway = plan.cidr.gateway().to_string();
    for ((port, target), members) in &endpoints {
        cmds.push(rule(
            "prerouting",
            vec![
                is(meta("iifname"), plan.bridge.into()),
                is(field("ip", "saddr"), addresses(members)),
                is(field("ip", "daddr"), gateway.clone().into()),
                is(field("tcp", "dport"), (*port).into()),
                json!({"dnat": {"addr": target.ip().to_string(), "port": target.port()}}),
            ],
        ));
    }
    let from_instances = is(field("ip", "saddr"), cidr(plan.cidr));
    for dev in &devices {
        cmds.push(rule("postrouting", vec![from_instances.clone(), is(meta("oifname"), dev.as_str().into()), json!({"masquerade": null})]));
    }
    if plan.outbound_nat {
        cmds.push(rule(
            "postrouting",
            vec![
                from_instances,
                json!({"match": {"op": "!=", "left": meta("oifname"), "right": plan.bridge}}),
                json!({"masquerade": null}),
            ],
        ));
    }
}

/// Whether some host endpoint of the plan points at a loopback address (the bridge must then
/// route to 127.0.0.0/8).
pub fn needs_localnet(plan: &Plan<'_>) -> bool {
    plan.members.iter().flat_map(|m| &m.network.networks).flat_map(|n| n.host_endpoints.values()).any(|t| t.ip().is_loopback())
}

/// The host devices of the LANs the plan's instances reach.
pub fn attached_devices(plan: &Plan<'_>) -> BTreeSet<String> {
    plan.members
        .iter()
        .filter(|m| m.network.egress != Egress::None)
        .flat_map(|m| &m.network.networks)
        .filter_map(|n| n.attach.as_ref().map(|a| a.device().to_owned()))
        .collect()
}

fn nft(args: &[&str], input: Option<&[u8]>) -> Result<String, NetworkError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Io { context: "running nft (install nftables: apt-get install nftables)".into(), source: e })?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin.write_all(input).map_err(|e| NetworkError::Io { context: "loading an nftables ruleset".into(), source: e })?;
    }
    let out = child.wait_with_output().map_err(|e| NetworkError::Io { context: "loading an nftables ruleset".into(), source: e })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Loads a ruleset built by this module.
pub fn apply(ruleset: &Value) -> Result<(), NetworkError> {
    nft(&["-j", "-f", "-"], Some(ruleset.to_string().as_bytes())).map(drop)
}

/// The named counters of `bridge`'s filter table: name → (packets, bytes). None when the table
/// does not exist yet (an empty map).
pub fn counters(bridge: &str) -> Result<BTreeMap<String, (u64, u64)>, NetworkError> {
    Ok(listed(&["counters", "table", "inet", &guard_table(bridge)])?.counters)
}

/// What `bridge`'s filter table holds: nothing when it does not exist yet.
pub fn loaded(bridge: &str) -> Result<Loaded, NetworkError> {
    listed(&["table", "inet", &guard_table(bridge)])
}

/// The chains and counters `nft list <what>` shows.
fn listed(what: &[&str]) -> Result<Loaded, NetworkError> {
    let out = match nft(&[&["-j", "list"], what].concat(), None) {
        Ok(out) => out,
        Err(NetworkError::Nft(msg)) if msg.contains("No such file or directory") => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let listed: Value = serde_json::from_str(&out).map_err(|e| NetworkError::Nft(format!("reading nft's listing: {e}")))?;
    let mut loaded = Loaded::default();
    for o in listed["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = o.get("counter") {
            let (packets, bytes) = (c["packets"].as_u64().unwrap_or(0), c["bytes"].as_u64().unwrap_or(0));
            loaded.counters.extend(c["name"].as_str().map(|n| (n.to_owned(), (packets, bytes))));
        } else if let Some(name) = o.get("chain").and_then(|c| c["name"].as_str()) {
            loaded.chains.insert(name.to_owned());
        }
    }
    Ok(loaded)
}

/// Whether `bridge`'s filter table is loaded.
pub fn exists(bridge: &str) -> Result<bool, NetworkError> {
    match nft(&["list", "table", "inet", &guard_table(bridge)], None) {
        Ok(_) => Ok(true),
        Err(NetworkError::Nft(msg)) if msg.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `table` of `family`, if it exists.
pub fn delete_table(family: &str, table: &str) -> Result<(), NetworkError> {
    let cmd = json!({"nftables": [{"delete": {"table": {"family": family, "name": table}}}]});
    match nft(&["-j", "-f", "-"], Some(cmd.to_string().as_bytes())) {
        Err(NetworkError::Nft(msg)) if msg.contains("No such file or directory") => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::network::{Attachment, NetworkSpec};

    fn lines(ruleset: &Value) -> String {
        ruleset["nftables"].as_array().into_iter().flatten().map(|c| format!("{c}\n")).collect()
    }

    #[test]
    fn counters_are_named_by_group_and_class() {
        assert_eq!(counter_of(&counter_name("web-app", "link_local")), Some(("web-app", "link_local")));
        assert_eq!(counter_of(&counter_name("a_b", "host")), Some(("a_b", "host")));
        assert_eq!(counter_of("denied_web"), None);
        assert_eq!(counter_of("other"), None);
    }

    #[test]
    fn no_instance_means_the_guard_alone() {
        let none = Loaded::default();
        let plan = Plan {
            bridge: "berth0",
            cidr: "10.77.0.0/16".parse().unwrap_or(Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
            outbound_nat: false,
            open_ports: &[(Proto::Udp, 53)],
            members: vec![],
            loaded: &none,
        };
        expect_test::expect![[r#"
            {"add":{"table":{"family":"inet","name":"berth_berth0"}}}
            {"flush":{"table":{"family":"inet","name":"berth_berth0"}}}
            {"add":{"table":{"family":"ip","name":"berth_nat_berth0"}}}
            {"delete":{"table":{"family":"ip","name":"berth_nat_berth0"}}}
            {"add":{"table":{"family":"ip","name":"berth_nat_berth0"}}}
            {"add":{"table":{"family":"bridge","name":"berth_br_berth0"}}}
            {"delete":{"table":{"family":"bridge","name":"berth_br_berth0"}}}
            {"add":{"table":{"family":"bridge","name":"berth_br_berth0"}}}
            {"add":{"chain":{"family":"inet","hook":"input","name":"input","policy":"accept","prio":0,"table":"berth_berth0","type":"filter"}}}
            {"add":{"chain":{"family":"inet","hook":"forward","name":"forward","policy":"accept","prio":0,"table":"berth_berth0","type":"filter"}}}
            {"add":{"chain":{"family":"inet","name":"refuse","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"refuse","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"reject":{"type":"tcp reset"}}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"refuse","expr":[{"reject":{"expr":"admin-prohibited","type":"icmpx"}}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"10.77.0.1"}},{"match":{"left":{"payload":{"field":"dport","protocol":"udp"}},"op":"==","right":53}},{"accept":null}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"match":{"left":{"ct":{"key":"status"}},"op":"in","right":"dnat"}},{"accept":null}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"jump":{"target":"refuse"}}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"forward","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"forward","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"berth0"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"forward","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"jump":{"target":"refuse"}}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"forward","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"berth0"}},{"jump":{"target":"refuse"}}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"chain":{"family":"ip","hook":"prerouting","name":"prerouting","policy":"accept","prio":-100,"table":"berth_nat_berth0","type":"nat"}}}
            {"add":{"chain":{"family":"ip","hook":"postrouting","name":"postrouting","policy":"accept","prio":100,"table":"berth_nat_berth0","type":"nat"}}}
            {"add":{"chain":{"family":"bridge","hook":"prerouting","name":"prerouting","policy":"accept","prio":-300,"table":"berth_br_berth0","type":"filter"}}}
        "#]]
        .assert_eq(&lines(&ruleset(&plan)));
    }

    #[test]
    fn a_service_on_a_network_reaches_its_lan_and_endpoints_only() {
        let db = NetworkSpec {
            name: "db".into(),
            cidr: "10.90.0.0/24".parse().unwrap_or(Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
            attach: Some(Attachment::Bridge("br-db".into())),
            host_endpoints: [("mysql".to_owned(), "127.0.0.1:3306".parse().unwrap_or(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))]
                .into(),
            hosts: BTreeMap::new(),
        };
        let web = InstanceNetwork { group: "web".into(), egress: Egress::Networks, networks: vec![db] };
        let loaded = Loaded {
            chains: ["input", "forward", "refuse", "from_web_0", "from_gone_1"].map(String::from).into(),
            counters: [
                (counter_name("web", "private"), (7, 420)),
                (counter_name("gone", "host"), (2, 120)),
                (counter_name("idle", "host"), (0, 0)),
            ]
            .into(),
        };
        let plan = Plan {
            bridge: "berth0",
            cidr: "10.77.0.0/16".parse().unwrap_or(Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
            outbound_nat: true,
            open_ports: &[],
            members: vec![
                Member { address: Ipv4Addr::new(10, 77, 0, 2), veth: "bv2".into(), network: &web },
                Member { address: Ipv4Addr::new(10, 77, 0, 3), veth: "bv3".into(), network: &web },
            ],
            loaded: &loaded,
        };
        let text = lines(&ruleset(&plan));
        let has = |needle: &str| assert!(text.contains(needle), "no `{needle}` in\n{text}");
        // The filter table is kept, its rules made again: its counters count on (adding a loaded
        // one keeps its values). A counter of nothing, for a service with no instance, and the
        // chain of a policy gone are dropped.
        has(r#"{"add":{"table":{"family":"inet","name":"berth_berth0"}}}
{"flush":{"table":{"family":"inet","name":"berth_berth0"}}}
{"add":{"table":{"family":"ip","name":"berth_nat_berth0"}}}"#);
        assert!(!text.contains(r#"{"delete":{"table":{"family":"inet""#), "{text}");
        has(r#"{"add":{"counter":{"family":"inet","name":"denied_web_private","table":"berth_berth0"}}}"#);
        has(r#"{"add":{"counter":{"family":"inet","name":"denied_gone_host","table":"berth_berth0"}}}"#);
        has(r#"{"delete":{"counter":{"family":"inet","name":"denied_idle_host","table":"berth_berth0"}}}"#);
        assert!(!text.contains(r#""add":{"counter":{"family":"inet","name":"denied_idle_host""#), "{text}");
        has(r#"{"delete":{"chain":{"family":"inet","name":"from_gone_1","table":"berth_berth0"}}}"#);
        assert_eq!(text.matches(r#"{"delete":{"chain""#).count(), 1, "{text}");
        // Its instances found by a plain set of their addresses (a reload never makes a packet
        // miss it), in both hooks.
        let by_source = r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"set":["10.77.0.2","10.77.0.3"]}}},{"jump":{"target":"from_web_0"}}"#;
        assert_eq!(text.matches(by_source).count(), 2, "{text}");
        assert!(!text.contains("vmap"), "no verdict map: a reload retires its elements under packets in flight\n{text}");
        // Its LAN through the attached bridge, nothing else but counted rejections.
        has(
            r#"{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"10.90.0.0","len":24}}}},{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"br-db"}},{"accept":null}"#,
        );
        has(r#"{"counter":"denied_web_internet"},{"jump":{"target":"refuse"}}"#);
        assert!(!text.contains(r#""chain":"from_web_0","expr":[{"accept":null}]"#), "egress `networks` must not reach the internet");
        // The endpoint for both instances, masquerade towards the LAN, outbound NAT.
        has(
            r#"{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"set":["10.77.0.2","10.77.0.3"]}}},{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"10.77.0.1"}},{"match":{"left":{"payload":{"field":"dport","protocol":"tcp"}},"op":"==","right":3306}},{"dnat":{"addr":"127.0.0.1","port":3306}}"#,
        );
        has(r#"{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"br-db"}},{"masquerade":null}"#);
        // Each instance sends from its own address only, its port and address found by lookups.
        let ports = r#"{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":{"set":["bv2","bv3"]}}}"#;
        let own = |source: &str| {
            format!(
                r#"{{"match":{{"left":{{"concat":[{{"meta":{{"key":"iifname"}}}},{source}]}},"op":"!=","right":{{"set":[{{"concat":["bv2","10.77.0.2"]}},{{"concat":["bv3","10.77.0.3"]}}]}}}}}},{{"drop":null}}"#
            )
        };
        has(&format!(
            r#"{ports},{{"match":{{"left":{{"payload":{{"field":"type","protocol":"ether"}}}},"op":"==","right":"ip"}}}},{}"#,
            own(r#"{"payload":{"field":"saddr","protocol":"ip"}}"#)
        ));
        has(&format!(
            r#"{ports},{{"match":{{"left":{{"payload":{{"field":"type","protocol":"ether"}}}},"op":"==","right":"arp"}}}},{}"#,
            own(r#"{"payload":{"field":"saddr ip","protocol":"arp"}}"#)
        ));
        has(&format!(
            r#"{ports},{{"match":{{"left":{{"payload":{{"field":"type","protocol":"ether"}}}},"op":"==","right":"ip6"}}}},{{"drop":null}}"#
        ));
        assert!(needs_localnet(&plan));
        assert_eq!(attached_devices(&plan).into_iter().collect::<Vec<_>>(), ["br-db"]);
    }
}
