//! # memplex: userspace header-split with pluggable memory providers
//!
//! A NIC with header-split puts a frame's protocol headers in one buffer and its payload in
//! others, each from a *memory provider* (the kernel's page_pool `memory_provider_ops`:
//! devmem TCP, io_uring zero-copy receive). memplex does this in userspace: providers are
//! plugins, and buffers recycle through page_pool-like pools.
//!
//! One frame's walk visits each module once:
//!
//! ```text
//!  device      RxQueue::poll ──> &[RxFrame]: bytes in the device's memory + RxMeta
//!    │                           (queue, seq, timestamps, lengths, VLAN, virtio_net_hdr)
//!  wire        Splitter::split_into ──> Split: head length, layer or reason, offsets,
//!    │                                         routing fields (FrameMeta)
//!  route       RouteTable::route(&FrameMeta) ──> (rule, Route { head, frags, frags_rest })
//!    │
//!  pool        Pool::alloc ──(slow path, 64 at a time)──> CheckedProvider ──> provider
//!  provider    Pool::place: one copy of each byte range into its buffer
//!    │
//!  runtime     worker: a burst of PlacedFrames ──> Sink (count, verify, checksum, pcap, stream)
//!    │         then every buffer back to its pool's per-queue cache
//!  stats       counters per queue, route and provider: JSON, totals, Prometheus families
//! ```
//!
//! - [`config`]: the TOML config (with `MEMPLEX_*` environment overrides), validated;
//! - [`device`]: receive queues (TAP, AF_PACKET, in-memory replay and pcap) handing
//!   bursts of frames with metadata;
//! - [`wire`]: zero-copy header views and the split decision;
//! - [`route`]: the match grammar and the compiled route table;
//! - [`provider`]: the [`MemoryProvider`](provider::MemoryProvider) abstraction, built-in,
//!   native (`.so`) and WASM loaders, plugin discovery, the contract checker;
//! - [`pool`]: the page_pool equivalent and its counters;
//! - [`runtime`]: the engine, one worker per queue, placed frames and sinks;
//! - [`stats`]: every counter, defined once;
//! - [`conformance`]: the suite behind `memplex check-provider`.
//!
//! The `memplex` command-line program is a separate crate (`host/cli`), so a program that
//! embeds this library compiles none of its terminal, plotting or HTTP dependencies.
//!
//! ```
//! use memplex::pool::Pool;
//! use memplex::provider::{InitParams, ProviderPlugin};
//!
//! let plugin = ProviderPlugin::builtin("slab").unwrap();
//! let provider = plugin.instantiate(&InitParams::new(0, 2048, 256)).unwrap();
//! let mut pool = Pool::new(provider, 256);
//! let mut buf = pool.alloc().unwrap();
//! pool.place(&mut buf, 0, b"payload").unwrap();
//! assert_eq!(&buf.as_slice().unwrap()[..7], b"payload");
//! pool.recycle(buf).unwrap();
//! let report = pool.shutdown(std::time::Duration::from_millis(10));
//! assert_eq!(report.leaked, 0);
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod conformance;
pub mod deliver;
pub mod device;
mod mem;
pub mod pool;
pub mod provider;
pub mod route;
pub mod runtime;
pub mod stats;
pub mod wire;

/// Entry points for `fuzz/` (cargo-fuzz): built with the `fuzzing` feature only, not
/// part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Plays `script` as a consumer that lies, dies and comes back, against a worker
    /// driven by hand, and panics if anything is lost or the host is affected
    /// (`runtime::hostile`).
    pub fn hostile_consumer(script: &[u8]) {
        crate::runtime::hostile::play(script);
    }
}
