//! What an instance cannot do, tried from inside one (as root): `examples/probe` runs in a real
//! container and reports what the kernel answered. Namespaces, io_uring, unusual socket
//! families, mount, keyrings, bpf and the rest are refused by the seccomp filter (a few allowed
//! calls show the probe works), and a service on the host, listening on every address, cannot
//! be reached from the instance.

mod support;

use std::time::Duration;

use berth_testkit::probe_binary;
use support::*;

/// A server with the embedded runtime and the probe pushed as `probe:v1`.
fn server_with_probe(name: &str, octet: u8, instances: &str) -> Result<Server> {
    let s = Server::start_with_runtime(name, octet, instances)?;
    let tmp = tempfile::tempdir()?;
    let bin = probe_binary(tmp.path())?;
    s.cli_ok(&["image", "build", "--binary", &bin.display().to_string(), "-t", "probe:v1"])?;
    Ok(s)
}

#[test]
fn an_instance_cannot_reach_into_the_kernel_or_the_host() -> Result {
    let s = server_with_probe("i", 247, "p")?;

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
    let net = s.sandbox()?.cidr.trim_end_matches(".0/24");
    let gateway = format!("{net}.1:{port}");
    // ECONNREFUSED = 111: reset by the host's rules at once, whether or not anything listens.
    assert_eq!(probe(&s, "p-net", &format!("connect {gateway}"))?, format!("probe connect-{gateway} errno 111\n"));
    Ok(())
}

/// An app that does not handle SIGTERM ignores it as PID 1, so a stop waits out the grace
/// period and ends in SIGKILL; under berth's init (`--init`) the signal reaches it and the
/// stop takes no time.
#[test]
fn init_forwards_signals_to_an_app_that_ignores_them_as_pid_1() -> Result {
    let s = server_with_probe("n", 246, "n")?;
    for (name, init, grace, status) in [("n-plain", false, "1", "exited (137)"), ("n-init", true, "30", "exited (143)")] {
        let mut args = vec!["run", "probe:v1", "--name", name, "--command", "/app/probe connect"];
        if init {
            args.push("--init");
        }
        s.cli_ok(&args)?;
        finished_log(&s, name)?;
        let started = std::time::Instant::now();
        let stopped = s.cli_ok(&["instance", "stop", name, "--grace", grace])?;
        assert!(stopped.contains(status), "{name}: {stopped}");
        if init {
            assert!(started.elapsed() < Duration::from_secs(20), "the signal did not reach the app under the init");
        }
        s.cli_ok(&["instance", "delete", name])?;
    }
    Ok(())
}
