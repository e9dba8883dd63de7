//! berth's isolation probe. Run inside a container, it tries what a container should (and
//! should not) be able to do and prints one line per try, `probe <name> <answer>`, where the
//! answer is `ok` or the errno the kernel (or the seccomp filter) gave; then `probe done`, and it
//! waits to be stopped. Standard library only, so it builds into one static binary:
//!
//! - `probe syscalls`: namespaces, io_uring, socket families, mount, keyrings, bpf, …
//! - `probe connect <ip:port>…`: TCP connections, e.g. to services on the host.
//! - `probe spoof <source ip> <ip:port>`: one UDP datagram sent with another source address
//!   (a raw socket, as `CAP_NET_RAW` allows), which the host must not let through.

// Raw system calls: the point of this program.
#![allow(unsafe_code)]

use std::ffi::c_long;
use std::io::Write;
use std::time::Duration;

extern "C" {
    fn syscall(number: c_long, ...) -> c_long;
}

/// System call numbers of the two architectures berth runs on.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const CLONE: i64 = 56;
    pub const UNSHARE: i64 = 272;
    pub const CLONE3: i64 = 435;
    pub const IO_URING_SETUP: i64 = 425;
    pub const SOCKET: i64 = 41;
    pub const MOUNT: i64 = 165;
    pub const KEYCTL: i64 = 250;
    pub const BPF: i64 = 321;
    pub const PERSONALITY: i64 = 135;
    pub const SETNS: i64 = 308;
    pub const PERF_EVENT_OPEN: i64 = 298;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const GETPID: i64 = 39;
    pub const EXIT_GROUP: i64 = 231;
    pub const WAIT4: i64 = 61;
    pub const SENDTO: i64 = 44;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const CLONE: i64 = 220;
    pub const UNSHARE: i64 = 97;
    pub const CLONE3: i64 = 435;
    pub const IO_URING_SETUP: i64 = 425;
    pub const SOCKET: i64 = 198;
    pub const MOUNT: i64 = 40;
    pub const KEYCTL: i64 = 219;
    pub const BPF: i64 = 280;
    pub const PERSONALITY: i64 = 92;
    pub const SETNS: i64 = 268;
    pub const PERF_EVENT_OPEN: i64 = 241;
    pub const OPEN_BY_HANDLE_AT: i64 = 265;
    pub const GETPID: i64 = 172;
    pub const EXIT_GROUP: i64 = 94;
    pub const WAIT4: i64 = 260;
    pub const SENDTO: i64 = 206;
}

const SIGCHLD: i64 = 17;
const CLONE_NEWNS: i64 = 0x0002_0000;
const CLONE_NEWUSER: i64 = 0x1000_0000;
const CLONE_NEWNET: i64 = 0x4000_0000;

/// The kernel's answer to a call: `ok` or `errno <n>`.
fn answer(ret: c_long) -> String {
    if ret >= 0 {
        "ok".into()
    } else {
        format!("errno {}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn call(n: i64, args: [i64; 5]) -> c_long {
    // SAFETY: every probe passes arguments the kernel validates (null pointers, small integers)
    // and never lets the kernel write to memory this program did not give it.
    unsafe { syscall(n as c_long, args[0], args[1], args[2], args[3], args[4]) }
}

/// clone(2) with `flags` like fork: a child that exits at once, reaped here.
fn clone_child(flags: i64) -> String {
    let ret = call(nr::CLONE, [flags | SIGCHLD, 0, 0, 0, 0]);
    if ret == 0 {
        call(nr::EXIT_GROUP, [0; 5]);
    }
    let a = answer(ret);
    if ret > 0 {
        call(nr::WAIT4, [ret, 0, 0, 0, 0]);
    }
    a
}

fn socket(family: i64, kind: i64, protocol: i64) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = call(nr::SOCKET, [family, kind, protocol, 0, 0]);
    let a = answer(fd);
    if fd >= 0 {
        // SAFETY: `fd` was just returned by socket(2) and belongs to nothing else; dropping closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    a
}

fn syscalls(out: &mut impl Write) -> std::io::Result<()> {
    let mut params = [0u8; 120];
    let (tmpfs, target) = (c"tmpfs".as_ptr() as i64, c"/tmp".as_ptr() as i64);
    let tries: Vec<(&str, String)> = vec![
        // Allowed: these make the test able to fail.
        ("getpid", answer(call(nr::GETPID, [0; 5]))),
        ("clone-plain", clone_child(0)),
        ("socket-inet", socket(2, 1, 0)),
        ("socket-inet6", socket(10, 1, 0)),
        ("socket-unix", socket(1, 1, 0)),
        ("socket-netlink-route", socket(16, 3, 0)),
        ("personality-query", answer(call(nr::PERSONALITY, [0xffff_ffff, 0, 0, 0, 0]))),
        // Denied.
        ("clone-newuser", clone_child(CLONE_NEWUSER)),
        ("clone-newuser-newnet", clone_child(CLONE_NEWUSER | CLONE_NEWNET)),
        ("clone-newns", clone_child(CLONE_NEWNS)),
        ("unshare-newuser", answer(call(nr::UNSHARE, [CLONE_NEWUSER, 0, 0, 0, 0]))),
        ("clone3", answer(call(nr::CLONE3, [0, 0, 0, 0, 0]))),
        ("io-uring-setup", answer(call(nr::IO_URING_SETUP, [1, params.as_mut_ptr() as i64, 0, 0, 0]))),
        ("socket-vsock", socket(40, 1, 0)),
        ("socket-alg", socket(38, 5, 0)),
        ("socket-tipc", socket(30, 5, 0)),
        ("mount", answer(call(nr::MOUNT, [tmpfs, target, tmpfs, 0, 0]))),
        ("keyctl", answer(call(nr::KEYCTL, [0, 0, 0, 0, 0]))),
        ("bpf", answer(call(nr::BPF, [0, 0, 0, 0, 0]))),
        ("personality-no-aslr", answer(call(nr::PERSONALITY, [0x0004_0000, 0, 0, 0, 0]))),
        ("setns", answer(call(nr::SETNS, [0, 0, 0, 0, 0]))),
        ("perf-event-open", answer(call(nr::PERF_EVENT_OPEN, [0, 0, -1, -1, 0]))),
        ("open-by-handle-at", answer(call(nr::OPEN_BY_HANDLE_AT, [0, 0, 0, 0, 0]))),
    ];
    for (name, a) in tries {
        writeln!(out, "probe {name} {a}")?;
    }
    Ok(())
}

fn connects(out: &mut impl Write, targets: &[String]) -> std::io::Result<()> {
    for t in targets {
        let a = match t.parse() {
            Ok(addr) => match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => "ok".into(),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
                Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
            },
            Err(_) => "bad-address".into(),
        };
        writeln!(out, "probe connect-{t} {a}")?;
    }
    Ok(())
}

/// One UDP datagram from `source` to `target` over a raw IPv4 socket (`IPPROTO_RAW`: the header
/// is this program's; the kernel fills in the length and checksum).
fn spoof(out: &mut impl Write, source: &str, target: &str) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (Ok(src), Ok(dst)) = (source.parse::<std::net::Ipv4Addr>(), target.parse::<std::net::SocketAddrV4>()) else {
        return writeln!(out, "probe spoof bad-address");
    };
    let payload = b"spoofed";
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.ip().octets());
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&dst.port().to_be_bytes());
    packet.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let fd = call(nr::SOCKET, [2, 3, 255, 0, 0]);
    if fd < 0 {
        return writeln!(out, "probe spoof {}", answer(fd));
    }
    // SAFETY: `fd` was just returned by socket(2) and belongs to nothing else; dropping closes it.
    let _owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct sockaddr_in: family, port (big-endian), address, padding.
    let mut addr = [0u8; 16];
    addr[..2].copy_from_slice(&2u16.to_ne_bytes());
    addr[4..8].copy_from_slice(&dst.ip().octets());
    // SAFETY: sendto(2) reads `packet` and `addr`, both alive and of the lengths given.
    let sent = unsafe { syscall(nr::SENDTO as c_long, fd, packet.as_ptr(), packet.len(), 0, addr.as_ptr(), addr.len()) };
    writeln!(out, "probe spoof {}", answer(sent))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let res = match args.first().map(String::as_str) {
        Some("syscalls") => syscalls(&mut out),
        Some("connect") => connects(&mut out, &args[1..]),
        Some("spoof") if args.len() == 3 => spoof(&mut out, &args[1], &args[2]),
        _ => writeln!(out, "usage: probe syscalls | probe connect <ip:port>… | probe spoof <source ip> <ip:port>"),
    };
    let _ = res.and_then(|()| writeln!(out, "probe done")).and_then(|()| out.flush());
    drop(out);
    // Stay up until stopped, so the instance is still there when the test reads its log.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
