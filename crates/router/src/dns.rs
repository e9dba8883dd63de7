//! berth's DNS for instances, on their gateway (UDP and TCP port 53), answered from the routing
//! table so it is as current as the routes:
//!
//! - `<service>.internal`: the gateway (where the internal listener takes the call), for the
//!   services the asking instance may call; NXDOMAIN for the others and at once for a service
//!   that left the table.
//! - `<name>.<network>.internal`: a machine on an attached network's LAN, or the gateway for one
//!   of its host endpoints, for instances of the services attached to it.
//! - Any other name: relayed to the host's resolvers for services with public egress; REFUSED for
//!   the others, as for an address no instance holds.
//!
//! The asking instance is known by its address, as on the internal listener (the host's rules
//! keep instances from sending with another's).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::table::RoutingTable;

/// How long answers about berth's own names may be cached: short, as routes change.
const TTL: u32 = 5;
/// How long the host's resolvers have for one relayed query, each.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message over TCP.
const MAX_TCP_MESSAGE: usize = 65_535;

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this answer.
    Reply(Vec<u8>),
    /// Relay the query to the host's resolvers.
    Relay,
    /// Not even a DNS header: no answer.
    Drop,
}

fn reply(req: &Message, code: ResponseCode, answers: Vec<Record>) -> Answer {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = code;
    for q in &req.queries {
        resp.add_query(q.clone());
    }
    resp.add_answers(answers);
    resp.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop)
}

/// A bare header answering a message that does not parse: FORMERR with its id.
fn format_error(query: &[u8]) -> Answer {
    if query.len() < 12 {
        return Answer::Drop;
    }
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(&query[..2]);
    h[2] = 0x80 | (query[2] & 0x01);
    h[3] = 0x80 | 1;
    Answer::Reply(h)
}

/// The answer to `query` from the instance at `from`.
pub fn answer(table: &RoutingTable, gateway: Ipv4Addr, from: IpAddr, query: &[u8]) -> Answer {
    let Ok(req) = Message::from_vec(query) else { return format_error(query) };
    if req.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    if req.metadata.op_code != OpCode::Query || req.queries.len() != 1 {
        return reply(&req, ResponseCode::NotImp, Vec::new());
    }
    let Some(caller) = table.caller(from) else { return reply(&req, ResponseCode::Refused, Vec::new()) };
    let q = &req.queries[0];
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if name != "internal" && !name.ends_with(".internal") {
        return if caller.resolve_public { Answer::Relay } else { reply(&req, ResponseCode::Refused, Vec::new()) };
    }
    let address = match caller.names.get(&name) {
        Some(a) => Some(*a),
        None => table.route_for(&name, Some(from)).ok().map(|_| IpAddr::V4(gateway)),
    };
    match (address, q.query_type()) {
        (None, _) => reply(&req, ResponseCode::NXDomain, Vec::new()),
        (Some(IpAddr::V4(a)), RecordType::A | RecordType::ANY) => {
            reply(&req, ResponseCode::NoError, vec![Record::from_rdata(q.name().clone(), TTL, RData::A(A(a)))])
        }
        // The name exists, with no record of that type (IPv6 among them).
        (Some(_), _) => reply(&req, ResponseCode::NoError, Vec::new()),
    }
}

/// The host's resolvers, from `/etc/resolv.conf` (loopback ones too: the router runs on the host).
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Asks the host's resolvers in turn; the first answer.
async fn relay(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else { continue };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

async fn respond(table: &RoutingTable, gateway: Ipv4Addr, upstreams: &[SocketAddr], from: IpAddr, query: &[u8]) -> Option<Vec<u8>> {
    match answer(table, gateway, from, query) {
        Answer::Reply(r) => Some(r),
        Answer::Relay => match relay(query, upstreams).await {
            Some(r) => Some(r),
            // The host's resolvers did not answer: SERVFAIL.
            None => Message::from_vec(query).ok().and_then(|req| match reply(&req, ResponseCode::ServFail, Vec::new()) {
                Answer::Reply(r) => Some(r),
                _ => None,
            }),
        },
        Answer::Drop => None,
    }
}

/// A UDP or TCP socket on `addr` that may be bound before the address is up (`IP_FREEBIND`).
fn socket(addr: SocketAddr, kind: rustix::net::SocketType) -> std::io::Result<rustix::fd::OwnedFd> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, kind, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    if addr.is_ipv4() {
        sockopt::set_ip_freebind(&fd, true)?;
    }
    sockopt::set_socket_reuseaddr(&fd, true)?;
    // A successor router binds it while its predecessor still serves.
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// Serves DNS on `addr` (UDP and TCP) until `stopping` is cancelled.
pub async fn serve(table: Arc<RoutingTable>, addr: SocketAddr, gateway: Ipv4Addr, stopping: CancellationToken) -> std::io::Result<()> {
    let udp = Arc::new(tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket(addr, rustix::net::SocketType::DGRAM)?))?);
    let tcp_fd = socket(addr, rustix::net::SocketType::STREAM)?;
    rustix::net::listen(&tcp_fd, 128)?;
    let tcp = tokio::net::TcpListener::from_std(std::net::TcpListener::from(tcp_fd))?;
    let upstreams: Arc<[SocketAddr]> = host_resolvers().into();
    tracing::info!(%addr, resolvers = ?upstreams, "serving DNS to instances");
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            () = stopping.cancelled() => return Ok(()),
            got = udp.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                let (table, udp, upstreams, query) = (table.clone(), udp.clone(), upstreams.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    if let Some(r) = respond(&table, gateway, &upstreams, peer.ip(), &query).await {
                        let _ = udp.send_to(&r, peer).await;
                    }
                });
            }
            got = tcp.accept() => {
                let Ok((mut conn, peer)) = got else { continue };
                let (table, upstreams) = (table.clone(), upstreams.clone());
                tokio::spawn(async move {
                    // One connection, queries one after another, each with its two-byte length.
                    while let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(10), conn.read_u16()).await {
                        let mut query = vec![0u8; usize::from(len).min(MAX_TCP_MESSAGE)];
                        if conn.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(r) = respond(&table, gateway, &upstreams, peer.ip(), &query).await else { return };
                        let Ok(len) = u16::try_from(r.len()) else { return };
                        if conn.write_u16(len).await.is_err() || conn.write_all(&r).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RouteSpec;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap_or_default(), kind));
        m.to_vec().unwrap_or_default()
    }

    fn parsed(a: Answer) -> (ResponseCode, Vec<String>) {
        match a {
            Answer::Reply(r) => {
                let m = Message::from_vec(&r).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(m.metadata.id, 7);
                (m.metadata.response_code, m.answers.iter().map(|r| r.data.to_string()).collect())
            }
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn names_follow_the_table_and_the_caller() {
        let t = RoutingTable::new();
        let ip = |n: u8| IpAddr::from([10, 77, 0, n]);
        let gw = Ipv4Addr::new(10, 77, 0, 1);
        let up = SocketAddr::from(([10, 77, 0, 9], 8080));
        let web = RouteSpec {
            internal: true,
            sources: vec![ip(2)],
            names: [("mariadb.db.internal".to_owned(), IpAddr::from([10, 90, 0, 10]))].into(),
            resolve_public: false,
            ..RouteSpec::new("web.internal", "web", vec![up])
        };
        let api = RouteSpec {
            internal: true,
            allow_from: Some(vec!["web".into()]),
            sources: vec![ip(3)],
            ..RouteSpec::new("api.internal", "api", vec![up])
        };
        let open =
            RouteSpec { internal: true, sources: vec![ip(4)], resolve_public: true, ..RouteSpec::new("open.internal", "open", vec![up]) };
        t.replace(&[web, api, open]);

        assert_eq!(
            parsed(answer(&t, gw, ip(2), &query("api.internal.", RecordType::A))),
            (ResponseCode::NoError, vec!["10.77.0.1".into()])
        );
        assert_eq!(parsed(answer(&t, gw, ip(2), &query("API.Internal.", RecordType::A))).1, ["10.77.0.1"], "case does not matter");
        assert_eq!(parsed(answer(&t, gw, ip(2), &query("api.internal.", RecordType::AAAA))), (ResponseCode::NoError, vec![]));
        assert_eq!(parsed(answer(&t, gw, ip(2), &query("mariadb.db.internal.", RecordType::A))).1, ["10.90.0.10"]);
        // Not allowed to call it, not on that network, not a service: no such name.
        assert_eq!(parsed(answer(&t, gw, ip(4), &query("api.internal.", RecordType::A))).0, ResponseCode::NXDomain);
        assert_eq!(parsed(answer(&t, gw, ip(3), &query("mariadb.db.internal.", RecordType::A))).0, ResponseCode::NXDomain);
        assert_eq!(parsed(answer(&t, gw, ip(2), &query("gone.internal.", RecordType::A))).0, ResponseCode::NXDomain);
        // Other names: relayed for public egress only; unknown addresses refused.
        assert_eq!(answer(&t, gw, ip(4), &query("example.org.", RecordType::A)), Answer::Relay);
        assert_eq!(parsed(answer(&t, gw, ip(2), &query("example.org.", RecordType::A))).0, ResponseCode::Refused);
        assert_eq!(parsed(answer(&t, gw, ip(9), &query("api.internal.", RecordType::A))).0, ResponseCode::Refused);
        // Garbage: FORMERR when there is a header to answer, nothing otherwise.
        assert_eq!(answer(&t, gw, ip(2), b"\x00\x07\x01\x00\x00\x01junkjunkjunk"), format_error(b"\x00\x07\x01\x00\x00\x01junkjunkjunk"));
        assert_eq!(answer(&t, gw, ip(2), b"\x01"), Answer::Drop);
    }
}
