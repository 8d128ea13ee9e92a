//! Tests of the `memplex` program, run as a user would: one binary, shared fixtures.
//!
//! The native plugins and fixtures are built by `cargo xtask test` (or `cargo build
//! --workspace`) before these run; a missing one fails with that hint, never skips.

mod cli;
mod deliver;
mod forward;

pub use memplex_testkit::fixtures::{build_dir, so};
