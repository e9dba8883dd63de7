//! The embedded backend: root filesystems from cached layers (overlayfs, or a copy where
//! overlayfs is missing), the OCI runtime spec with berth's isolation defaults, a seccomp
//! allowlist, the libcontainer shim that runs and watches each container, and networking
//! (bridge, IPAM, one netns per instance).

mod engine;
pub mod files;
pub mod firewall;
pub mod netlink;
pub mod network;
pub mod oci;
pub mod rootfs;
pub mod seccomp;
pub mod secret_files;
pub mod shim;

pub use engine::{EmbeddedConfig, EmbeddedRuntime, LogRetention};
