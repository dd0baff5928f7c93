//! Wire types of the restaurant points server, shared by the server, the
//! load generator and any Rust client. `README.md` beside this crate is the
//! human-readable protocol; this crate is its machine-checked half.

pub mod codes;
pub mod frames;
pub mod ids;
pub mod types;

pub use codes::{ErrorCode, close};
pub use frames::*;
pub use ids::*;
pub use types::*;
