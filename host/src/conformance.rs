//! The conformance suite behind `memplex check-provider`: what a third-party provider
//! author runs before anyone else loads their provider.
//!
//! Each check makes a fresh instance, so one failure does not hide the next. A provider
//! that panics, errors or hands out a bad descriptor fails the check it happened in, with
//! the host's account of what it did; the suite itself never panics or aborts.

use crate::pool::{Pool, REFILL};
use crate::provider::{
    Capabilities, CheckedProvider, InitParams, LoadError, MemoryProvider, Netmem, ProviderInfo,
    ProviderPlugin, Trust,
};
use memplex_abi::ErrorKind;
use std::time::{Duration, Instant};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider did what the contract asks.
    Pass,
    /// Allowed, but a sign of trouble.
    Warn,
    /// The provider broke the contract.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// Short name of the check.
    pub name: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// What was seen.
    pub detail: String,
}

/// What the suite runs with.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Buffer size asked for.
    pub buf_size: u32,
    /// Pool size passed in the init params.
    pub pool_size: u32,
    /// The provider's own settings.
    pub settings: Vec<(String, String)>,
    /// How long to time alloc+release for the cost figure.
    pub cost_time: Duration,
    /// Fail when a buffer's alloc+release costs more than this many times the built-in
    /// slab's, timed in the same run (default 20).
    pub max_cost_ratio: f64,
    /// Fail when a buffer's alloc+release costs more than this, in ns (default: no
    /// absolute budget).
    pub max_ns_per_buffer: Option<f64>,
    /// Accept a provider the host reads or writes by address that declares no memory
    /// region, with a warning (`--unverified`); without it that is a failure.
    pub unverified: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            buf_size: 2048,
            pool_size: 256,
            settings: Vec::new(),
            cost_time: Duration::from_millis(200),
            max_cost_ratio: 20.0,
            max_ns_per_buffer: None,
            unverified: false,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// `name (origin)`.
    pub plugin: String,
    /// Every check, in order.
    pub results: Vec<CheckResult>,
    /// Median cost of one buffer's alloc + release, bulk of 64, in nanoseconds.
    pub ns_per_buffer: Option<f64>,
    /// The built-in slab's, timed alongside it in the same run.
    pub baseline_ns: Option<f64>,
    /// What the provider said of itself at init: `buf_size ..., caps ...`.
    pub info: String,
    /// Where its memory lies, as checked: its regions, or that it declares none.
    pub memory: String,
}

impl CheckReport {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.outcome != Outcome::Fail)
    }

    /// How many checks came out `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }

    /// A one-screen summary to paste into a provider's README: the verdict, the cost
    /// against the built-in slab, and what it was checked with.
    pub fn certificate(&self, opts: &CheckOptions, limits: &str) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let cost = match (self.ns_per_buffer, self.baseline_ns) {
            (Some(ns), Some(base)) => format!(
                "{ns:.1} ns per buffer (alloc_bulk+release_bulk of {REFILL}), {:.2}x the built-in slab's {base:.1} ns in the same run; budget {}x{}",
                ns / base,
                opts.max_cost_ratio,
                opts.max_ns_per_buffer.map_or(String::new(), |m| format!(" and {m} ns")),
            ),
            (Some(ns), None) => format!("{ns:.1} ns per buffer (no baseline)"),
            _ => "not measured".into(),
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        format!(
            "memplex check-provider certificate\n\
             provider  {}\n\
             result    {verdict}: {} checks passed, {} warned, {} failed\n\
             cost      {cost}\n\
             checked   buf_size {}, pool_size {}{}; {limits}\n\
             reported  {}\n\
             memory    {}\n\
             host      memplex {}, provider ABI {}, {cpu}",
            self.plugin,
            self.count(Outcome::Pass),
            self.count(Outcome::Warn),
            self.count(Outcome::Fail),
            opts.buf_size,
            opts.pool_size,
            if opts.settings.is_empty() {
                String::new()
            } else {
                let kv: Vec<String> = opts
                    .settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(", settings {}", kv.join(" "))
            },
            self.info,
            self.memory,
            env!("CARGO_PKG_VERSION"),
            memplex_abi::ABI_VERSION,
        )
    }
}

struct Suite<'a> {
    plugin: &'a ProviderPlugin,
    opts: &'a CheckOptions,
    results: Vec<CheckResult>,
}

impl Suite<'_> {
    fn params(&self) -> InitParams {
        self.opts.settings.iter().fold(
            InitParams::new(0, self.opts.buf_size, self.opts.pool_size),
            |p, (k, v)| p.set(k, v),
        )
    }

    fn record(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.results.push(CheckResult {
            name,
            outcome,
            detail: detail.into(),
        });
    }

    /// A fresh instance behind the host's checks. Taken even without a declared region:
    /// the `regions` check reports that, so the other checks still run.
    fn checked(&mut self, name: &'static str) -> Option<CheckedProvider> {
        match self
            .plugin
            .instantiate_trusting(&self.params(), Trust::Unverified)
        {
            Ok(p) => Some(p),
            Err(e) => {
                self.record(
                    name,
                    Outcome::Fail,
                    format!("could not make an instance: {e}"),
                );
                None
            }
        }
    }

    fn fault_or(&mut self, name: &'static str, p: &CheckedProvider, pass: String) {
        match p.fault() {
            Some(f) => self.record(name, Outcome::Fail, f.to_string()),
            None => self.record(name, Outcome::Pass, pass),
        }
    }
}

/// Runs every check on `plugin`.
pub fn run(plugin: &ProviderPlugin, opts: &CheckOptions) -> CheckReport {
    let mut s = Suite {
        plugin,
        opts,
        results: Vec::new(),
    };
    let d = plugin.description();
    s.record(
        "describe",
        Outcome::Pass,
        format!("{} {}: {}", d.name, d.version, d.summary),
    );

    let Some(first) = s.checked("init + info") else {
        return CheckReport {
            plugin: plugin.label(),
            results: s.results,
            ns_per_buffer: None,
            baseline_ns: None,
            info: String::new(),
            memory: "not reached".into(),
        };
    };
    let info = first.info().clone();
    drop(first);
    let described = format!(
        "buf_size {} (asked {}), align {}, capacity {}, caps {}{}",
        info.buf_size,
        opts.buf_size,
        info.align,
        info.capacity,
        info.caps,
        if info.backing.is_empty() {
            String::new()
        } else {
            format!(", {}", info.backing)
        }
    );
    s.record("init + info", Outcome::Pass, described.clone());
    let memory = check_regions(&mut s, &info);

    check_bulk(&mut s);
    check_distinct(&mut s);
    check_exhaustion(&mut s, info.capacity);
    check_memory(&mut s, info.caps);
    check_empty_ops(&mut s);
    check_faults(&mut s);
    check_pool(&mut s);
    let (ns, baseline_ns) = check_cost(&mut s);
    CheckReport {
        plugin: plugin.label(),
        results: s.results,
        ns_per_buffer: ns,
        baseline_ns,
        info: described,
        memory,
    }
}

/// A provider the host reads or writes by address declares where its memory lies (the
/// host checked each region against its own mappings when making the instance); one that
/// declares nothing passes only as trusted. The line for the certificate.
fn check_regions(s: &mut Suite<'_>, info: &ProviderInfo) -> String {
    let name = "regions";
    let by_address = info.caps.contains(Capabilities::CPU_READABLE)
        || info.caps.contains(Capabilities::HOST_WRITABLE);
    if !by_address {
        let line = format!("not touched by address ({})", info.caps);
        s.record(name, Outcome::Pass, line.clone());
        return line;
    }
    if info.regions.is_empty() {
        let (outcome, line) = if s.opts.unverified {
            (
                Outcome::Warn,
                "no region declared: UNVERIFIED, its buffer addresses go unchecked (accepted with --unverified; configs must say `unverified = true`)",
            )
        } else {
            (
                Outcome::Fail,
                "no region declared, so the host cannot check the addresses it hands out: declare them with `ProviderInfo::region(base, len)` (or pass --unverified to certify it as unverified)",
            )
        };
        s.record(name, outcome, line);
        return line.into();
    }
    let bytes: u64 = info.regions.iter().map(|r| r.len).sum();
    let line = format!(
        "{} region{} of {bytes} bytes in all, each mapped in the host with the access it needs; every buffer checked to lie inside",
        info.regions.len(),
        if info.regions.len() == 1 { "" } else { "s" }
    );
    s.record(name, Outcome::Pass, line.clone());
    line
}

fn check_bulk(s: &mut Suite<'_>) {
    let Some(mut p) = s.checked("alloc/release") else {
        return;
    };
    let mut out = [Netmem::EMPTY; REFILL];
    let n = match p.alloc_bulk(&mut out) {
        Ok(n) => n,
        Err(f) => {
            return s.record(
                "alloc/release",
                Outcome::Fail,
                format!("alloc_bulk of {REFILL}: {f}"),
            )
        }
    };
    if n == 0 && p.fault().is_none() {
        return s.record(
            "alloc/release",
            Outcome::Fail,
            "a fresh instance handed out no buffer",
        );
    }
    let first: Vec<Netmem> = out[..n].to_vec();
    p.release_bulk(&first);
    let again = p.alloc_bulk(&mut out).unwrap_or(0);
    p.release_bulk(&out[..again]);
    s.fault_or(
        "alloc/release",
        &p,
        format!("alloc_bulk({REFILL}) gave {n} valid descriptors; released and handed out again ({again}) unchanged"),
    );
}

/// Two batches held at once: every id in them distinct. A provider that hands out again
/// an id of an earlier batch that the host still holds breaks the contract.
fn check_distinct(s: &mut Suite<'_>) {
    let name = "distinct ids";
    let Some(mut p) = s.checked(name) else {
        return;
    };
    let mut held = Vec::new();
    let mut out = [Netmem::EMPTY; REFILL];
    for _ in 0..4 {
        match p.alloc_bulk(&mut out) {
            Ok(n) => held.extend_from_slice(&out[..n]),
            Err(f) => {
                p.release_bulk(&held);
                return s.record(name, Outcome::Fail, f.to_string());
            }
        }
        if p.fault().is_some() {
            break;
        }
    }
    let total = held.len();
    p.release_bulk(&held);
    s.fault_or(
        name,
        &p,
        format!("{total} buffers from 4 batches held at once, every id and address distinct"),
    );
}

fn check_exhaustion(s: &mut Suite<'_>, capacity: u32) {
    let Some(mut p) = s.checked("exhaustion") else {
        return;
    };
    let mut held = Vec::new();
    let mut out = [Netmem::EMPTY; REFILL];
    let limit = capacity as usize + REFILL;
    loop {
        match p.alloc_bulk(&mut out) {
            Ok(0) => break,
            Ok(n) => held.extend_from_slice(&out[..n]),
            Err(f) => {
                s.record(
                    "exhaustion",
                    Outcome::Fail,
                    format!("after {} buffers: {f}", held.len()),
                );
                p.release_bulk(&held);
                return;
            }
        }
        if p.fault().is_some() || held.len() > limit {
            break;
        }
    }
    let total = held.len();
    let after = p.alloc_bulk(&mut out);
    p.release_bulk(&held);
    let refill = p.alloc_bulk(&mut out).unwrap_or(0);
    p.release_bulk(&out[..refill]);
    if let Some(f) = p.fault() {
        return s.record(
            "exhaustion",
            Outcome::Fail,
            format!("after {total} buffers: {f}"),
        );
    }
    match after {
        Ok(0) if refill > 0 => s.record(
            "exhaustion",
            Outcome::Pass,
            format!("ran dry after {total} distinct, non-overlapping buffers (capacity {capacity}); then returned 0, not an error; usable again after release"),
        ),
        Ok(0) => s.record("exhaustion", Outcome::Fail, format!("ran dry after {total} buffers but handed out none after all were released")),
        Ok(n) => s.record("exhaustion", Outcome::Fail, format!("handed out {n} more after running dry")),
        Err(f) => s.record("exhaustion", Outcome::Fail, format!("when dry it failed instead of returning 0: {f}")),
    }
}

/// Writes a different pattern into every buffer, then reads them all back: buffers that
/// share memory show up. Memory the host may not write by address is written with the
/// provider's `fill` (even buffers) and with the bulk op the host places frames with
/// (odd buffers): `fill_gather`, 64 buffers a call (ABI 0.1.2, built-in and WASM), or
/// one `fill_bulk` a buffer (a plugin built against 0.1.1); and read with its `read` (a
/// WASM provider's guest memory), where it has one.
fn check_memory(s: &mut Suite<'_>, caps: Capabilities) {
    let rw = Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE;
    let by_address = caps.contains(rw);
    let via = if by_address {
        "by address"
    } else if caps.contains(Capabilities::NEEDS_FILL) {
        "through the provider's fill and bulk fill ops (read back with its read op)"
    } else {
        return s.record(
            "memory",
            Outcome::Pass,
            format!("skipped: memory is neither host-writable and CPU-readable nor filled by the provider ({caps})"),
        );
    };
    let Some(p) = s.checked("memory") else { return };
    let mut pool = Pool::new(p, 64);
    let mut bufs = Vec::new();
    while bufs.len() < 512 {
        match pool.alloc() {
            Ok(b) => bufs.push(b),
            Err(_) => break,
        }
    }
    let pattern = |i: usize, len: usize| vec![i as u8 ^ 0x5a; len];
    let bulk = match (by_address, pool.gathers()) {
        (true, _) => "",
        (false, true) => ", odd buffers by fill_gather (64 a call)",
        (false, false) => ", odd buffers by fill_bulk",
    };
    let mut detail = Ok(format!(
        "wrote and read back a pattern in {} buffers, {via}{bulk}",
        bufs.len()
    ));
    for (i, b) in bufs.iter_mut().enumerate() {
        let len = b.len();
        if !by_address && i % 2 == 1 {
            continue;
        }
        if let Err(e) = pool.place(b, 0, &pattern(i, len)) {
            detail = Err(format!(
                "writing buffer {i} (id {}) failed: {e}",
                b.netmem().id
            ));
            break;
        }
    }
    if !by_address && detail.is_ok() {
        if let Err(e) = fill_odd_in_bulk(&mut pool, &bufs, &pattern) {
            detail = Err(e);
        }
    }
    let mut back = Vec::new();
    for (i, b) in bufs.iter().enumerate().filter(|_| detail.is_ok()) {
        back.clear();
        if !pool.read(b, b.len(), &mut back) {
            detail = Ok(format!(
                "wrote {} buffers, {via}{bulk}; skipped reading back: the provider has no read op",
                bufs.len()
            ));
            break;
        }
        if back != pattern(i, b.len()) {
            detail = Err(format!("buffer {i} (id {}) did not keep the bytes written to it: memory is shared with another buffer", b.netmem().id));
            break;
        }
    }
    for b in bufs {
        let _ = pool.recycle(b);
    }
    let report = pool.shutdown(Duration::from_millis(10));
    match (detail, report.fault) {
        (_, Some(f)) => s.record("memory", Outcome::Fail, f.to_string()),
        (Err(e), None) => s.record("memory", Outcome::Fail, e),
        (Ok(d), None) => s.record("memory", Outcome::Pass, d),
    }
}

/// Writes the odd buffers of `bufs` with `pattern` through the bulk op the host places
/// frames with: `fill_gather`, 64 buffers a call, or one `fill_bulk` a buffer for a
/// provider built before ABI 0.1.2.
fn fill_odd_in_bulk(
    pool: &mut Pool,
    bufs: &[crate::pool::PoolBuf],
    pattern: &dyn Fn(usize, usize) -> Vec<u8>,
) -> Result<(), String> {
    let odd: Vec<(usize, Vec<u8>)> = bufs
        .iter()
        .enumerate()
        .skip(1)
        .step_by(2)
        .map(|(i, b)| (i, pattern(i, b.len())))
        .collect();
    if pool.gathers() {
        for chunk in odd.chunks(64) {
            let ops: Vec<memplex_abi::GatherOp<'_>> = chunk
                .iter()
                .map(|(i, bytes)| memplex_abi::GatherOp::new(bufs[*i].netmem(), 0, bytes))
                .collect();
            pool.fill_gather(&ops)
                .map_err(|e| format!("fill_gather of {} buffers failed: {e}", ops.len()))?;
        }
    } else {
        for (i, bytes) in &odd {
            let b = bufs[*i].netmem();
            let op = memplex_abi::FillOp {
                buf: b,
                offset: 0,
                len: bytes.len() as u32,
            };
            pool.fill_bulk(&[op], bytes)
                .map_err(|e| format!("fill_bulk of buffer {i} (id {}) failed: {e}", b.id))?;
        }
    }
    Ok(())
}

fn check_empty_ops(s: &mut Suite<'_>) {
    let mut raw = match s.plugin.instantiate_unchecked(&s.params()) {
        Ok(r) => r,
        Err(e) => return s.record("empty bulk ops", Outcome::Fail, e.to_string()),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (
            raw.alloc_bulk(&mut []),
            raw.release_bulk(&[]),
            raw.stats().len(),
        )
    }));
    match result {
        Ok((Ok(0), Ok(()), stats)) => s.record(
            "empty bulk ops",
            Outcome::Pass,
            format!("alloc_bulk([]) = 0, release_bulk([]) ok, stats() gave {stats} counters"),
        ),
        Ok((a, r, _)) => s.record(
            "empty bulk ops",
            Outcome::Fail,
            format!("alloc_bulk([]) = {a:?}, release_bulk([]) = {r:?}"),
        ),
        Err(_) => s.record(
            "empty bulk ops",
            Outcome::Fail,
            "panicked on an empty slice",
        ),
    }
}

fn check_faults(s: &mut Suite<'_>) {
    // An unknown setting should be refused, so a typo in a config is not silently ignored.
    let probe = s.params().set("memplex_conformance_unknown_key", "1");
    match s.plugin.instantiate_unchecked(&probe) {
        Err(LoadError::Provider { error, .. }) if error.kind == ErrorKind::INVALID_CONFIG => s
            .record(
                "bad config",
                Outcome::Pass,
                format!("refused an unknown setting: {}", error.message),
            ),
        Err(LoadError::Provider { error, .. }) if error.is_fatal() => s.record(
            "bad config",
            Outcome::Fail,
            format!("init with an unknown setting: {error}"),
        ),
        Err(e) => s.record(
            "bad config",
            Outcome::Warn,
            format!("refused an unknown setting, but not as `invalid config`: {e}"),
        ),
        Ok(_) => s.record(
            "bad config",
            Outcome::Fail,
            "accepted an unknown setting, so typos in configs go unnoticed; refuse unknown keys (InitParams::deny_unknown)",
        ),
    }
    // A buffer it never handed out must be refused, not added to its free list.
    let mut raw = match s.plugin.instantiate_unchecked(&s.params()) {
        Ok(r) => r,
        Err(e) => return s.record("foreign release", Outcome::Fail, e.to_string()),
    };
    let foreign = Netmem::new(u32::MAX - 1, 0x10_0000, s.opts.buf_size);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        raw.release_bulk(&[foreign])
    }));
    match r {
        Ok(Err(e)) if !e.is_fatal() => s.record(
            "foreign release",
            Outcome::Pass,
            format!("refused a buffer it never handed out: {e}"),
        ),
        Ok(Err(e)) => s.record(
            "foreign release",
            Outcome::Fail,
            format!("release of a foreign buffer: {e}"),
        ),
        Ok(Ok(())) => s.record(
            "foreign release",
            Outcome::Fail,
            "accepted a buffer it never handed out, so a host bug would corrupt its free list; refuse it with a bad-buffer error",
        ),
        Err(_) => s.record(
            "foreign release",
            Outcome::Fail,
            "panicked on a foreign buffer instead of returning an error",
        ),
    }
}

fn check_pool(s: &mut Suite<'_>) {
    let Some(p) = s.checked("pool round trip") else {
        return;
    };
    let mut pool = Pool::new(p, 256);
    let recycler = pool.recycler();
    let mut failed = None;
    for round in 0..8 {
        let mut held = Vec::new();
        for _ in 0..300 {
            match pool.alloc() {
                Ok(b) => held.push(b),
                Err(e) => {
                    failed = Some(format!("round {round}: {e}"));
                    break;
                }
            }
        }
        // Half come back on the pool's thread, half from another thread via the ring.
        let (local, remote): (Vec<_>, Vec<_>) =
            held.into_iter().partition(|b| b.netmem().id % 2 == 0);
        for b in local {
            let _ = pool.recycle(b);
        }
        let r = recycler.clone();
        let _ =
            std::thread::spawn(move || remote.into_iter().for_each(|b| drop(r.recycle(b)))).join();
        if failed.is_some() {
            break;
        }
    }
    let report = pool.shutdown(Duration::from_millis(100));
    match (failed, report.fault, report.leaked) {
        (_, Some(f), _) => s.record("pool round trip", Outcome::Fail, f.to_string()),
        (Some(e), None, _) => s.record("pool round trip", Outcome::Warn, format!("{e} (capacity below 300 buffers?)")),
        (None, None, 0) => s.record(
            "pool round trip",
            Outcome::Pass,
            format!(
                "2400 allocs through a pool, half returned from other threads; hit rate {:.1}%, every buffer back",
                report.stats.hit_rate() * 100.0
            ),
        ),
        (None, None, n) => s.record("pool round trip", Outcome::Fail, format!("{n} buffers not accounted for at shutdown")),
    }
}

/// One timing sample: 16 bulk rounds of alloc_bulk + release_bulk of [`REFILL`], in ns
/// per buffer; `None` when the provider failed or handed out nothing.
fn time_bulk(raw: &mut dyn MemoryProvider, out: &mut [Netmem; REFILL]) -> Option<f64> {
    let t = Instant::now();
    let mut bufs = 0;
    for _ in 0..16 {
        let n = raw.alloc_bulk(out).ok()?.min(REFILL);
        raw.release_bulk(&out[..n]).ok()?;
        bufs += n;
    }
    (bufs > 0).then(|| t.elapsed().as_nanos() as f64 / bufs as f64)
}

/// The cost of a buffer's alloc + release against the built-in slab's, timed in turns
/// in the same run, and the budget's verdict.
fn check_cost(s: &mut Suite<'_>) -> (Option<f64>, Option<f64>) {
    let name = "cost";
    let (Ok(mut raw), Some(slab)) = (
        s.plugin.instantiate_unchecked(&s.params()),
        ProviderPlugin::builtin("slab"),
    ) else {
        s.record(name, Outcome::Warn, "could not make instances to time");
        return (None, None);
    };
    let base_params = InitParams::new(0, s.opts.buf_size, s.opts.pool_size);
    let Ok(mut base) = slab.instantiate_unchecked(&base_params) else {
        s.record(
            name,
            Outcome::Warn,
            "could not start the built-in slab to compare with",
        );
        return (None, None);
    };
    let mut out = [Netmem::EMPTY; REFILL];
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + s.opts.cost_time;
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while Instant::now() < deadline && mine.len() < 10_000 {
            mine.push(time_bulk(&mut *raw, &mut out)?);
            theirs.push(time_bulk(&mut *base, &mut out)?);
        }
        Some(())
    }))
    .ok()
    .flatten();
    if ok.is_none() || mine.is_empty() {
        s.record(
            name,
            Outcome::Fail,
            "could not time alloc+release: the provider failed, panicked or handed out nothing",
        );
        return (None, None);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ns, slab_ns) = (median(&mut mine), median(&mut theirs));
    let ratio = ns / slab_ns;
    let figure = format!(
        "{ns:.1} ns per buffer for alloc_bulk+release_bulk of {REFILL}, {ratio:.2}x the built-in slab ({slab_ns:.1} ns), medians of {} turns each, no host checks",
        mine.len()
    );
    let over_ratio = ratio > s.opts.max_cost_ratio;
    let over_ns = s.opts.max_ns_per_buffer.filter(|&m| ns > m);
    match (over_ratio, over_ns) {
        (false, None) => s.record(name, Outcome::Pass, figure),
        (true, _) => s.record(
            name,
            Outcome::Fail,
            format!(
                "{figure}: over the budget of {}x (--max-cost-ratio)",
                s.opts.max_cost_ratio
            ),
        ),
        (false, Some(m)) => s.record(
            name,
            Outcome::Fail,
            format!("{figure}: over the budget of {m} ns (--max-ns-per-buffer)"),
        ),
    }
    (Some(ns), Some(slab_ns))
}
