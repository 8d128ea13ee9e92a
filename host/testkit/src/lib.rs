//! Fixtures for testing and benchmarking memplex, kept out of the library's public API:
//!
//! - [`traffic`]: deterministic traffic (generated frames of a shape, named mixes) and
//!   a pcap writer for them;
//! - [`fuzz`]: the bodies of the fuzz targets beyond the parser, also run on their seeds
//!   by the tests;
//! - [`fixtures`]: where the build put the plugins and fixtures tests load;
//! - [`net`]: test hosts in network namespaces (veth pairs, a mirrored TAP device, raw
//!   packet sockets), for the TAP tests, `memplex demo` and `memplex bench`.
//!
//! The integration tests, the criterion benchmarks and the `memplex` CLI depend on this
//! crate; a program embedding the `memplex` library does not.
#![deny(missing_docs)]

pub mod fixtures;
pub mod fuzz;
pub mod net;
pub mod traffic;
