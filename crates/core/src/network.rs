//! Private networks: the network resource (a named IPv4 segment, what is on it, and the host
//! services published to it), a service's network settings, and the CIDR arithmetic both use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network, normalized to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// A CIDR that does not parse, or whose prefix is out of the range asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IPv4 CIDR like 10.90.0.0/24 (prefix 8–30)")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        Ok(Cidr::new(addr, prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Cidr {
    /// The network of `addr` with `prefix` bits (0–32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        let prefix = prefix.min(32);
        Cidr { addr: Ipv4Addr::from(u32::from(addr) & Cidr::mask(prefix)), prefix }
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// The n-th address (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Cidr::mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = self.prefix.min(other.prefix);
        Cidr::new(self.addr, shorter) == Cidr::new(other.addr, shorter)
    }
}

/// Where the private LAN of a network lives on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Attachment {
    /// A host interface (`eth1`) on the LAN.
    Interface(String),
    /// A Linux bridge (`br-db`) the LAN is on.
    Bridge(String),
}

impl Attachment {
    pub fn device(&self) -> &str {
        match self {
            Attachment::Interface(d) | Attachment::Bridge(d) => d,
        }
    }
}

/// A named private segment: its CIDR, where it is on the host, and what instances may reach on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    /// The LAN's addresses, e.g. `10.90.0.0/24`.
    pub cidr: Cidr,
    /// The host interface or bridge the LAN is on; none for a network of host endpoints only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<Attachment>,
    /// Services on the host published to this network's services only: name → `ip:port`,
    /// reached as `<name>.<network>.internal` on the same port.
    #[serde(default)]
    pub host_endpoints: BTreeMap<String, SocketAddrV4>,
    /// Names of machines on the LAN: name → address in `cidr`, answered as
    /// `<name>.<network>.internal`.
    #[serde(default)]
    pub hosts: BTreeMap<String, Ipv4Addr>,
}

/// What is wrong with a network or a service's network settings: every problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network: {}", .0.join("; "))]
pub struct NetworkSpecError(pub Vec<String>);

/// A DNS label of 1–`max` lowercase letters, digits and inner `-`.
pub fn is_label(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Interface names the kernel takes: 1–15 bytes, no `/`, whitespace or `:`.
fn is_device(s: &str) -> bool {
    (1..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':') && s != "." && s != ".."
}

impl NetworkSpec {
    /// Checks the fields, collecting every problem. Conflicts with other networks and the
    /// host are the controller's to check.
    pub fn validate(&self) -> Result<(), NetworkSpecError> {
        let mut e = Vec::new();
        if !is_label(&self.name, 32) {
            e.push(format!("name `{}` must be 1–32 lowercase letters, digits and `-`, not starting or ending with `-`", self.name));
        }
        if let Some(a) = &self.attach {
            if !is_device(a.device()) {
                e.push(format!("attach: `{}` is not an interface name (1–15 characters, no `/`, `:` or spaces)", a.device()));
            }
        }
        for (name, target) in &self.host_endpoints {
            if !is_label(name, 63) {
                e.push(format!("host_endpoints: `{name}` is not a DNS label (lowercase letters, digits and `-`)"));
            }
            if target.port() == 0 {
                e.push(format!("host_endpoints.{name}: `{target}` needs a port"));
            }
            if target.ip().is_unspecified() || target.ip().is_broadcast() || target.ip().is_multicast() {
                e.push(format!("host_endpoints.{name}: `{target}` is not an address of this host"));
            }
        }
        for (name, addr) in &self.hosts {
            if !is_label(name, 63) {
                e.push(format!("hosts: `{name}` is not a DNS label (lowercase letters, digits and `-`)"));
            } else if self.host_endpoints.contains_key(name) {
                e.push(format!("hosts: `{name}` is also a host endpoint; one name, one meaning"));
            }
            if !self.cidr.contains(*addr) {
                e.push(format!("hosts.{name}: {addr} is not in the network's CIDR {}", self.cidr));
            }
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(NetworkSpecError(e))
        }
    }
}

/// Where a service's instances may open connections to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// The internet (through NAT, where the server allows it) and the attached networks.
    #[default]
    Public,
    /// The attached networks only.
    Networks,
    /// Nowhere but berth's DNS and router.
    None,
}

/// Who reaches a service over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// On the public listeners, and at `<name>.internal` from every service.
    #[default]
    Public,
    /// At `<name>.internal` from the services in `allow_from` only.
    Private,
}

/// A service's place on the networks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceNetwork {
    /// Networks whose LAN, hosts and host endpoints the instances reach.
    pub networks: Vec<String>,
    pub egress: Egress,
    pub visibility: Visibility,
    /// Services whose instances may call this one at `<name>.internal`. For a public service,
    /// empty means every service.
    pub allow_from: Vec<String>,
}

impl ServiceNetwork {
    /// Checks the fields, adding problems to `e`.
    pub fn check(&self, e: &mut Vec<String>) {
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.networks {
            if !is_label(n, 32) {
                e.push(format!("network.networks: `{n}` is not a network name"));
            } else if !seen.insert(n) {
                e.push(format!("network.networks: `{n}` is listed twice"));
            }
        }
        if self.egress == Egress::Networks && self.networks.is_empty() {
            e.push("network.egress `networks` needs at least one network in network.networks (or use `none`)".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.allow_from {
            if !crate::service::is_service_name(s) {
                e.push(format!("network.allow_from: `{s}` is not a service name"));
            } else if !seen.insert(crate::service::host_label(s)) {
                e.push(format!("network.allow_from: `{s}` is listed twice"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.88.7.9/16".parse().unwrap_or(Cidr::new(Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 88, 255, 3)) && !c.contains(Ipv4Addr::new(10, 89, 0, 1)));
        for bad in ["10.88.0.0", "10.88.0.0/31", "10.0.0.0/7", "banana/8", "10.88.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let p = |s: &str| s.parse::<Cidr>().unwrap_or(Cidr::new(Ipv4Addr::UNSPECIFIED, 0));
        assert!(p("10.90.0.0/24").overlaps(&p("10.0.0.0/8")));
        assert!(p("10.0.0.0/8").overlaps(&p("10.90.0.0/24")));
        assert!(!p("10.90.0.0/24").overlaps(&p("10.90.1.0/24")));
        assert_eq!(Cidr::new(Ipv4Addr::new(192, 168, 1, 7), 32).to_string(), "192.168.1.7/32");
        assert_eq!(Cidr::new(Ipv4Addr::new(192, 168, 1, 7), 0).to_string(), "0.0.0.0/0");
    }

    #[test]
    fn every_problem_is_named() {
        let spec: NetworkSpec = serde_json::from_str(
            r#"{"name": "DB", "cidr": "10.90.0.0/24", "attach": {"bridge": "br/db"},
                "host_endpoints": {"My_SQL": "127.0.0.1:0", "mysql": "0.0.0.0:3306"},
                "hosts": {"mariadb": "10.91.0.5", "mysql": "10.90.0.7"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Err(NetworkSpecError(problems)) = spec.validate() else { panic!("accepted") };
        let text = problems.join("\n");
        for needle in [
            "name `DB`",
            "`br/db` is not an interface name",
            "`My_SQL` is not a DNS label",
            "host_endpoints.My_SQL: `127.0.0.1:0` needs a port",
            "host_endpoints.mysql: `0.0.0.0:3306` is not an address of this host",
            "hosts.mariadb: 10.91.0.5 is not in the network's CIDR 10.90.0.0/24",
            "hosts: `mysql` is also a host endpoint",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        assert!(serde_json::from_str::<NetworkSpec>(r#"{"name": "db", "cidr": "10.90.0.0/33"}"#).is_err());
        let ok: NetworkSpec = serde_json::from_str(
            r#"{"name": "db", "cidr": "10.90.0.9/24", "attach": {"interface": "eth1"}, "host_endpoints": {"mysql": "127.0.0.1:3306"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.cidr.to_string(), "10.90.0.0/24");
    }

    #[test]
    fn service_settings() {
        let mut e = Vec::new();
        let s = ServiceNetwork {
            networks: vec!["db".into(), "db".into(), "Bad".into()],
            egress: Egress::None,
            visibility: Visibility::Private,
            allow_from: vec!["web-app".into(), "x".into()],
        };
        s.check(&mut e);
        let text = e.join("\n");
        assert!(
            text.contains("`db` is listed twice")
                && text.contains("`Bad` is not a network name")
                && text.contains("`x` is not a service name"),
            "{text}"
        );
        let mut e = Vec::new();
        ServiceNetwork { egress: Egress::Networks, ..Default::default() }.check(&mut e);
        assert!(e.join("").contains("needs at least one network"), "{e:?}");
        assert_eq!(serde_json::to_string(&Egress::Networks).ok().as_deref(), Some("\"networks\""));
    }
}
