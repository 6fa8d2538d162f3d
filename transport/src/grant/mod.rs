//! The guest side of a grant table, by the rules of the seed header.
//!
//! * [`entry`]: the rules for one entry, guest and hypervisor halves, as
//!   atomic operations with their orderings explained (model-checked with
//!   loom in its tests).
//! * [`table`]: a grant table over a shared region of `grant_entry_v1`, with
//!   a reference allocator (entries 0..8 reserved).

pub mod entry;
pub mod table;

pub use entry::{EntryError, Reclaim};
pub use table::{GrantError, GrantTable};
