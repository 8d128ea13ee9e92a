//! # memplex-abi: the contract between the memplex host and its memory providers
//!
//! memplex splits received frames into head and payload and places each part in memory
//! from a pluggable *memory provider*, like the kernel's page_pool `memory_provider_ops`
//! (devmem TCP, io_uring zero-copy receive). This crate is everything a provider author
//! needs, and everything the host and a plugin must agree on:
//!
//! ```text
//!   plugin (.so)                     |  host (memplex)
//!   impl MemoryProvider + Plugin     |
//!   export_provider!(MyProvider) ----+--> root module, checked at load
//!     alloc_bulk(64) / release_bulk  |      (ABI version + layout)
//!     fill_bulk / fill_gather        |  Pool (cache 128, refill 64) -> frames
//!     memory / stats                 |
//! ```
//!
//! - [`Netmem`]: a buffer descriptor (id, address, length);
//! - [`MemoryProvider`] and [`Plugin`]: the traits an author implements in safe Rust;
//! - [`export_provider!`]: the one line that turns a `cdylib` into a provider plugin;
//! - [`ffi`]: the abi_stable root module and provider object (glue; authors skip it).
//!
//! A provider in full:
//!
//! ```
//! use memplex_abi::*;
//!
//! /// Hands out `pool_size` buffers from one boxed slice.
//! pub struct Arena { mem: Box<[u8]>, buf: u32, free: Vec<u32> }
//!
//! impl MemoryProvider for Arena {
//!     fn info(&self) -> ProviderInfo {
//!         let base = self.mem.as_ptr() as u64;
//!         ProviderInfo::new("arena", self.buf, self.free.capacity() as u32)
//!             .region(base, self.mem.len() as u64)
//!     }
//!     fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
//!         let base = self.mem.as_ptr() as u64;
//!         let n = out.len().min(self.free.len());
//!         for slot in &mut out[..n] {
//!             let id = self.free.pop().unwrap();
//!             *slot = Netmem::new(id, base + u64::from(id * self.buf), self.buf);
//!         }
//!         Ok(n)
//!     }
//!     fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
//!         self.free.extend(bufs.iter().map(|b| b.id));
//!         Ok(())
//!     }
//! }
//!
//! impl Plugin for Arena {
//!     fn describe() -> PluginDescription {
//!         PluginDescription::new("arena", "0.1.0", "one boxed slice cut into buffers")
//!     }
//!     fn init(p: &InitParams) -> Result<Self, ProviderError> {
//!         p.deny_unknown(&[])?;
//!         let buf = p.buf_size.next_multiple_of(8);
//!         let mem = vec![0u8; buf as usize * p.pool_size as usize].into_boxed_slice();
//!         Ok(Arena { mem, buf, free: (0..p.pool_size).rev().collect() })
//!     }
//! }
//!
//! // In a cdylib crate: memplex_abi::export_provider!(Arena);
//! let mut arena = Arena::init(&InitParams::new(0, 2048, 4)).unwrap();
//! let mut out = [Netmem::EMPTY; 8];
//! assert_eq!(arena.alloc_bulk(&mut out).unwrap(), 4);
//! ```
#![deny(missing_docs)]

mod error;
pub mod ffi;
mod info;
mod netmem;
mod params;
mod provider;

pub use error::{ErrorKind, ProviderError};
pub use ffi::ABI_VERSION;
pub use info::{
    Capabilities, FillOp, GatherOp, MemoryRegion, PluginDescription, ProviderInfo, Region,
    RegionKind, Stat,
};
pub use netmem::Netmem;
pub use params::InitParams;
pub use provider::{fill_each, gather_each, MemoryProvider, Plugin};

/// abi_stable's string and vector types used in this contract, re-exported so authors need
/// no direct dependency.
pub use abi_stable::std_types::{RString, RVec};
