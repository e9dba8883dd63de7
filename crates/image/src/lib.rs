//! berth's images on disk: OCI layers unpacked safely — through directory descriptors, never
//! following a symlink an image placed, within limits on size, entries, disk space and time —
//! into a content-addressed cache of overlayfs-ready layer directories, which are copied onto
//! one root filesystem where overlayfs is missing.
//!
//! It also builds images without Docker ([`build`]): a directory, or a binary with its shared
//! libraries, becomes a one-layer OCI image.
//!
//! Invariant: this crate does not talk to the store or the registry; it reads layer bytes from
//! whatever `Read` it is given.

mod beneath;
pub mod build;
mod cache;
mod copy;
mod decompress;
pub mod pull;
mod remote;
mod route;
mod unpack;

pub use beneath::read_in_root;
pub use cache::{flatten, CacheError, LayerCache};
pub use copy::{copy_layer, CopyError};
pub use decompress::{decompressor, Compression};
pub use pull::{pull, ImageConfig, ImageSource, PullError, PulledImage};
pub use remote::RemoteRegistry;
pub use route::{split_registry, SourceRouter};
pub use unpack::{unpack_layer, UnpackBudget, UnpackError, UnpackLimits, UnpackMode, UnpackStats};
