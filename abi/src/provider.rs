//! The trait a provider author implements, in plain safe Rust.

use crate::{
    Delivery, InitParams, Netmem, PluginDescription, ProviderError, ProviderInfo, Segment, Stat,
};

/// A memory provider: the userspace `memory_provider_ops`.
///
/// Built-in providers, native `.so` plugins and sandboxed WASM modules all appear to the host
/// as a `Box<dyn MemoryProvider>`, so nothing above this trait knows which kind it talks to.
///
/// The host calls these ops only on its slow path: a page_pool-like cache in front of every
/// instance takes buffers 64 at a time and gives them back in bulk. Each instance serves
/// one receive queue and is called from one thread at a time.
///
/// # The contract
///
/// - `alloc_bulk` fills a prefix of `out` with descriptors of free buffers and returns how
///   many it wrote; fewer than asked (even zero) means it is running dry, which is not an
///   error. Every id is below `info().capacity`, the same id always names the same memory,
///   no two live buffers overlap, each is at least `info().buf_size` long and aligned to
///   `info().align`. A buffer stays the host's until it comes back through `release_bulk`
///   or a `deliver` that returns [`Delivery::Taken`].
/// - `release_bulk` takes back buffers this instance handed out.
/// - An error of any kind is reported to the host; a panic is caught on the plugin side
///   and reported as [`ErrorKind::PANICKED`](crate::ErrorKind::PANICKED), after which the
///   instance is never called again.
pub trait MemoryProvider: Send {
    /// What this instance offers. Called once after `init`, and by diagnostics.
    fn info(&self) -> ProviderInfo;

    /// Hands out up to `out.len()` free buffers; returns how many were written to `out`.
    fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError>;

    /// Takes back buffers handed out earlier.
    fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError>;

    /// Writes `bytes` at `offset` in `buf`, for memory the host may not write itself
    /// ([`Capabilities::NEEDS_FILL`](crate::Capabilities::NEEDS_FILL)).
    fn fill(&mut self, buf: Netmem, offset: u32, bytes: &[u8]) -> Result<(), ProviderError> {
        let _ = (buf, offset, bytes);
        Err(ProviderError::unsupported("fill"))
    }

    /// Copies `out.len()` bytes at `offset` in `buf` into `out`, for memory the CPU may not
    /// read by address (no [`Capabilities::CPU_READABLE`](crate::Capabilities::CPU_READABLE)):
    /// how consumers such as `memplex`'s verify and pcap sinks see a sandboxed provider's
    /// bytes. The default says the memory cannot be read.
    ///
    /// Host-side only: it is not part of the `.so` ABI, whose providers either are
    /// CPU-readable or are not readable at all.
    fn read(&self, buf: Netmem, offset: u32, out: &mut [u8]) -> Result<(), ProviderError> {
        let _ = (buf, offset, out);
        Err(ProviderError::unsupported("read"))
    }

    /// Offers a placed frame to an exporting provider. The default declines it.
    fn deliver(&mut self, segments: &[Segment]) -> Result<Delivery, ProviderError> {
        let _ = segments;
        Ok(Delivery::Declined)
    }

    /// The provider's own counters, for `memplex` stats output.
    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }

    /// Called once before the instance is dropped; release everything here.
    fn destroy(&mut self) {}
}

/// A provider that can be exported from a plugin with [`export_provider!`](crate::export_provider)
/// or registered as a built-in.
pub trait Plugin: MemoryProvider + Sized + 'static {
    /// Static facts about the plugin: name, version, one-line summary.
    fn describe() -> PluginDescription;

    /// Makes one instance for one receive queue.
    fn init(params: &InitParams) -> Result<Self, ProviderError>;
}

impl PluginDescription {
    /// Makes a description.
    pub fn new(name: &str, version: &str, summary: &str) -> Self {
        PluginDescription {
            name: name.into(),
            version: version.into(),
            summary: summary.into(),
        }
    }
}
