//! `berth-init`: the init berth can run as PID 1 of a container (`--init`), as Docker's
//! `--init` runs tini. An app that runs as PID 1 gets no default signal actions — SIGTERM does
//! nothing unless it installs a handler — and inherits every orphan to reap. Run under this
//! init instead, the app is an ordinary process: the signals berth (or anyone) sends the
//! container are forwarded to it, orphans are reaped, and the container exits with the app's
//! status (128 + the signal when a signal ended it).
//!
//! Usage: `berth-init -- <program> [args…]`. Standard library only, plus the C library's
//! signal and wait calls, so it builds into one small static binary that berth bind-mounts into
//! the container.

// Signal masks, sigtimedwait, kill and waitpid: the C library is the only way there.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode};

/// The kernel's signal set (1024 bits, as glibc defines `sigset_t`).
#[repr(C)]
struct SigSet([u64; 16]);

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn sigfillset(set: *mut SigSet) -> c_int;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigtimedwait(set: *const SigSet, info: *mut [u8; 128], timeout: *const Timespec) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
}

const SIG_BLOCK: c_int = 0;
const SIG_SETMASK: c_int = 2;
const WNOHANG: c_int = 1;
const SIGCHLD: c_int = 17;
/// Signals that are the terminal's business, not the app's.
const NOT_FORWARDED: [c_int; 4] = [SIGCHLD, 21 /* SIGTTIN */, 22 /* SIGTTOU */, 28 /* SIGWINCH */];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a != "--").skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("berth-init: usage: berth-init -- <program> [args…]");
        return ExitCode::from(2);
    };
    // Every signal is taken synchronously here; the app gets the ordinary mask back.
    let mut all = SigSet([0; 16]);
    let mut none = SigSet([0; 16]);
    // SAFETY: plain calls on signal sets this function owns.
    unsafe {
        sigfillset(&mut all);
        sigemptyset(&mut none);
        sigprocmask(SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: sigprocmask is async-signal-safe, as what runs between fork and exec must be.
    unsafe {
        cmd.pre_exec(|| {
            let empty = SigSet([0; 16]);
            sigprocmask(SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-init: cannot run {program}: {e}");
            return ExitCode::from(127);
        }
    };
    let app = child.id() as c_int;
    // The child is reaped below with the other orphans, by pid.
    std::mem::forget(child);
    let tick = Timespec { tv_sec: 0, tv_nsec: 250_000_000 };
    loop {
        let mut info = [0u8; 128];
        // SAFETY: `all`, `info` and `tick` outlive the call.
        let sig = unsafe { sigtimedwait(&all, &mut info, &tick) };
        if sig > 0 && !NOT_FORWARDED.contains(&sig) {
            // SAFETY: signalling a pid this process started.
            unsafe { kill(app, sig) };
        }
        // Reap whatever ended: the app, or orphans that landed here.
        loop {
            let mut status: c_int = 0;
            // SAFETY: `status` outlives the call.
            let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == app {
                let status = std::process::ExitStatus::from_raw(status);
                let code = status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(1);
                return ExitCode::from(code.clamp(0, 255) as u8);
            }
        }
    }
}
