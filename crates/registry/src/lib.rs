//! berth's image registry: the OCI Distribution Spec v1.1 under `/v2/`, content-addressed blob
//! storage, ECR-style tag mutability, lifecycle rules, a garbage collector and push events.
//!
//! Invariants: the registry never runs containers; it decides no access itself but asks the
//! [`Principal`](berth_core::Principal) the API layer attached to the request; a blob is visible
//! only once complete and verified; a manifest is stored only when everything it references is.

pub mod blob_store;
mod error;

pub use blob_store::{BlobStore, FsBlobStore};
pub use error::{Code, RegistryError};
