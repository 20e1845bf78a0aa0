//! KALE proof-of-work: Keccak-256 nonce search.
//!
//! The hashing core (`work`, `keccak`, `backend`, `scan`, `search`) is plain
//! Rust; the Python module (`python`) is a thin layer over it, built with the
//! default `python` feature.

pub mod backend;
mod keccak;
pub mod scan;
pub mod search;
pub mod work;

#[cfg(feature = "python")]
mod python;

pub use backend::Backend;
pub use keccak::keccak_f;
pub use search::{Search, SearchSpec, Snapshot, SpecError, StopReason};
pub use work::{leading_zeros, Work};
