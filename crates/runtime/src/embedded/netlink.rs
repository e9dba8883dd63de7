//! Links, addresses, routes and network namespaces through rtnetlink, with no `ip` process: an
//! instance's network is made with a handful of messages on one socket per namespace, and every
//! failure comes back as a value naming the operation and the kernel's error.
//!
//! A socket's namespace is fixed when it is made: [`Rtnl::in_netns`] makes it on a short-lived
//! thread that entered the namespace, so the calling thread never changes namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

/// A failed rtnetlink operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>, source: std::io::Error) -> NetlinkError {
        NetlinkError { what: what.into(), source }
    }

    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// One rtnetlink socket, in the namespace it was made in.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket in this thread's network namespace.
    pub fn new() -> Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::new("opening an rtnetlink socket", e))?;
        socket.bind_auto().map_err(|e| NetlinkError::new("binding an rtnetlink socket", e))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// A socket in the network namespace at `netns` (a `/run/netns/<name>` file).
    pub fn in_netns(netns: &Path) -> Result<Rtnl> {
        let file = std::fs::File::open(netns).map_err(|e| NetlinkError::new(format!("opening {}", netns.display()), e))?;
        let path = netns.to_owned();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetlinkError::new(format!("entering {}", path.display()), e.into()))?;
                Rtnl::new()
            })
            .join()
            .unwrap_or_else(|_| Err(NetlinkError::new("a namespace thread", std::io::Error::other("panicked"))))
        })
    }

    /// Sends `msg` and collects the answers until the kernel's acknowledgement (or the end of a
    /// dump).
    fn request(&mut self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| NetlinkError::new(what, e))?;
        let mut answers = Vec::new();
        let mut recv = vec![0u8; 64 << 10];
        loop {
            let n = self.socket.recv(&mut &mut recv[..], 0).map_err(|e| NetlinkError::new(what, e))?;
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&recv[at..n])
                    .map_err(|e| NetlinkError::new(what, std::io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                let ours = msg.header.sequence_number == self.seq;
                match msg.payload {
                    _ if !ours => {}
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(NetlinkError::new(what, std::io::Error::from_raw_os_error(-code.get()))),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }

    /// The index of link `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    fn link_index_of(&mut self, name: &str) -> Result<u32> {
        self.link_index(name)?.ok_or_else(|| NetlinkError::new(format!("link {name}"), std::io::Error::from_raw_os_error(libc::ENODEV)))
    }

    /// Makes a veth pair: `name` here, `peer` in the namespace open as `peer_netns`.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: &impl AsRawFd) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth), LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg)))]));
        self.request(&format!("adding veth {name}"), RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Puts link `name` on bridge `master` as an isolated port (it reaches only non-isolated
    /// ports: the bridge itself), and sets it up.
    pub fn attach_isolated(&mut self, name: &str, master: &str) -> Result<()> {
        let (index, master_index) = (self.link_index_of(name)?, self.link_index_of(master)?);
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(master_index));
        self.request(&format!("putting {name} on {master}"), RouteNetlinkMessage::SetLink(msg), 0)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(true)])),
        ]));
        self.request(&format!("isolating bridge port {name}"), RouteNetlinkMessage::NewLink(msg), 0)?;
        self.set_up(name)
    }

    /// Sets link `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.link_index_of(name)?;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(&format!("setting {name} up"), RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Gives link `name` the hardware address `mac`. On a bridge this also pins it: a bridge
    /// whose address was never set takes the lowest of its ports', so it changes as ports come
    /// and go, and neighbours still sending to the old one lose frames until they ask again.
    pub fn set_mac(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.link_index_of(name)?;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(&format!("setting the address of {name}"), RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Deletes link `name` (a veth takes its peer with it).
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.link_index_of(name)?;
        self.request(&format!("deleting link {name}"), RouteNetlinkMessage::DelLink(msg), 0).map(drop)
    }

    /// Gives link `name` the address `addr/prefix` (nothing to do if it has it).
    pub fn add_address(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = self.link_index_of(name)?;
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        match self.request(&format!("adding {addr}/{prefix} to {name}"), RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// A default route through `gateway` in the main table (nothing to do if there is one).
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        match self.request(&format!("adding a default route via {gateway}"), RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)
        {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }
}

impl Rtnl {
    /// Forgets the neighbour entry of `addr` on link `name`, if there is one: a new holder of an
    /// address must not get packets meant for the old one's MAC.
    pub fn forget_neighbour(&mut self, name: &str, addr: Ipv4Addr) -> Result<()> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = self.link_index_of(name)?;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)));
        match self.request(&format!("forgetting the neighbour {addr} on {name}"), RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// A link as berth needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    pub is_bridge: bool,
}

/// An IPv4 route: where to, through which link, of which type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub oif: Option<u32>,
    pub kind: RouteType,
}

fn link_of(m: LinkMessage) -> Link {
    let mut link = Link { index: m.header.index, name: String::new(), master: None, is_bridge: false };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Controller(i) => link.master = Some(i),
            LinkAttribute::LinkInfo(infos) => link.is_bridge |= infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
            _ => {}
        }
    }
    link
}

fn unreachable_route(destination: Ipv4Addr, prefix: u8, metric: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unreachable;
    msg.header.destination_prefix_length = prefix;
    msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(destination)));
    msg.attributes.push(RouteAttribute::Priority(metric));
    msg
}

impl Rtnl {
    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request("listing links", RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewLink(m) => Some(link_of(m)),
                _ => None,
            })
            .collect())
    }

    /// Link `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(&format!("looking up link {name}"), RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(m) => Some(link_of(m)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes bridge `name` (nothing to do if it exists).
    pub fn add_bridge(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        match self.request(&format!("adding bridge {name}"), RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Every IPv4 address of the host: (link index, address, prefix length).
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answers = self.request("listing addresses", RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewAddress(m) => {
                    let (index, prefix) = (m.header.index, m.header.prefix_len);
                    m.attributes.into_iter().find_map(|attr| match attr {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some((index, ip, prefix)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 route, of every table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let answers = self.request("listing routes", RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewRoute(m) => {
                    let mut r = Route {
                        destination: Ipv4Addr::UNSPECIFIED,
                        prefix: m.header.destination_prefix_length,
                        oif: None,
                        kind: m.header.kind,
                    };
                    for attr in m.attributes {
                        match attr {
                            RouteAttribute::Destination(RouteAddress::Inet(d)) => r.destination = d,
                            RouteAttribute::Oif(i) => r.oif = Some(i),
                            _ => {}
                        }
                    }
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    /// An `unreachable` route for `destination/prefix` with `metric` (nothing to do if there is one).
    pub fn add_unreachable(&mut self, destination: Ipv4Addr, prefix: u8, metric: u32) -> Result<()> {
        let msg = unreachable_route(destination, prefix, metric);
        match self.request(
            &format!("adding unreachable {destination}/{prefix}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes the `unreachable` route for `destination/prefix` with `metric`, if there is one.
    pub fn delete_unreachable(&mut self, destination: Ipv4Addr, prefix: u8, metric: u32) -> Result<()> {
        let msg = unreachable_route(destination, prefix, metric);
        match self.request(&format!("deleting unreachable {destination}/{prefix}"), RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if matches!(e.errno(), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// Makes the named network namespace `/run/netns/<name>` (as `ip netns add` does, so `ip netns`
/// sees it): a thread enters a new namespace and its file is bound there. Nothing to do if it
/// exists.
pub fn create_netns(name: &str) -> Result<PathBuf> {
    let dir = Path::new("/run/netns");
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|e| NetlinkError::new("making /run/netns", e))?;
    std::fs::File::create(&path).map_err(|e| NetlinkError::new(format!("making {}", path.display()), e))?;
    let bind = path.clone();
    let made = std::thread::scope(|s| {
        s.spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(Some("/proc/thread-self/ns/net"), &bind, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(NetlinkError::new(format!("making network namespace {name}"), e));
    }
    Ok(path)
}

/// Removes the named network namespace (as `ip netns del` does); it ends once nothing holds it.
pub fn delete_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(NetlinkError::new(format!("unmounting {}", path.display()), e.into())),
    }
    std::fs::remove_file(&path).map_err(|e| NetlinkError::new(format!("removing {}", path.display()), e))
}
