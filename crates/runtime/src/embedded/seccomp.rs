//! The default seccomp filter, installed with seccompiler (pure Rust, no libseccomp) just before
//! the container's process is executed. It is an allowlist that matches Docker's default
//! profile (moby's `profiles/seccomp/default.json` for a container without CAP_SYS_ADMIN) entry
//! by entry, with the argument filters that matter: everything an ordinary program needs,
//! nothing that reaches into the kernel's administration (mount, namespaces, modules, keyrings,
//! bpf, perf, reboot, clock setting, …), which fail with EPERM. `clone` may not create
//! namespaces, `clone3` answers ENOSYS so C libraries fall back to `clone` (whose flags a filter
//! can see), `personality` takes only moby's values. Stricter than moby: io_uring is denied (as
//! moby does since 25.0), and sockets are limited to the families a web app uses — anything else
//! answers EAFNOSUPPORT, so rarely used protocol code (and its module autoloading) stays out of
//! reach. docs/security.md lists every difference.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// io_pgetevents(2), which the libc crate does not name on every architecture.
#[cfg(target_arch = "x86_64")]
const SYS_IO_PGETEVENTS: libc::c_long = 333;
#[cfg(target_arch = "aarch64")]
const SYS_IO_PGETEVENTS: libc::c_long = 292;

/// System calls allowed by default.
#[rustfmt::skip]
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_accept, libc::SYS_accept4, libc::SYS_adjtimex, libc::SYS_bind, libc::SYS_brk,
    libc::SYS_capget, libc::SYS_capset, libc::SYS_chdir, libc::SYS_chroot, libc::SYS_clock_adjtime, libc::SYS_clock_getres,
    libc::SYS_clock_gettime, libc::SYS_clock_nanosleep, libc::SYS_clone3, libc::SYS_close, libc::SYS_close_range,
    libc::SYS_connect, libc::SYS_copy_file_range, libc::SYS_dup, libc::SYS_dup3, libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2, libc::SYS_execve, libc::SYS_execveat,
    libc::SYS_exit, libc::SYS_exit_group, libc::SYS_faccessat, libc::SYS_faccessat2, libc::SYS_fadvise64, libc::SYS_fallocate,
    libc::SYS_fanotify_mark, libc::SYS_fchdir, libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchown, libc::SYS_fchownat,
    libc::SYS_fcntl, libc::SYS_fdatasync, libc::SYS_fgetxattr, libc::SYS_flistxattr, libc::SYS_flock, libc::SYS_fremovexattr,
    libc::SYS_fsetxattr, libc::SYS_fstatfs, libc::SYS_fsync, libc::SYS_ftruncate, libc::SYS_futex, libc::SYS_futex_waitv,
    libc::SYS_getcpu, libc::SYS_getcwd, libc::SYS_getdents64, libc::SYS_getegid, libc::SYS_geteuid, libc::SYS_getgid,
    libc::SYS_getgroups, libc::SYS_getitimer, libc::SYS_getpeername, libc::SYS_getpgid, libc::SYS_getpgrp, libc::SYS_getpid,
    libc::SYS_getppid, libc::SYS_getpriority, libc::SYS_getrandom, libc::SYS_getresgid, libc::SYS_getresuid, libc::SYS_getrlimit,
    libc::SYS_get_robust_list, libc::SYS_getrusage, libc::SYS_getsid, libc::SYS_getsockname, libc::SYS_getsockopt, libc::SYS_gettid,
    libc::SYS_gettimeofday, libc::SYS_getuid, libc::SYS_getxattr, libc::SYS_inotify_add_watch, libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch, libc::SYS_io_cancel, libc::SYS_ioctl, libc::SYS_io_destroy, libc::SYS_io_getevents,
    SYS_IO_PGETEVENTS, libc::SYS_ioprio_get, libc::SYS_ioprio_set, libc::SYS_io_setup, libc::SYS_io_submit,
    libc::SYS_kill, libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset, libc::SYS_landlock_restrict_self, libc::SYS_lgetxattr, libc::SYS_linkat, libc::SYS_listen,
    libc::SYS_listxattr, libc::SYS_llistxattr, libc::SYS_lremovexattr, libc::SYS_lseek, libc::SYS_lsetxattr, libc::SYS_madvise,
    libc::SYS_membarrier, libc::SYS_memfd_create, libc::SYS_memfd_secret, libc::SYS_mincore, libc::SYS_mkdirat, libc::SYS_mknodat, libc::SYS_mlock,
    libc::SYS_mlock2, libc::SYS_mlockall, libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_mq_getsetattr, libc::SYS_mq_notify,
    libc::SYS_mq_open, libc::SYS_mq_timedreceive, libc::SYS_mq_timedsend, libc::SYS_mq_unlink, libc::SYS_mremap, libc::SYS_msgctl,
    libc::SYS_msgget, libc::SYS_msgrcv, libc::SYS_msgsnd, libc::SYS_msync, libc::SYS_munlock, libc::SYS_munlockall,
    libc::SYS_munmap, libc::SYS_name_to_handle_at, libc::SYS_nanosleep, libc::SYS_newfstatat, libc::SYS_openat, libc::SYS_openat2, libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal, libc::SYS_pipe2, libc::SYS_pkey_alloc, libc::SYS_pkey_free, libc::SYS_pkey_mprotect,
    libc::SYS_ppoll, libc::SYS_prctl, libc::SYS_pread64, libc::SYS_process_mrelease, libc::SYS_preadv, libc::SYS_preadv2, libc::SYS_prlimit64,
    libc::SYS_pselect6, libc::SYS_pwrite64, libc::SYS_pwritev, libc::SYS_pwritev2, libc::SYS_read, libc::SYS_readahead,
    libc::SYS_readlinkat, libc::SYS_readv, libc::SYS_recvfrom, libc::SYS_recvmmsg, libc::SYS_recvmsg, libc::SYS_remap_file_pages,
    libc::SYS_removexattr, libc::SYS_renameat, libc::SYS_renameat2, libc::SYS_restart_syscall, libc::SYS_rseq,
    libc::SYS_rt_sigaction, libc::SYS_rt_sigpending, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend, libc::SYS_rt_sigtimedwait, libc::SYS_rt_tgsigqueueinfo, libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr, libc::SYS_sched_getparam, libc::SYS_sched_get_priority_max, libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getscheduler, libc::SYS_sched_rr_get_interval, libc::SYS_sched_setaffinity, libc::SYS_sched_setattr,
    libc::SYS_sched_setparam, libc::SYS_sched_setscheduler, libc::SYS_sched_yield, libc::SYS_seccomp, libc::SYS_semctl,
    libc::SYS_semget, libc::SYS_semop, libc::SYS_semtimedop, libc::SYS_sendfile, libc::SYS_sendmmsg, libc::SYS_sendmsg,
    libc::SYS_sendto, libc::SYS_setfsgid, libc::SYS_setfsuid, libc::SYS_setgid, libc::SYS_setgroups, libc::SYS_setitimer,
    libc::SYS_setpgid, libc::SYS_setpriority, libc::SYS_setregid, libc::SYS_setresgid, libc::SYS_setresuid, libc::SYS_setreuid,
    libc::SYS_setrlimit, libc::SYS_set_robust_list, libc::SYS_setsid, libc::SYS_setsockopt, libc::SYS_set_tid_address,
    libc::SYS_setuid, libc::SYS_setxattr, libc::SYS_shmat, libc::SYS_shmctl, libc::SYS_shmdt, libc::SYS_shmget,
    libc::SYS_shutdown, libc::SYS_sigaltstack, libc::SYS_signalfd4, libc::SYS_socket, libc::SYS_socketpair, libc::SYS_splice,
    libc::SYS_statfs, libc::SYS_statx, libc::SYS_symlinkat, libc::SYS_sync, libc::SYS_sync_file_range, libc::SYS_syncfs,
    libc::SYS_sysinfo, libc::SYS_tee, libc::SYS_tgkill, libc::SYS_timer_create, libc::SYS_timer_delete, libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime, libc::SYS_timer_settime, libc::SYS_timerfd_create, libc::SYS_timerfd_gettime, libc::SYS_timerfd_settime,
    libc::SYS_times, libc::SYS_tkill, libc::SYS_truncate, libc::SYS_umask, libc::SYS_uname, libc::SYS_unlinkat,
    libc::SYS_utimensat, libc::SYS_vmsplice, libc::SYS_wait4, libc::SYS_waitid, libc::SYS_write, libc::SYS_writev,
    libc::SYS_ptrace, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev,
];

/// Legacy system calls that exist on x86_64 only.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ALLOWED_ARCH: &[libc::c_long] = &[
    libc::SYS_access, libc::SYS_alarm, libc::SYS_arch_prctl, libc::SYS_chmod, libc::SYS_chown, libc::SYS_creat, libc::SYS_dup2,
    libc::SYS_epoll_create, libc::SYS_epoll_ctl_old, libc::SYS_epoll_wait, libc::SYS_epoll_wait_old, libc::SYS_eventfd, libc::SYS_fork,
    libc::SYS_fstat, libc::SYS_futimesat, libc::SYS_get_thread_area, libc::SYS_getdents, libc::SYS_inotify_init, libc::SYS_set_thread_area, libc::SYS_lchown, libc::SYS_link, libc::SYS_lstat, libc::SYS_mkdir, libc::SYS_mknod,
    libc::SYS_modify_ldt, libc::SYS_open, libc::SYS_pause, libc::SYS_pipe, libc::SYS_poll, libc::SYS_readlink, libc::SYS_rename,
    libc::SYS_rmdir, libc::SYS_select, libc::SYS_signalfd, libc::SYS_stat, libc::SYS_symlink, libc::SYS_time, libc::SYS_unlink,
    libc::SYS_utime, libc::SYS_utimes, libc::SYS_vfork,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_ARCH: &[libc::c_long] = &[];

/// `clone` flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET): moby's mask. A nested user namespace would hand the process every capability there,
/// and with them netfilter and the rest of the kernel's namespaced administration.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `personality` values allowed, as moby: PER_LINUX, PER_LINUX32, UNAME26, both, and the query.
const PERSONALITIES: &[u64] = &[0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Socket families an instance may open: local, IPv4, IPv6, netlink (routing, diagnostics) and
/// packet sockets (which also need CAP_NET_RAW). Others answer EAFNOSUPPORT.
const SOCKET_FAMILIES: &[libc::c_int] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK, libc::AF_PACKET];

#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter failed: {0}")]
pub struct SeccompError(String);

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

/// One condition on the first argument (a 64-bit register, or the low 32 bits for an `int`).
fn arg0(len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(0, len, op, value).map_err(err)
}

/// The default filters, to install in this order (all apply; the strictest answer wins).
pub fn default_filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let errno = |e: i32| SeccompAction::Errno(e as u32);
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().chain(ALLOWED_ARCH).map(|n| (*n, Vec::new())).collect();
    let no_namespaces = arg0(SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS), 0)?;
    allow.insert(libc::SYS_clone, vec![SeccompRule::new(vec![no_namespaces]).map_err(err)?]);
    let personas = PERSONALITIES
        .iter()
        .map(|p| SeccompRule::new(vec![arg0(SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *p)?]).map_err(err))
        .collect::<Result<Vec<_>, _>>()?;
    allow.insert(libc::SYS_personality, personas);
    let allowlist = SeccompFilter::new(allow, errno(libc::EPERM), SeccompAction::Allow, ARCH).map_err(err)?;

    let other_family =
        SOCKET_FAMILIES.iter().map(|f| arg0(SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *f as u64)).collect::<Result<Vec<_>, _>>()?;
    let families = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_socket, vec![SeccompRule::new(other_family).map_err(err)?])]),
        SeccompAction::Allow,
        errno(libc::EAFNOSUPPORT),
        ARCH,
    )
    .map_err(err)?;
    let clone3 = SeccompFilter::new(BTreeMap::from([(libc::SYS_clone3, Vec::new())]), SeccompAction::Allow, errno(libc::ENOSYS), ARCH)
        .map_err(err)?;
    [allowlist, families, clone3].into_iter().map(|f| BpfProgram::try_from(f).map_err(err)).collect()
}

/// Installs the filters on the calling thread (it must have no-new-privileges set).
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_blocks_administration() -> Result<(), SeccompError> {
        let filters = default_filters()?;
        assert_eq!(filters.len(), 3);
        for blocked in [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_init_module,
            libc::SYS_bpf,
            libc::SYS_reboot,
            libc::SYS_keyctl,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            // Allowed only with argument filters.
            libc::SYS_clone,
            libc::SYS_personality,
        ] {
            assert!(!ALLOWED.contains(&blocked) && !ALLOWED_ARCH.contains(&blocked), "syscall {blocked} is allowed");
        }
        Ok(())
    }
}
