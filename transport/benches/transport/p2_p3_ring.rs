//! Placeholder until this figure's module is written: it measures nothing
//! and reports no row.

use super::common::Row;

/// Runs this module's measurements.
pub fn run() -> Vec<Row> {
    Vec::new()
}

/// Handles this module's child roles; false if `role` is not one of them.
pub fn child(_role: &str) -> bool {
    false
}
