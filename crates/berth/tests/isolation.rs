//! What an instance cannot do, tried from inside one (as root): `examples/probe` runs in a real
//! container and reports what the kernel answered. Namespaces, io_uring, unusual socket
//! families, mount, keyrings, bpf and the rest are refused by the seccomp filter (a few allowed
//! calls show the probe works), and a service on the host, listening on every address, cannot
//! be reached from the instance.

mod support;

use std::time::Duration;

use berth_testkit::probe_binary;
use support::*;

/// Runs the probe with `args` as the one-off instance `name` and returns its `probe …` lines.
fn probe(s: &Server, name: &str, args: &str) -> Result<String> {
    s.cli_ok(&["run", "probe:v1", "--name", name, "--command", &format!("/app/probe {args}")])?;
    for _ in 0..200 {
        let logs = s.cli_ok(&["instance", "logs", name])?;
        if logs.contains("probe done") {
            s.cli_ok(&["instance", "delete", name])?;
            let lines: Vec<&str> = logs.lines().filter_map(|l| l.find("probe ").map(|i| &l[i..])).filter(|l| *l != "probe done").collect();
            return Ok(lines.join("\n") + "\n");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the probe {name} did not finish").into())
}

#[test]
fn an_instance_cannot_reach_into_the_kernel_or_the_host() -> Result {
    let (s, sandbox) = Server::start_with_runtime("i", 247, "p")?;
    let tmp = tempfile::tempdir()?;
    let bin = probe_binary(tmp.path())?;
    s.cli_ok(&["image", "build", "--binary", &bin.display().to_string(), "-t", "probe:v1"])?;

    // EPERM = 1, ENOSYS = 38, EAFNOSUPPORT = 97.
    assert_eq!(
        probe(&s, "p-sys", "syscalls")?,
        "probe getpid ok
probe clone-plain ok
probe socket-inet ok
probe socket-inet6 ok
probe socket-unix ok
probe socket-netlink-route ok
probe personality-query ok
probe clone-newuser errno 1
probe clone-newuser-newnet errno 1
probe clone-newns errno 1
probe unshare-newuser errno 1
probe clone3 errno 38
probe io-uring-setup errno 1
probe socket-vsock errno 97
probe socket-alg errno 97
probe socket-tipc errno 97
probe mount errno 1
probe keyctl errno 1
probe bpf errno 1
probe personality-no-aslr errno 1
probe setns errno 1
probe perf-event-open errno 1
probe open-by-handle-at errno 1
"
    );

    // A throwaway service on the host, on every address: the instance's gateway is one of them.
    let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    let net = sandbox.cidr.trim_end_matches(".0/24");
    let gateway = format!("{net}.1:{port}");
    // EHOSTUNREACH = 113: rejected by the host guard at once.
    assert_eq!(probe(&s, "p-net", &format!("connect {gateway}"))?, format!("probe connect-{gateway} errno 113\n"));
    Ok(())
}
