//! berth's images on disk: OCI layers unpacked safely — every path confined to its root, no
//! device nodes, no `..`, no writing through symlinks — into a content-addressed cache of
//! overlayfs-ready layer directories, or flattened into one root filesystem where overlayfs
//! is missing.
//!
//! It also builds images without Docker ([`build`]): a directory, or a binary with its shared
//! libraries, becomes a one-layer OCI image.
//!
//! Invariant: this crate does not talk to the store or the registry; it reads layer bytes from
//! whatever `Read` it is given.

pub mod build;
mod cache;
mod decompress;
pub mod pull;
mod remote;
mod route;
mod unpack;

pub use cache::{flatten, CacheError, LayerCache};

pub use decompress::{decompressor, Compression};
pub use pull::{pull, ImageConfig, ImageSource, PullError, PulledImage};
pub use remote::RemoteRegistry;
pub use route::{split_registry, SourceRouter};
pub use unpack::{unpack_layer, UnpackError, UnpackMode, UnpackStats};
