//! The embedded backend's building blocks: root filesystems from cached layers (overlayfs, or
//! a copy where overlayfs is missing). Execution (a libcontainer shim) and networking (bridge,
//! IPAM, one netns per instance) build on these.

pub mod files;
pub mod oci;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
