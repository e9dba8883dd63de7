//! What of the host berth could change outside its own directories: network links, routes and
//! rules, nftables tables, mounts, network namespaces, top-level cgroups, IPv4 forwarding, and
//! the files a hostile image tries to plant. berth's own things — its bridge and the veths on it,
//! the route for its CIDR, its `berth_<bridge>` tables, mounts under its data directory, its
//! `berth-<bridge>-…` namespaces and its cgroup parent — are left out, except from
//! [`snapshot_all`], which is compared after `berth uninstall`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Files a hostile image tries to write outside its root.
pub const CANARIES: &[&str] = &["/tmp/berth-chaos-escape", "/tmp/berth-chaos-escape-2"];

/// Where berth's own things are, to leave them out.
pub struct Berth<'a> {
    pub bridge: &'a str,
    pub cidr: &'a str,
    pub data: &'a Path,
    pub cgroup_parent: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<&'static str, BTreeSet<String>>);

fn lines(cmd: &str, args: &[&str]) -> Vec<String> {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Everything, berth's own things included: what must be back as it was after an uninstall.
pub fn snapshot_all() -> Snapshot {
    snapshot(&Berth { bridge: "\0", cidr: "\0", data: Path::new("\0"), cgroup_parent: "\0" })
}

pub fn snapshot(b: &Berth<'_>) -> Snapshot {
    let mut s = BTreeMap::new();
    let ours = |l: &str| l.contains(b.bridge) || l.contains(b.cidr);
    let links = lines("ip", &["-o", "link", "show"])
        .into_iter()
        .filter(|l| !ours(l))
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_owned()))
        .collect();
    s.insert("links", links);
    s.insert("routes", lines("ip", &["route", "show", "table", "all"]).into_iter().filter(|l| !ours(l)).collect());
    s.insert("rules", lines("ip", &["rule", "show"]).into_iter().collect());
    s.insert("nft", lines("nft", &["list", "tables"]).into_iter().filter(|l| !ours(l)).collect());
    let data = b.data.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| !m.starts_with(&data) && !m.starts_with(&format!("/run/netns/berth-{}-", b.bridge)))
        .collect();
    s.insert("mounts", mounts);
    let netns = format!("berth-{}-", b.bridge);
    s.insert("netns", lines("ip", &["netns", "list"]).into_iter().filter(|l| !l.starts_with(&netns)).collect());
    let mut cgroups = BTreeSet::new();
    for root in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        for e in std::fs::read_dir(root.path()).into_iter().flatten().flatten() {
            if e.path().is_dir() && e.file_name() != b.cgroup_parent {
                cgroups.insert(e.path().display().to_string());
            }
        }
    }
    s.insert("cgroups", cgroups);
    s.insert("ip_forward", std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").into_iter().map(|v| v.trim().to_owned()).collect());
    s.insert("canaries", CANARIES.iter().filter(|p| Path::new(p).exists()).map(|p| p.to_string()).collect());
    Snapshot(s)
}

impl Snapshot {
    /// What differs from `before`, one line each.
    pub fn changes_since(&self, before: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, now) in &self.0 {
            let was = before.0.get(kind).cloned().unwrap_or_default();
            out.extend(now.difference(&was).map(|x| format!("{kind}: + {x}")));
            out.extend(was.difference(now).map(|x| format!("{kind}: - {x}")));
        }
        out
    }
}
