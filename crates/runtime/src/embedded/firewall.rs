//! The host's packet filter for instances, through nftables' JSON interface (`nft -j -f -`):
//! rulesets are built as data, never as command strings, and each is loaded in one transaction
//! (the table added, flushed and filled), so reloading is idempotent and never leaves a gap.
//!
//! - The host guard (`inet berth_<bridge>`, always on): nothing an instance sends may open a
//!   connection to the host — not to the gateway address, not to any other address of the host,
//!   over IPv4 or IPv6 (berth serves instances nothing on the host yet). Answers to connections
//!   the host opened (the router, health checks) pass; new ones are rejected at once (ICMP
//!   administratively prohibited), so a blocked call fails fast.
//! - Outbound NAT (`ip berth_nat_<bridge>`, off by default): masquerade for traffic leaving the
//!   host.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::network::{Cidr, NetworkError};

/// The name of the host guard's table for `bridge`.
pub fn guard_table(bridge: &str) -> String {
    format!("berth_{bridge}")
}

/// The name of the outbound NAT table for `bridge`.
pub fn nat_table(bridge: &str) -> String {
    format!("berth_nat_{bridge}")
}

fn iifname(bridge: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": bridge}})
}

/// Adds (if missing), empties and fills `table` of `family` with `chain` and its `rules`.
fn table_with_chain(family: &str, table: &str, chain: Value, rules: Vec<Vec<Value>>) -> Value {
    let name = chain["name"].clone();
    let mut cmds = vec![
        json!({"add": {"table": {"family": family, "name": table}}}),
        json!({"flush": {"table": {"family": family, "name": table}}}),
        json!({"add": {"chain": chain}}),
    ];
    for expr in rules {
        cmds.push(json!({"add": {"rule": {"family": family, "table": table, "chain": name, "expr": expr}}}));
    }
    json!({ "nftables": cmds })
}

/// The host guard for instances on `bridge`.
pub fn host_guard(bridge: &str) -> Value {
    let table = guard_table(bridge);
    let chain =
        json!({"family": "inet", "table": table, "name": "input", "type": "filter", "hook": "input", "prio": 0, "policy": "accept"});
    let rules = vec![
        vec![
            iifname(bridge),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ],
        vec![iifname(bridge), json!({"reject": {"type": "icmpx", "expr": "admin-prohibited"}})],
    ];
    table_with_chain("inet", &table, chain, rules)
}

/// Masquerade for traffic from `cidr` leaving the host through another interface than `bridge`.
pub fn outbound_nat(bridge: &str, cidr: Cidr) -> Value {
    let table = nat_table(bridge);
    let chain = json!({"family": "ip", "table": table, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"});
    let rules = vec![vec![
        json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": cidr.addr.to_string(), "len": cidr.prefix}}}}),
        json!({"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": bridge}}),
        json!({"masquerade": null}),
    ]];
    table_with_chain("ip", &table, chain, rules)
}

fn nft(args: &[&str], input: Option<&[u8]>) -> Result<(), NetworkError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Io { context: "running nft (install nftables: apt-get install nftables)".into(), source: e })?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin.write_all(input).map_err(|e| NetworkError::Io { context: "loading an nftables ruleset".into(), source: e })?;
    }
    let out = child.wait_with_output().map_err(|e| NetworkError::Io { context: "loading an nftables ruleset".into(), source: e })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Loads a ruleset built by this module.
pub fn apply(ruleset: &Value) -> Result<(), NetworkError> {
    nft(&["-j", "-f", "-"], Some(ruleset.to_string().as_bytes()))
}

/// Deletes `table` of `family`, if it exists.
pub fn delete_table(family: &str, table: &str) -> Result<(), NetworkError> {
    let cmd = json!({"nftables": [{"delete": {"table": {"family": family, "name": table}}}]});
    match nft(&["-j", "-f", "-"], Some(cmd.to_string().as_bytes())) {
        Err(NetworkError::Nft(msg)) if msg.contains("No such file or directory") => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_guard_rejects_new_connections_from_instances_only() {
        expect_test::expect![[r#"
            {"add":{"table":{"family":"inet","name":"berth_berth0"}}}
            {"flush":{"table":{"family":"inet","name":"berth_berth0"}}}
            {"add":{"chain":{"family":"inet","hook":"input","name":"input","policy":"accept","prio":0,"table":"berth_berth0","type":"filter"}}}
            {"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"inet","table":"berth_berth0"}}}
            {"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"berth0"}},{"reject":{"expr":"admin-prohibited","type":"icmpx"}}],"family":"inet","table":"berth_berth0"}}}
        "#]]
        .assert_eq(&lines(&host_guard("berth0")));
    }

    #[test]
    fn nat_masquerades_only_traffic_leaving_the_bridge() {
        let c = Cidr { addr: Ipv4Addr::new(10, 88, 0, 0), prefix: 16 };
        expect_test::expect![[r#"
            {"add":{"table":{"family":"ip","name":"berth_nat_berth0"}}}
            {"flush":{"table":{"family":"ip","name":"berth_nat_berth0"}}}
            {"add":{"chain":{"family":"ip","hook":"postrouting","name":"postrouting","policy":"accept","prio":100,"table":"berth_nat_berth0","type":"nat"}}}
            {"add":{"rule":{"chain":"postrouting","expr":[{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"10.88.0.0","len":16}}}},{"match":{"left":{"meta":{"key":"oifname"}},"op":"!=","right":"berth0"}},{"masquerade":null}],"family":"ip","table":"berth_nat_berth0"}}}
        "#]]
        .assert_eq(&lines(&outbound_nat("berth0", c)));
    }

    fn lines(ruleset: &Value) -> String {
        ruleset["nftables"].as_array().into_iter().flatten().map(|c| format!("{c}\n")).collect()
    }
}
