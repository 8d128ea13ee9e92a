//! The conformance suite behind `memplex check-provider`: what a third-party provider
//! author runs before anyone else loads their provider.
//!
//! Each check makes a fresh instance, so one failure does not hide the next. A provider
//! that panics, errors or hands out a bad descriptor fails the check it happened in, with
//! the host's account of what it did; the suite itself never panics or aborts.

use crate::pool::{Pool, REFILL};
use crate::provider::{
    Capabilities, CheckedProvider, InitParams, LoadError, MemoryProvider, Netmem, ProviderPlugin,
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
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            buf_size: 2048,
            pool_size: 256,
            settings: Vec::new(),
            cost_time: Duration::from_millis(200),
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
}

impl CheckReport {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.outcome != Outcome::Fail)
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

    fn checked(&mut self, name: &'static str) -> Option<CheckedProvider> {
        match self.plugin.instantiate(&self.params()) {
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
        };
    };
    let info = first.info().clone();
    drop(first);
    s.record(
        "init + info",
        Outcome::Pass,
        format!(
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
        ),
    );

    check_bulk(&mut s);
    check_exhaustion(&mut s, info.capacity);
    check_memory(&mut s, info.caps);
    check_empty_ops(&mut s);
    check_faults(&mut s);
    check_pool(&mut s);
    let ns = check_cost(&mut s);
    CheckReport {
        plugin: plugin.label(),
        results: s.results,
        ns_per_buffer: ns,
    }
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
/// provider's `fill` and read with its `read` (a WASM provider's guest memory).
fn check_memory(s: &mut Suite<'_>, caps: Capabilities) {
    let rw = Capabilities::HOST_WRITABLE | Capabilities::CPU_READABLE;
    let via = if caps.contains(rw) {
        "by address"
    } else if caps.contains(Capabilities::NEEDS_FILL) {
        "through the provider's fill and read ops"
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
    let mut detail = Ok(format!(
        "wrote and read back a pattern in {} buffers, {via}",
        bufs.len()
    ));
    for (i, b) in bufs.iter_mut().enumerate() {
        let len = b.len();
        if let Err(e) = pool.place(b, 0, &pattern(i, len)) {
            detail = Err(format!(
                "writing buffer {i} (id {}) failed: {e}",
                b.netmem().id
            ));
            break;
        }
    }
    let mut back = Vec::new();
    for (i, b) in bufs.iter().enumerate().filter(|_| detail.is_ok()) {
        back.clear();
        if !pool.read(b, b.len(), &mut back) {
            detail = Ok(format!(
                "wrote {} buffers; skipped reading back: the provider has no read op",
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
            Outcome::Warn,
            "accepted an unknown setting; typos in configs will go unnoticed",
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
            Outcome::Warn,
            "accepted a buffer it never handed out; a host bug could corrupt its free list",
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

fn check_cost(s: &mut Suite<'_>) -> Option<f64> {
    let mut raw: Box<dyn MemoryProvider> = s.plugin.instantiate_unchecked(&s.params()).ok()?;
    let mut out = [Netmem::EMPTY; REFILL];
    let mut samples = Vec::new();
    let deadline = Instant::now() + s.opts.cost_time;
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while Instant::now() < deadline && samples.len() < 10_000 {
            let t = Instant::now();
            let mut bufs = 0;
            for _ in 0..16 {
                let n = raw.alloc_bulk(&mut out).unwrap_or(0).min(REFILL);
                if raw.release_bulk(&out[..n]).is_err() {
                    return false;
                }
                bufs += n;
            }
            if bufs == 0 {
                return false;
            }
            samples.push(t.elapsed().as_nanos() as f64 / bufs as f64);
        }
        true
    }))
    .unwrap_or(false);
    if !ok || samples.is_empty() {
        s.record(
            "cost",
            Outcome::Warn,
            "could not time alloc+release (the provider failed or handed out nothing)",
        );
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    s.record(
        "cost",
        Outcome::Pass,
        format!("{median:.1} ns per buffer for alloc_bulk+release_bulk of {REFILL} (median of {} samples, no host checks)", samples.len()),
    );
    Some(median)
}
