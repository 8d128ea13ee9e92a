//! Tests of the `memplex` program, run as a user would: one binary, shared fixtures.
//!
//! The native plugins and fixtures are built by `cargo xtask test` (or `cargo build
//! --workspace`) before these run; a missing one fails with that hint, never skips.

mod cli;
mod deliver;
mod forward;

pub use memplex_testkit::fixtures::{build_dir, so};

/// A loopback TCP port free right now, for a run's metrics endpoint: the kernel picks it
/// (a port computed from the process id could fall in the ephemeral range, where another
/// test's connection may hold it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
