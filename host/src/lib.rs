//! # memplex: userspace header-split with pluggable memory providers
//!
//! A NIC with header-split puts a frame's protocol headers in one buffer and its payload in
//! others, each from a *memory provider* (the kernel's page_pool `memory_provider_ops`:
//! devmem TCP, io_uring zero-copy receive). memplex does this in userspace: providers are
//! plugins, and buffers recycle through page_pool-like pools.
//!
//! ```text
//!   ProviderPlugin (built-in | .so)        provider: loading, discovery, descriptor checks
//!        | instantiate(queue, buf_size)
//!        v
//!   CheckedProvider --alloc_bulk(64)--> Pool (cache 128 -> ring -> provider)
//!                                          | alloc() / place() / recycle()
//!                                          v
//!                                     PoolBuf --> consumer --Recycler--> Pool
//! ```
//!
//! - [`provider`]: the [`MemoryProvider`](provider::MemoryProvider) abstraction, built-in
//!   and native loaders, plugin discovery, the contract checker;
//! - [`pool`]: the page_pool equivalent and its counters;
//! - [`conformance`]: the suite behind `memplex check-provider`;
//! - [`demo`]: the synthetic split-and-place workload behind `memplex demo`.
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
pub mod demo;
pub mod device;
mod mem;
pub mod pool;
pub mod provider;
pub mod route;
pub mod runtime;
pub mod testnet;
pub mod traffic;
pub mod wire;
