//! The host's side of the provider contract: every descriptor a provider hands out is
//! checked before the host uses it, and a provider that breaks the contract is quarantined.
//!
//! Checked on every hand-out (these run on the pool's slow path, 64 at a time):
//! the id is below the declared capacity and not already with the host; the address is
//! non-null, aligned as promised and inside the declared regions; the length is at least
//! what was asked for; the same id names the same memory as before; and a buffer seen for
//! the first time overlaps no other buffer of the instance.
//!
//! A breach, an error of a fatal kind or a panic quarantines the instance: it is not asked
//! for buffers again, the bad descriptors are counted and never used, and every buffer
//! the host holds is still accounted for. (This checker returns the good descriptors of
//! the batch; the pool gives them straight back, so nothing of a quarantined instance is
//! handed out.)

use super::LoadError;
use memplex_abi::{
    Capabilities, ErrorKind, FillOp, GatherOp, MemoryProvider, MemoryRegion, Netmem, ProviderError,
    ProviderInfo, Stat,
};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Whether the host takes a provider whose buffers it reads or writes by address but
/// which declares no memory region, so that no address it hands out can be checked
/// against the host's own memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// Refuse it at load, saying what to declare (the default).
    #[default]
    Checked,
    /// Take it, marked unverified wherever it is shown (`unverified = true` in the
    /// config, `--unverified` for `check-provider`).
    Unverified,
}

/// How a provider broke the contract, or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// A null address.
    #[error("handed out a null buffer (id {id})")]
    Null {
        /// The buffer id.
        id: u32,
    },
    /// An id that is already with the host.
    #[error("handed out buffer id {id} again while the host still holds it")]
    Duplicate {
        /// The buffer id.
        id: u32,
    },
    /// Shorter than asked for.
    #[error("handed out buffer id {id} of {len} bytes; at least {want} were asked for")]
    Short {
        /// The buffer id.
        id: u32,
        /// Its length.
        len: u32,
        /// The length asked for.
        want: u32,
    },
    /// Not aligned as `info` promised.
    #[error("handed out buffer id {id} at {addr:#x}, not aligned to the promised {align} bytes")]
    Misaligned {
        /// The buffer id.
        id: u32,
        /// Its address.
        addr: u64,
        /// The promised alignment.
        align: u32,
    },
    /// An id at or past the declared capacity.
    #[error(
        "handed out buffer id {id}, but declared a capacity of {capacity} (ids 0..{capacity})"
    )]
    IdOutOfRange {
        /// The buffer id.
        id: u32,
        /// The declared capacity.
        capacity: u32,
    },
    /// Outside every declared region.
    #[error("handed out buffer id {id} at {addr:#x}+{len}, outside its declared memory regions")]
    OutOfRegion {
        /// The buffer id.
        id: u32,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Overlapping another buffer.
    #[error("handed out buffer id {id} at {addr:#x}+{len}, overlapping buffer id {other}")]
    Overlap {
        /// The buffer id.
        id: u32,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
        /// The buffer it overlaps.
        other: u32,
    },
    /// The same id at different memory than before.
    #[error(
        "handed out buffer id {id} at {addr:#x}+{len}, but that id was {was:#x}+{was_len} before"
    )]
    Moved {
        /// The buffer id.
        id: u32,
        /// Its address now.
        addr: u64,
        /// Its length now.
        len: u32,
        /// Its address before.
        was: u64,
        /// Its length before.
        was_len: u32,
    },
    /// Claimed more descriptors than there was room for.
    #[error("claimed to write {claimed} descriptors into room for {room}")]
    Overcount {
        /// The count returned.
        claimed: usize,
        /// The room given.
        room: usize,
    },
    /// An op returned an error of a fatal kind.
    #[error("{op} failed: {error}")]
    Error {
        /// The op.
        op: &'static str,
        /// The error.
        error: ProviderError,
    },
    /// An op panicked (caught on the plugin side for `.so` plugins, by the host for
    /// built-ins).
    #[error("panicked in {op}: {message}")]
    Panicked {
        /// The op.
        op: &'static str,
        /// The panic message.
        message: String,
    },
}

impl Fault {
    fn from_error(op: &'static str, error: ProviderError) -> Self {
        if error.kind == ErrorKind::PANICKED {
            Fault::Panicked {
                op,
                message: error.message.into_string(),
            }
        } else {
            Fault::Error { op, error }
        }
    }

    /// True when the provider must not be called again at all (not even to take buffers
    /// back): it panicked.
    pub fn is_poisoning(&self) -> bool {
        matches!(self, Fault::Panicked { .. })
            || matches!(self, Fault::Error { error, .. } if error.is_fatal())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Never handed out.
    Unseen,
    /// With the provider.
    AtProvider,
    /// With the host: in a pool cache or ring, or with a consumer.
    WithHost,
    /// Handed out broken; never used, never given back.
    Rejected,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    addr: u64,
    len: u32,
    state: State,
}

const UNSEEN: Slot = Slot {
    addr: 0,
    len: 0,
    state: State::Unseen,
};

/// Slots per page of [`Slots`].
const PAGE: usize = 256;

/// Every buffer's state, kept in pages made on the first use of an id in them: the
/// host's bookkeeping grows with the buffers a provider actually hands out, not with the
/// capacity it declares (a guest declaring 16 Mi buffers under a 16 MiB memory cap costs
/// the host one page table, not 16 Mi slots).
struct Slots {
    pages: Vec<Option<Box<[Slot; PAGE]>>>,
}

impl Slots {
    fn get(&self, id: u32) -> Slot {
        let (page, at) = (id as usize / PAGE, id as usize % PAGE);
        match self.pages.get(page) {
            Some(Some(p)) => p[at],
            _ => UNSEEN,
        }
    }

    fn get_mut(&mut self, id: u32) -> &mut Slot {
        let (page, at) = (id as usize / PAGE, id as usize % PAGE);
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        &mut self.pages[page].get_or_insert_with(|| Box::new([UNSEEN; PAGE]))[at]
    }

    /// Bytes of memory the slots take.
    fn bytes(&self) -> usize {
        let pages = self.pages.iter().flatten().count();
        self.pages.capacity() * std::mem::size_of::<Option<Box<[Slot; PAGE]>>>()
            + pages * std::mem::size_of::<[Slot; PAGE]>()
    }
}

crate::counters! {
    /// Counts kept by the checker for one provider instance.
    pub struct ProviderCounters {
        /// `alloc_bulk` calls made.
        alloc_calls,
        /// `release_bulk` calls made.
        release_calls,
        /// Buffers accepted from the provider.
        handed_out,
        /// Buffers given back to the provider.
        released,
        /// Descriptors refused by the checks.
        rejected,
        /// Buffers the host could not give back because the provider is poisoned.
        stranded,
        /// Non-fatal errors returned by the provider.
        errors,
        /// `fill` calls made (one part each; a host placing frames uses `fill_bulk`).
        fill_calls,
        /// `fill_bulk` calls made (one per frame and provider, for a provider built
        /// before ABI 0.1.2).
        fill_bulk_calls,
        /// `fill_gather` calls made (one per vector and provider, ABI 0.1.2).
        fill_gather_calls,
    }
}

/// A provider instance behind the host's checks. See the module docs.
pub struct CheckedProvider {
    inner: Box<dyn MemoryProvider>,
    label: Arc<str>,
    info: ProviderInfo,
    want_len: u32,
    slots: Slots,
    /// Start address -> (end, id) of every buffer seen, for the overlap check.
    extents: BTreeMap<u64, (u128, u32)>,
    fault: Option<Fault>,
    counters: ProviderCounters,
    destroyed: bool,
    /// Read or written by address with no declared region (trusted by the config).
    unverified: bool,
    /// Where the buffers lie, typed; every buffer is checked to lie in one.
    memory: Vec<MemoryRegion>,
    /// How many frames' parts one fill takes, for memory the host may not write.
    gathering: Gathering,
    /// Why regions that could go to consumers may not after all (a file that is not
    /// sealed against shrinking), found once when the instance was made.
    share_refusal: Option<String>,
}

/// How many frames' parts a provider the host may not write (`NEEDS_FILL` without
/// `HOST_WRITABLE`) takes in one fill call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gathering {
    /// One frame's, in one [`fill_bulk`](CheckedProvider::fill_bulk): a `.so` built
    /// before ABI 0.1.2, which has no `fill_gather`.
    Frames,
    /// A worker's vector's (up to 8 frames), in one
    /// [`fill_gather`](CheckedProvider::fill_gather): a provider in the process (WASM
    /// guest memory, written by the host's own bounds-checked copies), for which a larger
    /// call saves nothing and the copies lose their locality. Measured with whole bursts
    /// instead (`slab.wasm` through `configs/wasm.toml`, 4 alternating pairs of builds):
    /// x0.929 at 128 B and x0.916 at 1500 B, every pair lost.
    Vectors,
    /// A device's burst's (up to 64 frames), in one
    /// [`fill_gather`](CheckedProvider::fill_gather): a `.so` built against ABI 0.1.2 or
    /// later, whose call is where a provider of device memory submits a transfer, so the
    /// fewer the better (the worker then takes the burst as one vector).
    Bursts,
}

/// Instances quarantined in this process so far: a worker compares it before and after
/// placing a vector (one load) instead of asking each of its providers.
static QUARANTINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many provider instances this process has quarantined so far.
#[inline]
pub fn quarantines() -> u64 {
    QUARANTINES.load(std::sync::atomic::Ordering::Acquire)
}

/// The largest capacity the host accepts from `info` (16 Mi buffers).
const MAX_CAPACITY: u32 = 1 << 24;

fn guarded<T>(op: &'static str, f: impl FnOnce() -> Result<T, ProviderError>) -> Result<T, Fault> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Fault::from_error(op, e)),
        Err(payload) => Err(Fault::Panicked {
            op,
            message: memplex_abi::ffi::panic_message(&*payload),
        }),
    }
}

impl std::fmt::Debug for CheckedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedProvider")
            .field("label", &self.label)
            .field("fault", &self.fault)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl CheckedProvider {
    /// Wraps an instance after checking its `info`; `want_len` is the `buf_size` asked for.
    /// A provider the host reads or writes by address must declare where its memory lies
    /// (each region is checked against this process's mappings) unless `trust` says
    /// [`Trust::Unverified`].
    pub fn new(
        inner: Box<dyn MemoryProvider>,
        label: Arc<str>,
        want_len: u32,
        trust: Trust,
    ) -> Result<Self, LoadError> {
        let info = guarded("info", || Ok(inner.info())).map_err(|f| LoadError::BadInfo {
            plugin: label.to_string(),
            reason: f.to_string(),
        })?;
        let bad = |reason: String| LoadError::BadInfo {
            plugin: label.to_string(),
            reason,
        };
        if info.capacity == 0 || info.capacity > MAX_CAPACITY {
            return Err(bad(format!(
                "capacity {} is outside 1..={MAX_CAPACITY}",
                info.capacity
            )));
        }
        if !info.align.is_power_of_two() {
            return Err(bad(format!(
                "alignment {} is not a power of two",
                info.align
            )));
        }
        if info.buf_size < want_len {
            return Err(bad(format!(
                "buffers of {} bytes are shorter than the {want_len} asked for",
                info.buf_size
            )));
        }
        if info.caps.contains(memplex_abi::Capabilities::REGIONS) && info.regions.is_empty() {
            return Err(bad(
                "declares the `regions` capability but lists no region".into()
            ));
        }
        // Typed regions (ABI 0.1.1) when the provider gives them, else its plain ones as
        // host memory. Regions the host will read or write by address must be memory of
        // this process, and a shareable one must be the descriptor it names: a wild one
        // is an error here, not a segfault on the frame path or a consumer seeing other
        // bytes.
        let typed = guarded("memory", || Ok(inner.memory())).map_err(|f| bad(f.to_string()))?;
        let memory: Vec<MemoryRegion> = if typed.is_empty() {
            info.regions
                .iter()
                .map(|r| MemoryRegion::host(r.base, r.len))
                .collect()
        } else {
            typed
        };
        let mut info = info;
        let caps = info.caps;
        let by_address =
            caps.contains(Capabilities::CPU_READABLE) || caps.contains(Capabilities::HOST_WRITABLE);
        let write = caps.contains(Capabilities::HOST_WRITABLE);
        super::regions::check(&memory, by_address, write).map_err(bad)?;
        let share_refusal = super::regions::share_refusal(&memory);
        if !memory.is_empty()
            && memory.iter().all(MemoryRegion::is_shareable)
            && share_refusal.is_none()
        {
            info.caps = info.caps | Capabilities::EXPORTS;
        } else {
            info.caps = Capabilities(info.caps.0 & !Capabilities::EXPORTS.0);
        }
        let unverified = by_address && memory.is_empty();
        if unverified && trust == Trust::Checked {
            return Err(LoadError::NoRegion {
                plugin: label.to_string(),
            });
        }
        Ok(CheckedProvider {
            unverified,
            memory,
            inner,
            label,
            slots: Slots { pages: Vec::new() },
            info,
            want_len,
            extents: BTreeMap::new(),
            fault: None,
            counters: ProviderCounters::default(),
            destroyed: false,
            gathering: Gathering::Vectors,
            share_refusal,
        })
    }

    /// `name (origin) qN`, for messages.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The fewest bytes any buffer it hands out holds: the `buf_size` asked for. A
    /// shorter buffer is refused (`Fault::Short`) before the host takes it.
    pub fn min_len(&self) -> u32 {
        self.want_len
    }

    /// True when the host reads or writes this instance's buffers by address without a
    /// declared region to check them against: taken only because the config trusts it.
    pub fn is_unverified(&self) -> bool {
        self.unverified
    }

    /// Where its buffers lie, typed and checked (its plain regions as host memory when
    /// it gives no typed ones).
    pub fn memory(&self) -> &[MemoryRegion] {
        &self.memory
    }

    /// Why its buffers cannot be shared with another process, or `None` when every
    /// region has a file descriptor that a consumer can map, and that cannot shrink
    /// under the consumer's mapping.
    pub fn not_exportable(&self) -> Option<String> {
        if self.memory.is_empty() {
            return Some(if self.info.caps.contains(Capabilities::NEEDS_FILL) {
                "its memory is reached only through the provider (a WASM guest's linear memory cannot be shared with another process)".into()
            } else {
                "it declares no memory region".into()
            });
        }
        self.memory.iter().enumerate().find_map(|(i, r)| {
            (!r.is_shareable()).then(|| {
                format!(
                    "region {i} ({:#x}+{}) is {} memory with no file descriptor to share (a provider shares memory by declaring typed regions with `MemoryRegion::exportable`, ABI 0.1.1)",
                    r.base,
                    r.len,
                    r.kind.name().unwrap_or("?")
                )
            })
        })
        .or_else(|| self.share_refusal.clone())
    }

    /// What the instance said about itself at start.
    pub fn info(&self) -> &ProviderInfo {
        &self.info
    }

    /// The fault that quarantined this instance, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    /// The checker's counts.
    pub fn counters(&self) -> ProviderCounters {
        self.counters
    }

    /// Bytes the host's checks keep for this instance: they grow with the buffers it has
    /// handed out (its declared capacity costs nothing up front).
    pub fn bookkeeping_bytes(&self) -> usize {
        self.slots.bytes() + self.extents.len() * (std::mem::size_of::<(u64, (u128, u32))>() + 16)
    }

    /// Buffers the host holds from this instance right now.
    pub fn held(&self) -> u64 {
        self.counters.handed_out - self.counters.released - self.counters.stranded
    }

    /// The provider's own counters (empty once it is poisoned).
    pub fn provider_stats(&self) -> Vec<Stat> {
        if self.fault.as_ref().is_some_and(Fault::is_poisoning) {
            return Vec::new();
        }
        guarded("stats", || Ok(self.inner.stats())).unwrap_or_default()
    }

    fn quarantine(&mut self, fault: Fault) {
        if self.fault.is_none() {
            tracing::error!(provider = %self.label, %fault, "provider quarantined");
            self.fault = Some(fault);
            QUARANTINES.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Asks for up to `out.len()` buffers and returns how many good ones are now at the
    /// front of `out`. Bad descriptors are dropped from `out`, counted, and quarantine the
    /// instance; the good ones of the same batch are kept. `Err` means the provider gave
    /// nothing because it is quarantined or failed this call.
    pub fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, Fault> {
        if let Some(fault) = &self.fault {
            return Err(fault.clone());
        }
        self.counters.alloc_calls += 1;
        let room = out.len();
        let inner = &mut self.inner;
        let claimed = match guarded("alloc_bulk", || inner.alloc_bulk(out)) {
            Ok(n) => n,
            Err(fault) => {
                if fault.is_poisoning() {
                    self.quarantine(fault.clone());
                } else {
                    self.counters.errors += 1;
                }
                return Err(fault);
            }
        };
        if claimed > room {
            self.quarantine(Fault::Overcount { claimed, room });
        }
        let mut good = 0;
        for i in 0..claimed.min(room) {
            let d = out[i];
            match self.admit(d) {
                Ok(()) => {
                    out[good] = d;
                    good += 1;
                }
                Err(fault) => {
                    self.counters.rejected += 1;
                    self.quarantine(fault);
                }
            }
        }
        self.counters.handed_out += good as u64;
        Ok(good)
    }

    /// Checks one descriptor and, if good, records it as with the host.
    fn admit(&mut self, d: Netmem) -> Result<(), Fault> {
        let info = &self.info;
        let id = d.id;
        if id >= info.capacity {
            return Err(Fault::IdOutOfRange {
                id,
                capacity: info.capacity,
            });
        }
        let slot = self.slots.get(id);
        // Steady state: a buffer coming back out exactly as it was first seen already
        // passed every other check then.
        if slot.state == State::AtProvider && slot.addr == d.addr && slot.len == d.len {
            self.slots.get_mut(id).state = State::WithHost;
            return Ok(());
        }
        let reject = |slots: &mut Slots, fault: Fault| {
            if slot.state != State::WithHost {
                slots.get_mut(id).state = State::Rejected;
            }
            Err(fault)
        };
        if slot.state == State::WithHost || slot.state == State::Rejected {
            return Err(Fault::Duplicate { id });
        }
        if d.addr == 0 {
            return reject(&mut self.slots, Fault::Null { id });
        }
        if d.len < self.want_len {
            return reject(
                &mut self.slots,
                Fault::Short {
                    id,
                    len: d.len,
                    want: self.want_len,
                },
            );
        }
        if !d.addr.is_multiple_of(u64::from(info.align)) {
            return reject(
                &mut self.slots,
                Fault::Misaligned {
                    id,
                    addr: d.addr,
                    align: info.align,
                },
            );
        }
        if !self.memory.is_empty()
            && !self
                .memory
                .iter()
                .any(|r| r.contains(d.addr, u64::from(d.len)))
        {
            return reject(
                &mut self.slots,
                Fault::OutOfRegion {
                    id,
                    addr: d.addr,
                    len: d.len,
                },
            );
        }
        if slot.state == State::AtProvider {
            if slot.addr != d.addr || slot.len != d.len {
                let fault = Fault::Moved {
                    id,
                    addr: d.addr,
                    len: d.len,
                    was: slot.addr,
                    was_len: slot.len,
                };
                return reject(&mut self.slots, fault);
            }
        } else {
            // First sight of this id: it must not overlap any buffer seen before.
            let before = self.extents.range(..=d.addr).next_back();
            let after = self.extents.range(d.addr..).next();
            for (&start, &(end, other)) in before.into_iter().chain(after) {
                if u128::from(start) < d.end() && end > u128::from(d.addr) {
                    return reject(
                        &mut self.slots,
                        Fault::Overlap {
                            id,
                            addr: d.addr,
                            len: d.len,
                            other,
                        },
                    );
                }
            }
            self.extents.insert(d.addr, (d.end(), id));
        }
        *self.slots.get_mut(id) = Slot {
            addr: d.addr,
            len: d.len,
            state: State::WithHost,
        };
        Ok(())
    }

    /// Gives buffers back. Only buffers this instance handed out may be passed (the pool
    /// guarantees it). If the provider is poisoned the buffers stay stranded and counted.
    pub fn release_bulk(&mut self, bufs: &[Netmem]) {
        if bufs.is_empty() {
            return;
        }
        for b in bufs {
            let slot = self.slots.get_mut(b.id);
            debug_assert_eq!(slot.state, State::WithHost);
            slot.state = State::AtProvider;
        }
        if self.fault.as_ref().is_some_and(Fault::is_poisoning) {
            self.counters.stranded += bufs.len() as u64;
            return;
        }
        self.counters.release_calls += 1;
        let inner = &mut self.inner;
        match guarded("release_bulk", || inner.release_bulk(bufs)) {
            Ok(()) => self.counters.released += bufs.len() as u64,
            Err(fault) => {
                // The provider did not take them: they are stranded, not lost from view.
                self.counters.stranded += bufs.len() as u64;
                self.quarantine(fault);
            }
        }
    }

    /// Places `bytes` at `offset` in `buf` through the provider's `fill` op.
    ///
    /// This is the per-frame path of providers that need it, so it is not wrapped in
    /// `catch_unwind` as the slow-path ops are: a `.so` provider's panics are already
    /// caught on its side of the ABI, and the WASM loader and built-ins do not panic
    /// here. The wrapper moved the result through memory and measured ~2 ns a frame.
    #[inline]
    pub fn fill(&mut self, buf: Netmem, offset: u32, bytes: &[u8]) -> Result<(), Fault> {
        if let Some(fault) = self.fault.as_ref().filter(|f| f.is_poisoning()) {
            return Err(fault.clone());
        }
        self.counters.fill_calls += 1;
        match self.inner.fill(buf, offset, bytes) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fill_failed(e)),
        }
    }

    /// Places a frame's parts in one call through the provider's `fill_bulk` op: for
    /// each op in order, the next `op.len` bytes of `bytes` (ABI 0.1.1; a provider built
    /// before it gets one `fill` per op from the ABI glue). A provider that says it did
    /// fewer ops than asked has broken the contract and is quarantined.
    #[inline]
    pub fn fill_bulk(&mut self, ops: &[FillOp], bytes: &[u8]) -> Result<(), Fault> {
        if let Some(fault) = self.fault.as_ref().filter(|f| f.is_poisoning()) {
            return Err(fault.clone());
        }
        self.counters.fill_bulk_calls += 1;
        match self.inner.fill_bulk(ops, bytes) {
            Ok(n) if n == ops.len() => Ok(()),
            Ok(n) => Err(self.fill_short("fill_bulk", n, ops.len())),
            Err(e) => Err(self.fill_failed(e)),
        }
    }

    /// Places a vector's parts for this provider in one call through its `fill_gather`
    /// op: each op's bytes at its offset in its buffer (ABI 0.1.2). A provider that says
    /// it did fewer ops than asked has broken the contract and is quarantined. Call it
    /// only when [`gathers`](Self::gathers); a provider built before 0.1.2 would get one
    /// `fill` per op from the trait's default, where `fill_bulk` takes a frame at once.
    #[inline]
    pub fn fill_gather(&mut self, ops: &[GatherOp<'_>]) -> Result<(), Fault> {
        if let Some(fault) = self.fault.as_ref().filter(|f| f.is_poisoning()) {
            return Err(fault.clone());
        }
        self.counters.fill_gather_calls += 1;
        match self.inner.fill_gather(ops) {
            Ok(n) if n == ops.len() => Ok(()),
            Ok(n) => Err(self.fill_short("fill_gather", n, ops.len())),
            Err(e) => Err(self.fill_failed(e)),
        }
    }

    /// Whether parts of several frames go to this provider in one
    /// [`fill_gather`](Self::fill_gather) (a `.so` built against ABI 0.1.2 or later, and
    /// built-in and WASM providers) rather than one [`fill_bulk`](Self::fill_bulk) per
    /// frame.
    #[inline]
    pub fn gathers(&self) -> bool {
        self.gathering != Gathering::Frames
    }

    /// How many frames' parts one fill takes (see [`Gathering`]).
    #[inline]
    pub fn gathering(&self) -> Gathering {
        self.gathering
    }

    /// Says how many frames' parts one fill takes; [`Gathering::Vectors`] unless set
    /// otherwise.
    #[must_use]
    pub fn gathering_by(mut self, gathering: Gathering) -> Self {
        self.gathering = gathering;
        self
    }

    #[cold]
    fn fill_short(&mut self, op: &'static str, done: usize, asked: usize) -> Fault {
        let f = Fault::from_error(
            op,
            ProviderError::internal(format!(
                "{op} said it did {done} of the {asked} ops it was given"
            )),
        );
        self.quarantine(f.clone());
        f
    }

    #[cold]
    fn fill_failed(&mut self, e: ProviderError) -> Fault {
        let f = Fault::from_error("fill", e);
        if f.is_poisoning() {
            self.quarantine(f.clone());
        }
        f
    }

    /// Reads `out.len()` bytes at `offset` in `buf` through the provider's `read` op, for
    /// memory the CPU may not read by address. A failure here never quarantines: reading
    /// is optional.
    pub fn read(&self, buf: Netmem, offset: u32, out: &mut [u8]) -> Result<(), Fault> {
        if let Some(fault) = self.fault.as_ref().filter(|f| f.is_poisoning()) {
            return Err(fault.clone());
        }
        guarded("read", || self.inner.read(buf, offset, out))
    }

    /// Calls the provider's `destroy` (once) unless it is poisoned. The instance itself is
    /// dropped only when the host holds none of its buffers; see `Pool::shutdown`.
    pub fn destroy(&mut self) {
        if self.destroyed || self.fault.as_ref().is_some_and(Fault::is_poisoning) {
            return;
        }
        self.destroyed = true;
        let inner = &mut self.inner;
        let _ = guarded("destroy", || {
            inner.destroy();
            Ok(())
        });
    }
}

impl Drop for CheckedProvider {
    fn drop(&mut self) {
        self.destroy();
    }
}
