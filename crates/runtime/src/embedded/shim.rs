//! The shim: one small single-threaded process per instance, started detached by the server
//! (`berth shim run <instance dir>`). It creates and starts the container with libcontainer —
//! which clones the calling process, and so must not run inside the server's multi-threaded
//! async runtime — then holds the container's stdout and stderr, writing them to a rotated log
//! with timestamps, reaps it as a child subreaper and records how it ended. It outlives a
//! restart of the server, which re-adopts instances from their files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use seccompiler::BpfProgram;

use super::files::{write_atomic, ExitRecord, InstanceFiles};
use super::seccomp;

/// Rotate the log when it reaches this size; keep this many old files.
const LOG_ROTATE_BYTES: u64 = 10 << 20;
const LOG_KEEP: usize = 3;
/// The shim trims its memory once its container's output has been quiet this long.
const TRIM_AFTER_IDLE_MS: u16 = 1000;

/// Runs the workload after installing berth's seccomp filters.
#[derive(Clone)]
struct SeccompExecutor {
    filters: Vec<BpfProgram>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        seccomp::install(&self.filters).map_err(|e| ExecutorError::Other(e.to_string()))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `berth shim run <dir>`, `berth shim delete <dir>`, and the internal
/// `berth shim watch <dir> <pid> <stdout fd> <stderr fd>`.
pub fn main(args: &[String]) -> ExitCode {
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("run"), Some(dir)) => run(Path::new(dir)),
        (Some("watch"), Some(dir)) => watch(Path::new(dir), &args[2..]),
        (Some("delete"), Some(dir)) => match delete(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth shim: deleting the container failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: berth shim run|delete <instance dir> (started by berth server, not by hand)");
            ExitCode::from(2)
        }
    }
}

fn run(dir: &Path) -> ExitCode {
    // libcontainer reports through tracing; BERTH_SHIM_LOG (e.g. `debug`) makes it talk.
    if let Ok(filter) = std::env::var("BERTH_SHIM_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(io::stderr).try_init();
    }
    let files = InstanceFiles::new(dir);
    let _ = nix::unistd::setsid();
    let _ = write_atomic(&files.shim_pid(), std::process::id().to_string().as_bytes());
    match start(&files) {
        Ok((pid, out, err)) => {
            // The rest of the shim's life is spent watching: start it afresh as a small process
            // image (libcontainer's pages stay behind), keeping the pid, the subreaper flag and
            // the pipes.
            let watch = reexec_watch(&files, pid, &out, &err);
            tracing::warn!(error = %watch, "could not re-execute the shim to watch; watching in place");
            finish(&files, pid, out, err)
        }
        Err(e) => {
            let _ = write_atomic(&files.start_error(), e.as_bytes());
            ExitCode::FAILURE
        }
    }
}

/// Replaces this process with `berth shim watch`; returns only on failure.
fn reexec_watch(files: &InstanceFiles, pid: Pid, out: &OwnedFd, err: &OwnedFd) -> io::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    for fd in [out, err] {
        if let Err(e) = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())) {
            return io::Error::other(e);
        }
    }
    std::process::Command::new("/proc/self/exe")
        .arg("shim")
        .arg("watch")
        .arg(&files.dir)
        .arg(pid.as_raw().to_string())
        .arg(out.as_raw_fd().to_string())
        .arg(err.as_raw_fd().to_string())
        .exec()
}

/// `berth shim watch`: pump the logs, wait for the container, record its end.
fn watch(dir: &Path, args: &[String]) -> ExitCode {
    let files = InstanceFiles::new(dir);
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<i32>().ok());
    let (Some(pid), Some(out), Some(err)) = (num(0), num(1), num(2)) else {
        eprintln!("usage: berth shim watch <dir> <pid> <stdout fd> <stderr fd> (internal)");
        return ExitCode::from(2);
    };
    // Reopening the inherited pipes through /proc gives owned handles without unsafe code.
    let open = |fd: i32| File::open(format!("/proc/self/fd/{fd}")).map(OwnedFd::from);
    match (open(out), open(err)) {
        (Ok(o), Ok(e)) => finish(&files, Pid::from_raw(pid), o, e),
        _ => ExitCode::FAILURE,
    }
}

/// Drops this process's clean, read-only file pages — the code and constants of the binary and
/// its libraries touched since the last trim — and returns free heap to the kernel. The file
/// pages stay in the page cache (shared with the server and every other shim); the few the next
/// burst of work needs fault back in. This keeps an idle shim's resident memory small.
#[allow(unsafe_code)]
fn trim_memory() {
    // SAFETY: malloc_trim only hands free memory at the top of the heap back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let mut region: Option<(usize, usize, bool)> = None;
    let mut copied = 0u64;
    let flush = |region: Option<(usize, usize, bool)>, copied: u64| {
        if let Some((start, end, droppable)) = region {
            if droppable && copied == 0 {
                // SAFETY: the range is a whole mapping of this process, read-only, private, backed
                // by a file and without a single copied-on-write (anonymous) page: every page is
                // the file's own, so discarding it loses nothing and any later access reads the
                // same bytes back from the page cache.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|(a, _)| a.bytes().all(|c| c.is_ascii_hexdigit())) {
            flush(region.take(), copied);
            copied = 0;
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
            let read_only_private = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-') && perms.ends_with('p');
            region = Some((start, end, read_only_private && path.starts_with('/')));
        } else if first == "Anonymous:" {
            copied += fields.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    flush(region, copied);
}

fn finish(files: &InstanceFiles, pid: Pid, out: OwnedFd, err: OwnedFd) -> ExitCode {
    let cgroup = cgroup_path(files);
    pump_logs(files, out, err);
    let record = wait_for(pid, cgroup.as_deref());
    let _ = write_atomic(&files.exit(), serde_json::to_vec(&record).unwrap_or_default().as_slice());
    ExitCode::SUCCESS
}

fn start(files: &InstanceFiles) -> Result<(Pid, OwnedFd, OwnedFd), String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("becoming a subreaper: {e}"))?;
    std::fs::create_dir_all(files.logs()).map_err(|e| format!("creating the log directory: {e}"))?;
    std::fs::create_dir_all(files.state()).map_err(|e| format!("creating the state directory: {e}"))?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
    let devnull = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    let filters = seccomp::default_filters().map_err(|e| e.to_string())?;
    let mut container = ContainerBuilder::new(files.id(), SyscallType::default())
        .with_executor(SeccompExecutor { filters })
        .with_root_path(files.state())
        .map_err(|e| format!("{e}"))?
        .with_stdin(devnull)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()
        .map_err(|e| format!("{e}"))?
        .as_init(files.bundle())
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {e}"))?;
    container.start().map_err(|e| format!("starting the container: {e}"))?;
    let pid = container.pid().ok_or("the container has no pid after starting")?;
    write_atomic(&files.container_pid(), pid.as_raw().to_string().as_bytes()).map_err(|e| format!("recording the pid: {e}"))?;
    Ok((pid, out_r, err_r))
}

/// The container's cgroup path from its spec, for the OOM check.
fn cgroup_path(files: &InstanceFiles) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(files.config()).ok()?).ok()?;
    spec["linux"]["cgroupsPath"].as_str().map(str::to_owned)
}

/// An append-only log with size-based rotation.
struct Log {
    path: std::path::PathBuf,
    file: Option<File>,
    size: u64,
    rotate_at: u64,
}

impl Log {
    fn open(path: &Path, rotate_at: u64) -> Log {
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        let size = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        Log { path: path.to_owned(), file, size, rotate_at }
    }

    fn line(&mut self, stream: &str, text: &[u8]) {
        if self.size >= self.rotate_at {
            self.rotate();
        }
        let ts = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let mut rec = format!("{ts} {stream} ").into_bytes();
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if let Some(f) = &mut self.file {
            if f.write_all(&rec).is_ok() {
                self.size += rec.len() as u64;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        for i in (1..LOG_KEEP).rev() {
            let _ = std::fs::rename(self.path.with_extension(format!("log.{i}")), self.path.with_extension(format!("log.{}", i + 1)));
        }
        let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        *self = Log::open(&self.path.clone(), self.rotate_at);
    }
}

/// Copies both pipes into the log, line by line, until the container closes them. After each
/// burst of output, once the pipes have been quiet for [`TRIM_AFTER_IDLE_MS`], the shim trims its
/// memory, so an idle instance costs as little as possible.
fn pump_logs(files: &InstanceFiles, out: OwnedFd, err: OwnedFd) {
    let mut log = Log::open(&files.log(), LOG_ROTATE_BYTES);
    let mut streams: Vec<(OwnedFd, &str, Vec<u8>)> = vec![(out, "stdout", Vec::new()), (err, "stderr", Vec::new())];
    let mut buf = vec![0u8; 16 << 10];
    let mut busy = true;
    while !streams.is_empty() {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = streams.iter().map(|(fd, _, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
            let timeout = if busy { PollTimeout::from(TRIM_AFTER_IDLE_MS) } else { PollTimeout::NONE };
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    trim_memory();
                    busy = false;
                    continue;
                }
                Ok(_) => {
                    busy = true;
                    fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        };
        let mut closed = Vec::new();
        for (i, (fd, name, pending)) in streams.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(fd), &mut buf) {
                Ok(0) | Err(_) => {
                    if !pending.is_empty() {
                        log.line(name, pending);
                        pending.clear();
                    }
                    closed.push(i);
                }
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=nl).collect();
                        log.line(name, &line[..line.len() - 1]);
                    }
                    // A very long line without a newline is written in pieces.
                    if pending.len() > 16 << 10 {
                        log.line(name, pending);
                        pending.clear();
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            streams.remove(i);
        }
    }
}

/// Waits for the container process, reaping any other orphan that lands on the shim.
fn wait_for(pid: Pid, cgroup: Option<&str>) -> ExitRecord {
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return ExitRecord { code, signal: None, oom_killed: false, at: now() },
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                let oom = sig == nix::sys::signal::Signal::SIGKILL && cgroup.is_some_and(oom_killed);
                return ExitRecord { code: 128 + sig as i32, signal: Some(sig as i32), oom_killed: oom, at: now() };
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ExitRecord { code: -1, signal: None, oom_killed: false, at: now() },
        }
    }
}

/// Whether the memory cgroup recorded an OOM kill (v1 `memory.oom_control`, v2 `memory.events`).
fn oom_killed(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    let candidates = [
        (Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control"), "oom_kill"),
        (Path::new("/sys/fs/cgroup").join(rel).join("memory.events"), "oom_kill"),
    ];
    candidates.iter().any(|(file, key)| {
        std::fs::read_to_string(file).is_ok_and(|s| {
            s.lines().any(|l| {
                l.split_whitespace().collect::<Vec<_>>().as_slice().first() == Some(key)
                    && l.split_whitespace().nth(1).is_some_and(|n| n != "0")
            })
        })
    })
}

/// Removes the container's libcontainer state and cgroups, killing what is left.
fn delete(dir: &Path) -> io::Result<()> {
    let files = InstanceFiles::new(dir);
    let root = files.state().join(files.id());
    if !root.exists() {
        return Ok(());
    }
    let mut container = libcontainer::container::Container::load(root).map_err(|e| io::Error::other(e.to_string()))?;
    container.delete(true).map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_timestamped_and_rotated() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("current.log");
        let mut log = Log::open(&path, 200);
        for i in 0..40 {
            log.line(if i % 2 == 0 { "stdout" } else { "stderr" }, format!("line {i}").as_bytes());
        }
        let current = std::fs::read_to_string(&path)?;
        let first = current.lines().next().unwrap_or_default();
        let mut parts = first.splitn(3, ' ');
        let ts = parts.next().unwrap_or_default();
        assert!(time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(), "{first}");
        assert!(matches!(parts.next(), Some("stdout" | "stderr")), "{first}");
        assert!(current.ends_with("stderr line 39\n"), "{current}");
        // At most LOG_KEEP old files, each near the size limit; the oldest lines are gone.
        let olds: Vec<_> = (1..=LOG_KEEP + 1).map(|i| path.with_extension(format!("log.{i}"))).collect();
        assert!(olds[..LOG_KEEP].iter().all(|p| p.exists()) && !olds[LOG_KEEP].exists());
        for p in &olds[..LOG_KEEP] {
            assert!(std::fs::metadata(p)?.len() < 300);
        }
        let all: String =
            olds[..LOG_KEEP].iter().rev().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<String>() + &current;
        assert!(!all.contains("line 0\n") && all.contains("line 39"));
        Ok(())
    }
}
