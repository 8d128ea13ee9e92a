//! Sandboxed WASM providers (wasmtime).
//!
//! A WASM provider is a core module speaking the `memplex-wasm-abi` contract: it exports
//! its memory and `mpx_*` functions, and its buffers are offsets into that memory. The
//! host places frame bytes with the provider's `fill` path, which here is one bounds-
//! checked copy straight into guest memory (no intermediate buffer); no pointer into
//! guest memory is kept across a guest call, since `memory.grow` can move it.
//!
//! Isolation:
//! - one shared [`Engine`] (compiled modules are cached on disk, so a restart does not
//!   recompile); a [`Store`] per provider instance, with a [`StoreLimits`] memory cap and
//!   a one-instance limit;
//! - a CPU deadline per call by epoch interruption: a ticker thread advances the epoch
//!   every [`TICK`], and every call gets `deadline / TICK` ticks;
//! - every descriptor is checked against the memory's size here (the host's checker then
//!   checks ids, duplicates, overlap and alignment as for native providers);
//! - a trap, a deadline, a failed grow or a descriptor outside memory comes back as an
//!   [`ErrorKind::FAULTED`] error, which quarantines the instance.
//!
//! Two `unsafe` blocks. On the per-frame path, `fill` copies into guest memory through a
//! window (base and length) taken from wasmtime's safe slice at the first `fill` after
//! a guest call. Only a guest call can grow or move the memory, so the window is exact
//! until the next one; looking the memory up through the store on every frame measured
//! 3-4 ns of the ~8 ns a sandboxed frame cost over a native one. And the check of a
//! guest's descriptors calls an SSE2 function (`suspect_fours`). Everything else uses
//! wasmtime's safe slices.

use super::LoadError;
use memplex_abi::{
    Capabilities, ErrorKind, MemoryProvider, Netmem, ProviderError, ProviderInfo, Stat,
};
use memplex_wasm_abi::{exports, WasmInfo, WasmNetmem, ABI_VERSION};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Engine, Instance, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc,
};
use zerocopy::{FromBytes, IntoBytes};

// Descriptors cross the boundary as the host's own bytes; wasm is little-endian.
const _: () = assert!(
    cfg!(target_endian = "little") && WasmNetmem::SIZE == std::mem::size_of::<Netmem>(),
    "the WASM loader needs a little-endian host"
);

/// How often the epoch advances; the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(5);
/// Descriptors passed per call (the pool's refill size).
const BATCH: usize = 64;

/// `call!(provider, f_field, args)`: one guest call through [`WasmProvider::call`].
macro_rules! call {
    ($p:expr, $f:ident, $args:expr) => {
        WasmProvider::call(
            &mut $p.store,
            &mut $p.window,
            &mut $p.calls,
            &$p.sandbox,
            &$p.$f,
            $args,
        )
    };
}

/// Per-provider sandbox limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmLimits {
    /// The most linear memory the guest may have, in bytes.
    pub memory: usize,
    /// The longest one guest call may run.
    pub deadline: Duration,
    /// The most instances of the module alive at once (one per receive queue that uses
    /// it, plus any a tool such as `check-provider` makes).
    pub instances: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            memory: 256 << 20,
            deadline: Duration::from_millis(100),
            instances: 64,
        }
    }
}

/// One live instance of a module, counted against [`WasmLimits::instances`]; dropping
/// it frees the slot.
struct InstanceSlot(Arc<AtomicUsize>);

impl InstanceSlot {
    fn take(live: &Arc<AtomicUsize>, limit: usize, name: &str) -> Result<Self, ProviderError> {
        let was = live.fetch_add(1, Ordering::AcqRel);
        let slot = InstanceSlot(Arc::clone(live));
        match was < limit {
            true => Ok(slot),
            false => Err(ProviderError::resource(format!(
                "WASM provider `{name}` is limited to {limit} instance(s) (max_instances) and {was} are running; raise max_instances or use fewer queues"
            ))),
        }
    }
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shared engine, with epoch interruption and (where a cache directory can be made)
/// the compiled-module cache.
fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.epoch_interruption(true);
            let dir = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("memplex").join("wasmtime"));
            if let Some(dir) = dir {
                let mut cache = wasmtime::CacheConfig::new();
                cache.with_directory(dir);
                match wasmtime::Cache::new(cache) {
                    Ok(c) => {
                        config.cache(Some(c));
                    }
                    Err(e) => {
                        tracing::warn!("no module cache ({e}); modules are compiled at every start")
                    }
                }
            }
            let engine = Engine::new(&config).map_err(|e| format!("starting wasmtime: {e}"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("memplex-epoch".into())
                .spawn(move || loop {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                })
                .map_err(|e| format!("starting the epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A compiled provider module, instantiated once per queue.
#[derive(Clone)]
pub(super) struct WasmModule {
    module: Module,
    path: PathBuf,
    /// Instances alive now, shared by the module's clones.
    live: Arc<AtomicUsize>,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WasmModule({})", self.path.display())
    }
}

/// Compiles (or takes from the cache) the module at `path` (`.wasm` or `.wat`), checking
/// that it imports nothing and exports what the contract names.
pub(super) fn load(path: &Path) -> Result<WasmModule, LoadError> {
    let bad = |detail: String| LoadError::Layout {
        path: path.to_path_buf(),
        detail,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(LoadError::Missing {
                path: path.into(),
                reason: "not a regular file".into(),
            })
        }
        Err(e) => {
            return Err(LoadError::Missing {
                path: path.into(),
                reason: e.to_string(),
            })
        }
    }
    let engine = engine().map_err(|e| LoadError::Open {
        path: path.into(),
        reason: e,
    })?;
    let module = Module::from_file(engine, path).map_err(|e| LoadError::Open {
        path: path.into(),
        reason: format!("not a valid WASM module: {e:#}"),
    })?;
    if let Some(import) = module.imports().next() {
        return Err(bad(format!(
            "it imports `{}::{}`, but a memplex provider may import nothing (build for wasm32-unknown-unknown with memplex-guest)",
            import.module(),
            import.name()
        )));
    }
    let names: Vec<&str> = module.exports().map(|e| e.name()).collect();
    let required = [
        exports::MEMORY,
        exports::ABI_VERSION,
        exports::SCRATCH,
        exports::INIT,
        exports::INFO,
        exports::ALLOC_BULK,
        exports::RELEASE_BULK,
    ];
    if let Some(missing) = required.iter().find(|r| !names.contains(r)) {
        return Err(bad(format!(
            "it does not export `{missing}`; a memplex WASM provider exports {}",
            required.join(", ")
        )));
    }
    Ok(WasmModule {
        module,
        path: path.to_path_buf(),
        live: Arc::default(),
    })
}

impl WasmModule {
    /// The provider's name: the file's stem.
    pub(super) fn name(&self) -> String {
        self.path
            .file_stem()
            .map_or_else(|| "wasm".into(), |s| s.to_string_lossy().into_owned())
    }

    /// Instantiates for one queue: checks the ABI version, passes the config, reads info.
    pub(super) fn instantiate(
        &self,
        params: &memplex_abi::InitParams,
        limits: WasmLimits,
    ) -> Result<Box<dyn MemoryProvider>, ProviderError> {
        let slot = InstanceSlot::take(&self.live, limits.instances, &self.name())?;
        let engine = self.module.engine();
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(engine, store_limits);
        store.limiter(|l| l);
        let ticks = (limits.deadline.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1;
        store.set_epoch_deadline(ticks);
        let instance = Linker::new(engine)
            .instantiate(&mut store, &self.module)
            .map_err(|e| {
                let text = format!("{e:#}");
                let what = if text.contains("memory") {
                    format!(
                        "needs more memory at start than its limit of {} MiB (max_memory_mib)",
                        limits.memory >> 20
                    )
                } else {
                    format!(
                        "could not be instantiated: {}",
                        text.lines().next().unwrap_or("")
                    )
                };
                fault(format!("WASM provider `{}` {what}", self.name()))
            })?;
        let sandbox = Sandbox {
            name: self.name(),
            ticks,
            limits,
        };
        let mut p = WasmProvider::bind(store, &instance, sandbox, slot)?;
        let version = p.call_version()?;
        if version != ABI_VERSION {
            return Err(ProviderError::invalid_config(format!(
                "the module speaks memplex WASM ABI {version}; this host speaks {ABI_VERSION}"
            )));
        }
        let config: String = params
            .config
            .iter()
            .map(|kv| format!("{}={}\n", kv.0, kv.1))
            .collect();
        p.scratch_len = (BATCH * WasmNetmem::SIZE)
            .max(config.len())
            .max(WasmInfo::SIZE) as u32;
        p.scratch = p.call_scratch(p.scratch_len as usize)?;
        p.write(p.scratch, config.as_bytes())?;
        let scratch = p.scratch as i32;
        let args = (
            params.queue_id as i32,
            params.buf_size as i32,
            params.pool_size as i32,
            scratch,
            config.len() as i32,
        );
        let code = call!(p, f_init, args)?;
        if code < 0 {
            let err = code_error(code, "mpx_init");
            // The guest's own account of what was wrong, where it gives one.
            return Err(match p.last_error() {
                Some(message) => ProviderError::new(err.kind, message),
                None => err,
            });
        }
        let code = call!(p, f_info, scratch)?;
        if code < 0 {
            return Err(code_error(code, "mpx_info"));
        }
        let raw: [u8; WasmInfo::SIZE] = p
            .read_vec(p.scratch, WasmInfo::SIZE)?
            .try_into()
            .expect("16 bytes");
        p.info = WasmInfo::from_bytes(&raw);
        Ok(Box::new(p))
    }
}

fn fault(message: String) -> ProviderError {
    ProviderError::new(ErrorKind::FAULTED, message)
}

fn code_error(code: i32, op: &str) -> ProviderError {
    let kind = match code {
        memplex_wasm_abi::ERR_INVALID_CONFIG => ErrorKind::INVALID_CONFIG,
        memplex_wasm_abi::ERR_RESOURCE => ErrorKind::RESOURCE,
        memplex_wasm_abi::ERR_BAD_BUFFER => ErrorKind::BAD_BUFFER,
        _ => ErrorKind::INTERNAL,
    };
    ProviderError::new(kind, format!("{op} returned {code}"))
}

/// Who a guest is and what it may use, for calls and their errors.
struct Sandbox {
    name: String,
    /// Epoch ticks per call: the deadline.
    ticks: u64,
    limits: WasmLimits,
}

impl Sandbox {
    /// A failed guest call as one line: what happened, naming the limit it hit.
    fn failure(&self, e: &wasmtime::Error) -> ProviderError {
        let what = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => format!(
                "ran past its call deadline of {} ms (call_deadline_ms)",
                self.limits.deadline.as_millis()
            ),
            Some(trap) => format!("trapped: {trap}"),
            None if format!("{e:#}").contains("memory") => format!(
                "grew its memory past the limit of {} MiB (max_memory_mib)",
                self.limits.memory >> 20
            ),
            // Only the first line: the rest is the engine's backtrace.
            None => format!("failed: {}", format!("{e:#}").lines().next().unwrap_or("")),
        };
        fault(format!("WASM provider `{}` {what}", self.name))
    }
}

/// One guest instance.
struct WasmProvider {
    store: Store<StoreLimits>,
    memory: Memory,
    sandbox: Sandbox,
    scratch: u32,
    /// The descriptor area's length: no buffer may overlap `scratch..scratch + scratch_len`,
    /// where the host writes descriptors.
    scratch_len: u32,
    info: WasmInfo,
    calls: u64,
    f_version: TypedFunc<(), i32>,
    f_scratch: TypedFunc<i32, i32>,
    f_init: TypedFunc<(i32, i32, i32, i32, i32), i32>,
    f_info: TypedFunc<i32, i32>,
    f_alloc: TypedFunc<(i32, i32), i32>,
    f_release: TypedFunc<(i32, i32), i32>,
    /// `mpx_error`, when the guest exports it.
    f_error: Option<TypedFunc<(i32, i32), i32>>,
    /// Counts this instance against the module's limit until dropped.
    _slot: InstanceSlot,
    /// Guest memory as of the last guest call, for `fill`: taken at the first `fill`
    /// after each call (`None` until then), so a bulk call that no `fill` follows does
    /// not pay the store's lookup of it (a chain of dependent loads, about a tenth of
    /// `WasmProvider::call`'s samples in a profile of the WASM bulk bench).
    window: Option<Window>,
}

/// Where guest memory is and how long it is, as of the last guest call. Kept as an
/// address (exposed provenance), so the provider stays `Send` without an unsafe impl.
#[derive(Debug, Clone, Copy)]
struct Window {
    addr: usize,
    len: usize,
}

impl Window {
    fn of(memory: &Memory, store: &mut Store<StoreLimits>) -> Window {
        let mem = memory.data_mut(store);
        Window {
            addr: mem.as_mut_ptr().expose_provenance(),
            len: mem.len(),
        }
    }
}

impl WasmProvider {
    fn bind(
        mut store: Store<StoreLimits>,
        instance: &Instance,
        sandbox: Sandbox,
        slot: InstanceSlot,
    ) -> Result<Self, ProviderError> {
        let memory = instance
            .get_memory(&mut store, exports::MEMORY)
            .ok_or_else(|| fault("exports no memory named `memory`".into()))?;
        macro_rules! func {
            ($name:expr) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(|e| fault(format!("export `{}`: {e}", $name)))?
            };
        }
        Ok(WasmProvider {
            f_version: func!(exports::ABI_VERSION),
            f_scratch: func!(exports::SCRATCH),
            f_init: func!(exports::INIT),
            f_info: func!(exports::INFO),
            f_alloc: func!(exports::ALLOC_BULK),
            f_release: func!(exports::RELEASE_BULK),
            f_error: instance.get_typed_func(&mut store, exports::ERROR).ok(),
            memory,
            store,
            sandbox,
            scratch: 0,
            scratch_len: 0,
            info: WasmInfo::default(),
            calls: 0,
            _slot: slot,
            window: None,
        })
    }

    /// Calls `f` under a fresh deadline; a trap (deadline, unreachable, failed grow,
    /// out-of-bounds access) becomes a FAULTED error.
    ///
    /// Takes the fields it needs rather than `&mut self` (see [`call!`]) so that the
    /// function and the store are borrowed apart: cloning a `TypedFunc` instead costs a
    /// type-registry reference-count round trip, measured at a quarter of a bulk call.
    #[allow(clippy::too_many_arguments)]
    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        store: &mut Store<StoreLimits>,
        window: &mut Option<Window>,
        calls: &mut u64,
        sandbox: &Sandbox,
        f: &TypedFunc<P, R>,
        args: P,
    ) -> Result<R, ProviderError> {
        *calls += 1;
        store.set_epoch_deadline(sandbox.ticks);
        let result = f.call(&mut *store, args);
        // The guest may have grown (moved) its memory: the window is taken afresh at
        // the next `fill`.
        *window = None;
        result.map_err(|e| sandbox.failure(&e))
    }

    /// The guest's message about its last failed call, if it exports `mpx_error`.
    fn last_error(&mut self) -> Option<String> {
        let f = self.f_error.clone()?;
        let room = (BATCH * WasmNetmem::SIZE) as i32;
        let args = (self.scratch as i32, room);
        let n = WasmProvider::call(
            &mut self.store,
            &mut self.window,
            &mut self.calls,
            &self.sandbox,
            &f,
            args,
        )
        .ok()?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n > 0 && n <= room as usize)?;
        let bytes = self.read_vec(self.scratch, n).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn call_version(&mut self) -> Result<i32, ProviderError> {
        call!(self, f_version, ())
    }

    fn call_scratch(&mut self, len: usize) -> Result<u32, ProviderError> {
        let off = call!(self, f_scratch, len as i32)?;
        let off = u32::try_from(off).map_err(|_| fault(format!("mpx_scratch returned {off}")))?;
        // The scratch area must lie inside memory now; it is checked again on every use.
        self.read_vec(off, len)?;
        Ok(off)
    }

    /// `len` bytes of guest memory at `off`, bounds-checked.
    fn read_vec(&self, off: u32, len: usize) -> Result<Vec<u8>, ProviderError> {
        self.memory
            .data(&self.store)
            .get(off as usize..)
            .and_then(|s| s.get(..len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                fault(format!(
                    "{len} bytes at guest offset {off:#x} lie outside its memory"
                ))
            })
    }

    /// Writes `bytes` into guest memory at `off`, bounds-checked.
    /// The per-frame path (`fill`): one bounds check, one copy.
    #[inline]
    #[allow(unsafe_code)]
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), ProviderError> {
        let (off, len) = (off as usize, bytes.len());
        let window = match self.window {
            Some(w) => w,
            None => *self
                .window
                .insert(Window::of(&self.memory, &mut self.store)),
        };
        if off.checked_add(len).is_none_or(|end| end > window.len) {
            return Err(fault(format!(
                "{len} bytes at guest offset {off:#x} lie outside its memory of {} bytes",
                window.len
            )));
        }
        let base = std::ptr::with_exposed_provenance_mut::<u8>(window.addr);
        // SAFETY: `window` is the guest memory's base and length as wasmtime gave them
        // since the last guest call (`call` clears it; it is taken again above). Only a
        // guest call can grow or move linear memory; none has run since, the host never
        // grows it, and `&mut self` owns the store, so nothing else reads or writes it
        // now. `off + len` is within the length (checked above), and `bytes` is host
        // memory, not guest memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(off), len) };
        Ok(())
    }

    /// Copies the descriptors `raw` (guest memory, `WasmNetmem`s) into `out` (as long)
    /// and says whether any may lie outside memory of `size` bytes or overlap the
    /// descriptor area `area..area_end`: `false` means every one is clear. A wasm32
    /// offset has a zero high word, so the pass works on 32-bit words (a low word plus a
    /// length that wraps is suspect), four descriptors at a time as four lanes with no
    /// branch ([`suspect_fours`]). The copy rides on the check's loads, rather than
    /// reading the kilobyte again through `memcpy`.
    fn copy_checked(raw: &[u8], out: &mut [Netmem], size: u64, area: u64, area_end: u64) -> bool {
        // The guest's descriptor area is a `Vec<WasmNetmem>` (8-byte aligned); were it
        // not aligned, every descriptor would be looked at with the exact rule.
        let (Ok(descs), Ok(dst)) = (
            <[[u32; 4]]>::ref_from_bytes(raw),
            <[[u32; 4]]>::mut_from_bytes(out.as_mut_bytes()),
        ) else {
            out.as_mut_bytes().copy_from_slice(raw);
            return true;
        };
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let bounds = Bounds {
            size: clamp(size),
            area: clamp(area),
            area_end: clamp(area_end),
        };
        let (fours, rest) = descs.as_chunks::<4>();
        let (into, rest_to) = dst.as_chunks_mut::<4>();
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code, reason = "SSE2 intrinsics")]
        // SAFETY: every x86-64 CPU has SSE2 (it is part of the architecture's baseline).
        let lanes = unsafe { suspect_fours(fours, into, bounds) };
        #[cfg(not(target_arch = "x86_64"))]
        let lanes = suspect_fours(fours, into, bounds);
        rest_to.copy_from_slice(rest);
        let rest = rest.iter().fold(0, |acc, &[lo, hi, len, _id]| {
            acc | bounds.suspect(u32::from_le(lo), u32::from_le(hi), u32::from_le(len))
        });
        rest != 0 || lanes
    }
}

/// What [`WasmProvider::copy_checked`] holds descriptors against, as 32-bit words.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    size: u32,
    area: u32,
    area_end: u32,
}

impl Bounds {
    /// Nonzero when the descriptor at `hi:lo`, `len` long, may lie past `size` or
    /// overlap `area..area_end`.
    #[inline(always)]
    fn suspect(self, lo: u32, hi: u32, len: u32) -> u32 {
        let end = lo.wrapping_add(len);
        hi | u32::from(end < lo)
            | u32::from(end > self.size)
            | (u32::from(lo < self.area_end) & u32::from(end > self.area))
    }
}

/// [`Bounds::suspect`] of `descs`, copied to `dst` (as long), four at a time, in SSE2
/// (every x86-64 has it): each four are turned into a vector of low words, one of high
/// words and one of lengths (a 4x4 transpose in six unpacks), then tested lane by lane,
/// unsigned compares made from signed ones by flipping the sign bits: about 37
/// instructions for four, their copy included. True when any may be suspect.
///
/// Written with intrinsics because the compiler, given the same test on arrays, loaded
/// each lane's word on its own and shuffled them together: about 45 instructions a
/// group, and the check a third of a WASM bulk round on the AMD EPYC of family 23
/// model 49 (a sampled profile of `wasm_vs_native/wasm`: `alloc_bulk`, nearly all of it
/// this loop, 31% of the bench's time).
///
/// # Safety
/// The CPU must have SSE2, which every x86-64 CPU has.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn suspect_fours(descs: &[[[u32; 4]; 4]], dst: &mut [[[u32; 4]; 4]], b: Bounds) -> bool {
    use std::arch::x86_64::*;
    let v = |d: [u32; 4]| _mm_set_epi32(d[3] as i32, d[2] as i32, d[1] as i32, d[0] as i32);
    // Unsigned `x > y` is signed `x ^ MIN > y ^ MIN`.
    let flip = |x: __m128i| _mm_xor_si128(x, _mm_set1_epi32(i32::MIN));
    let word = |w: u32| _mm_set1_epi32((w ^ 0x8000_0000) as i32);
    let (size, area, area_end) = (word(b.size), word(b.area), word(b.area_end));
    let mut lanes = _mm_setzero_si128();
    for (four, to) in descs.iter().zip(dst) {
        *to = *four;
        let (d0, d1, d2, d3) = (v(four[0]), v(four[1]), v(four[2]), v(four[3]));
        // [lo0 lo1 hi0 hi1], [lo2 lo3 hi2 hi3], [len0 len1 id0 id1], [len2 len3 id2 id3].
        let (t0, t1) = (_mm_unpacklo_epi32(d0, d1), _mm_unpacklo_epi32(d2, d3));
        let (t2, t3) = (_mm_unpackhi_epi32(d0, d1), _mm_unpackhi_epi32(d2, d3));
        let (lo, hi) = (_mm_unpacklo_epi64(t0, t1), _mm_unpackhi_epi64(t0, t1));
        let end = _mm_add_epi32(lo, _mm_unpacklo_epi64(t2, t3));
        let (lo, end) = (flip(lo), flip(end));
        let wraps = _mm_cmpgt_epi32(lo, end);
        let past = _mm_cmpgt_epi32(end, size);
        let overlaps = _mm_and_si128(_mm_cmpgt_epi32(area_end, lo), _mm_cmpgt_epi32(end, area));
        let any = _mm_or_si128(_mm_or_si128(hi, wraps), _mm_or_si128(past, overlaps));
        lanes = _mm_or_si128(lanes, any);
    }
    _mm_movemask_epi8(_mm_cmpeq_epi32(lanes, _mm_setzero_si128())) != 0xffff
}

/// The portable [`suspect_fours`]: four lanes as an array, which the compiler may turn
/// into vector code of its own.
#[cfg(not(target_arch = "x86_64"))]
fn suspect_fours(descs: &[[[u32; 4]; 4]], dst: &mut [[[u32; 4]; 4]], b: Bounds) -> bool {
    let mut lanes = [0u32; 4];
    for (four, to) in descs.iter().zip(dst) {
        *to = *four;
        for (lane, &[lo, hi, len, _id]) in lanes.iter_mut().zip(four) {
            *lane |= b.suspect(u32::from_le(lo), u32::from_le(hi), u32::from_le(len));
        }
    }
    lanes != [0; 4]
}

impl MemoryProvider for WasmProvider {
    fn info(&self) -> ProviderInfo {
        // The host may not write guest memory through an address: bytes go in by `fill`.
        ProviderInfo::new(&self.sandbox.name, self.info.buf_size, self.info.capacity)
            .align(self.info.align.max(1))
            .caps(Capabilities::NEEDS_FILL)
            .backing("WASM linear memory (sandboxed)")
    }

    fn alloc_bulk(&mut self, out: &mut [Netmem]) -> Result<usize, ProviderError> {
        let want = out.len().min(BATCH);
        let n = call!(self, f_alloc, (self.scratch as i32, want as i32))?;
        if n < 0 {
            return Err(code_error(n, "mpx_alloc_bulk"));
        }
        // The count goes on as the guest claimed it: the host's checks refuse an
        // overcount (clamping it here hid a guest's bug). Only `want` are read.
        let claimed = n as usize;
        let n = claimed.min(want);
        // Read straight from guest memory: no allocation.
        let mem = self.memory.data(&self.store);
        let size = mem.len() as u64;
        let raw = mem
            .get(self.scratch as usize..)
            .and_then(|s| s.get(..n * WasmNetmem::SIZE))
            .ok_or_else(|| {
                fault(format!(
                    "the descriptor area at {:#x} lies outside guest memory",
                    self.scratch
                ))
            })?;
        // A buffer must lie in guest memory, clear of the host's descriptor area (where
        // the host writes released descriptors: frame bytes there would be overwritten).
        let (area, area_end) = (
            u64::from(self.scratch),
            u64::from(self.scratch) + u64::from(self.scratch_len),
        );
        let bad = |d: &Netmem| {
            let end = d.addr.saturating_add(u64::from(d.len));
            end > size || (d.addr < area_end && end > area)
        };
        let out = &mut out[..n];
        let suspect = Self::copy_checked(raw, out, size, area, area_end);
        // A suspect is looked at again with the exact rule (the fast pass also refuses a
        // buffer ending at exactly 4 GiB, which the exact rule allows).
        let culprit = match suspect {
            true => out.iter().find(|d| bad(d)),
            false => None,
        };
        if let Some(d) = culprit {
            let why = if d.addr.saturating_add(u64::from(d.len)) > size {
                format!("outside its memory of {size} bytes")
            } else {
                format!(
                    "overlapping the host's descriptor area at {area:#x}+{}",
                    self.scratch_len
                )
            };
            return Err(fault(format!(
                "WASM provider `{}` handed out buffer id {} at offset {:#x}+{}, {why}",
                self.sandbox.name, d.id, d.addr, d.len
            )));
        }
        Ok(claimed)
    }

    fn release_bulk(&mut self, bufs: &[Netmem]) -> Result<(), ProviderError> {
        for batch in bufs.chunks(BATCH) {
            // Straight into the descriptor area: no allocation.
            let scratch = self.scratch as usize;
            let area = self
                .memory
                .data_mut(&mut self.store)
                .get_mut(scratch..)
                .and_then(|s| s.get_mut(..batch.len() * WasmNetmem::SIZE))
                .ok_or_else(|| {
                    fault(format!(
                        "the descriptor area at {scratch:#x} lies outside guest memory"
                    ))
                })?;
            area.copy_from_slice(batch.as_bytes());
            let code = call!(self, f_release, (self.scratch as i32, batch.len() as i32))?;
            if code < 0 {
                return Err(code_error(code, "mpx_release_bulk"));
            }
        }
        Ok(())
    }

    fn fill(&mut self, buf: Netmem, offset: u32, bytes: &[u8]) -> Result<(), ProviderError> {
        let at = buf
            .addr
            .checked_add(u64::from(offset))
            .and_then(|a| u32::try_from(a).ok());
        match at {
            Some(at) => self.write(at, bytes),
            None => Err(fault(format!(
                "buffer at {:#x}+{offset} is outside 32-bit guest memory",
                buf.addr
            ))),
        }
    }

    fn read(&self, buf: Netmem, offset: u32, out: &mut [u8]) -> Result<(), ProviderError> {
        let src = buf
            .addr
            .checked_add(u64::from(offset))
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| {
                self.memory
                    .data(&self.store)
                    .get(at..)
                    .and_then(|m| m.get(..out.len()))
            })
            .ok_or_else(|| {
                ProviderError::bad_buffer(format!(
                    "{} bytes at guest offset {:#x}+{offset} lie outside its memory",
                    out.len(),
                    buf.addr
                ))
            })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        vec![
            Stat::new("guest_calls", self.calls),
            Stat::new("memory_bytes", self.memory.data_size(&self.store) as u64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact rule of `alloc_bulk`: a buffer past guest memory of `size` bytes, or
    /// overlapping the descriptor area `area..area_end`.
    fn bad(d: &Netmem, size: u64, area: u64, area_end: u64) -> bool {
        let end = d.addr.saturating_add(u64::from(d.len));
        end > size || (d.addr < area_end && end > area)
    }

    /// Descriptors around the edges the check draws: the end of memory, either side of
    /// the descriptor area, a high word, a length that wraps.
    fn desc() -> impl Strategy<Value = Netmem> {
        let addr = prop_oneof![
            0u64..0x2_0000,
            0xfff0_0000u64..0x1_0000_0010,
            any::<u64>(),
            Just(u64::MAX - 8),
        ];
        let len = prop_oneof![0u32..0x4000, any::<u32>()];
        (addr, len, any::<u32>()).prop_map(|(addr, len, id)| Netmem { addr, len, id })
    }

    fn raw(descs: &[Netmem]) -> Vec<u8> {
        descs.iter().flat_map(|d| d.as_bytes().to_vec()).collect()
    }

    proptest! {
        /// One descriptor of any kind among good ones, at any place (in a group of
        /// four or in the rest): every descriptor is copied as it was; the answer is
        /// the one-at-a-time test's; and a bad descriptor is always suspect.
        #[test]
        fn copy_checked_never_misses_a_bad_descriptor(
            good in prop::collection::vec((0u64..0xe000, 1u32..0x800, any::<u32>()), 0..70),
            odd in desc(),
            at in any::<prop::sample::Index>(),
            size in prop_oneof![Just(0x1_0000u64), Just(0x1_0000_0000), 0x1_0000u64..0x2_0000],
            area in 0xe800u64..0x1_0000,
            area_len in 0u64..0x800,
        ) {
            let mut descs: Vec<Netmem> = good
                .iter()
                .map(|&(addr, len, id)| Netmem { addr, len, id })
                .collect();
            descs.insert(at.index(descs.len() + 1), odd);
            // Aligned as the guest's `Vec<WasmNetmem>` is.
            let mut bytes = vec![0u64; descs.len() * 2];
            bytes.as_mut_bytes().copy_from_slice(&raw(&descs));
            let mut out = vec![Netmem::EMPTY; descs.len()];
            let area_end = area + area_len;
            let suspect =
                WasmProvider::copy_checked(bytes.as_bytes(), &mut out, size, area, area_end);
            prop_assert_eq!(&out, &descs);
            let bounds = Bounds {
                size: size.min(u64::from(u32::MAX)) as u32,
                area: area as u32,
                area_end: area_end as u32,
            };
            let one_at_a_time = descs.iter().any(|d| {
                bounds.suspect(d.addr as u32, (d.addr >> 32) as u32, d.len) != 0
            });
            prop_assert_eq!(suspect, one_at_a_time);
            if bad(&odd, size, area, area_end) {
                prop_assert!(suspect);
            }
        }

        /// Buffers that lie in memory, clear of the area, are never suspect (so the
        /// exact rule is not run for the usual bulk), wherever they fall among the groups.
        #[test]
        fn copy_checked_passes_good_descriptors(
            places in prop::collection::vec((0u64..0xe000, 1u32..0x800, any::<u32>()), 0..70),
            skip in 0usize..16,
        ) {
            // The area sits at 0xf000..0x10000, above every buffer; memory is 64 KiB.
            let descs: Vec<Netmem> = places
                .iter()
                .map(|&(addr, len, id)| Netmem { addr, len, id })
                .collect();
            let mut bytes = vec![0u64; descs.len() * 2];
            bytes.as_mut_bytes().copy_from_slice(&raw(&descs));
            // From an offset into the buffer too: every size of the groups and the rest.
            let skip = skip.min(descs.len());
            let mut out = vec![Netmem::EMPTY; descs.len() - skip];
            let suspect = WasmProvider::copy_checked(
                &bytes.as_bytes()[skip * 16..],
                &mut out,
                0x1_0000,
                0xf000,
                0x1_0000,
            );
            prop_assert_eq!(&out[..], &descs[skip..]);
            prop_assert!(!suspect);
        }
    }
}
