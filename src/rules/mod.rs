//! The business rules, free of I/O: they take values and return values, so
//! each can be read on its own and tested with thousands of generated cases
//! (`cargo test --lib`, no database). Commands in `domain` apply them
//! inside a transaction.

pub mod calendar;
pub mod exchange;
pub mod input;
pub mod ledger;
pub mod paging;
pub mod review;
pub mod wheel;
