//! The trait a provider author implements, in plain safe Rust.

use crate::{
    FillOp, GatherOp, InitParams, MemoryRegion, Netmem, PluginDescription, ProviderError,
    ProviderInfo, Stat,
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
///   (while it is lent to a consumer process the host still answers for it).
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

    /// Writes a batch: for each op in order, the next `op.len` bytes of `bytes` go to
    /// `op.offset` in `op.buf`; returns how many ops were done (ABI 0.1.1). One call per
    /// frame rather than one per part, for memory the host may not write. The default
    /// calls [`fill`](Self::fill) for each op.
    fn fill_bulk(&mut self, ops: &[FillOp], bytes: &[u8]) -> Result<usize, ProviderError> {
        fill_each(self, ops, bytes)
    }

    /// Writes the parts of many frames (ABI 0.1.2): for each op in order, its bytes go to
    /// `op.offset` in `op.buf`; returns how many ops were done. For memory it may not
    /// write, the host makes one such call per device burst (up to 64 frames; 256 ops a
    /// call) and provider, where [`fill_bulk`](Self::fill_bulk) can take only one frame
    /// (its ops share one run of bytes). A provider that moves bytes by DMA or by system
    /// call submits the whole burst at once here. The default calls [`fill`](Self::fill)
    /// for each op.
    fn fill_gather(&mut self, ops: &[GatherOp<'_>]) -> Result<usize, ProviderError> {
        gather_each(self, ops)
    }

    /// Where the buffers lie, typed (ABI 0.1.1): host memory, host memory that can be
    /// shared by file descriptor, or device memory the host cannot map. Empty (the
    /// default) means what 0.1.0 said: `info().regions`, host memory, not shareable.
    ///
    /// Host-mapped regions listed here should be in `info().regions` too (hosts before
    /// 0.1.1 read only those); device regions must not be.
    fn memory(&self) -> Vec<MemoryRegion> {
        Vec::new()
    }

    /// The provider's own counters, for `memplex` stats output.
    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }

    /// Called once before the instance is dropped; release everything here.
    fn destroy(&mut self) {}
}

/// [`MemoryProvider::fill_bulk`] done one [`fill`](MemoryProvider::fill) per op: the
/// default, and what a host does for a provider built before bulk fill existed.
pub fn fill_each<P: MemoryProvider + ?Sized>(
    provider: &mut P,
    ops: &[FillOp],
    bytes: &[u8],
) -> Result<usize, ProviderError> {
    let mut at = 0usize;
    for (done, op) in ops.iter().enumerate() {
        let Some(src) = bytes.get(at..at + op.len as usize) else {
            return Err(ProviderError::bad_buffer(format!(
                "fill op {done} asks for bytes past the {} given",
                bytes.len()
            )));
        };
        provider.fill(op.buf, op.offset, src)?;
        at += op.len as usize;
    }
    Ok(ops.len())
}

/// [`MemoryProvider::fill_gather`] done one [`fill`](MemoryProvider::fill) per op: the
/// default.
pub fn gather_each<P: MemoryProvider + ?Sized>(
    provider: &mut P,
    ops: &[GatherOp<'_>],
) -> Result<usize, ProviderError> {
    for op in ops {
        provider.fill(op.buf, op.offset, op.bytes())?;
    }
    Ok(ops.len())
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
