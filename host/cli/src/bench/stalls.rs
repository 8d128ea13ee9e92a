//! What the machine itself takes from a busy CPU: the floor under a consumer's latency.
//!
//! A busy-polling consumer cannot read a frame while its CPU is taken from it: by the
//! timer tick, an interrupt, or (in a VM) the hypervisor. Before each consumer round that
//! measures latency, a thread pinned to the consumer's CPU spins reading the clock for a
//! short while and keeps every gap between two readings of [`MIN_GAP`] or more: the
//! stalls. A frame that arrives at a random moment (the rate does not matter) waits out
//! what is left of a stall it lands in, so the share of frames that wait more than `x`
//! is at least `Σ max(0, stall - x) / time`. The `x` where that share is 1% (0.1%) is a
//! floor under any consumer's p99 (p99.9) on that CPU: [`Stalls::floor_p99_ns`].
//!
//! A consumer that sleeps on an eventfd (`--wake eventfd`) waits instead for the machine
//! to wake it: [`wakeups`] has a thread on CPU 0 wake one asleep on the consumer's CPU
//! through an eventfd, as memplex wakes a consumer, and keeps each wake-up's delay; at a
//! rate where the consumer sleeps between bursts, the first frame of every burst waits
//! for one, so their p99 is a floor under the consumer's.
//!
//! Measured on a 2-vCPU AMD EPYC VM (family 25, model 17, a nested guest with a 250 Hz
//! tick), CPU 1 spinning alone: 350 to 420 stalls a second of 20 us or more, 2.1 to 2.6%
//! of its time lost, a floor p99 of 23 to 24 us; in a noisy hour 4.7% lost, stalls up to
//! 2.2 ms and a floor p99 of 709 us. A thread asleep there woke through an eventfd with
//! a p99 of 98 to 620 us (over 100 us in 8 of 9 probes). No consumer can meet the
//! busy-polling target (20 us) on that machine, and the eventfd one (100 us) only in a
//! rare quiet window.

use serde::Serialize;
use std::time::{Duration, Instant};

/// The shortest gap between two clock readings counted as a stall (a reading itself
/// costs tens of ns, in a VM too).
pub const MIN_GAP: Duration = Duration::from_micros(1);

/// The most stalls one probe keeps (the rest are counted in its time but not kept):
/// allocated before spinning, so the loop allocates nothing.
const MAX_KEPT: usize = 1 << 16;

/// One probe's stalls: how long it spun and the gaps it saw, in ns.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub total_ns: u64,
    pub gaps_ns: Vec<u64>,
}

impl Sample {
    /// Adds another probe's stalls (of the same CPU) to these.
    pub fn merge(&mut self, other: &Sample) {
        self.total_ns += other.total_ns;
        self.gaps_ns.extend_from_slice(&other.gaps_ns);
    }
}

/// Spins on CPU `cpu` for `time` and returns its stalls; `None` when the thread could
/// not be pinned there.
pub fn probe(cpu: usize, time: Duration) -> Option<Sample> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set).ok()?;
            let mut gaps_ns = Vec::with_capacity(MAX_KEPT);
            let start = Instant::now();
            let mut last = start;
            let min = MIN_GAP.as_nanos() as u64;
            loop {
                let now = Instant::now();
                let gap = now.duration_since(last).as_nanos() as u64;
                last = now;
                if gap >= min && gaps_ns.len() < MAX_KEPT {
                    gaps_ns.push(gap);
                }
                if now.duration_since(start) >= time {
                    break;
                }
            }
            Some(Sample {
                total_ns: last.duration_since(start).as_nanos() as u64,
                gaps_ns,
            })
        })
        .join()
        .ok()
        .flatten()
    })
}

/// Has a thread on CPU `from` wake one asleep on CPU `to` through an eventfd, every
/// `every`, for `time`; each wake-up's delay (from just before the write to just after
/// the read returns) in ns, sorted. `None` when a thread could not be pinned or the
/// eventfd could not be made.
pub fn wakeups(from: usize, to: usize, every: Duration, time: Duration) -> Option<Vec<u64>> {
    use rustix::event::{eventfd, EventfdFlags};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let fd = eventfd(0, EventfdFlags::CLOEXEC).ok()?;
    let sent = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let epoch = Instant::now();
    let pin = |cpu: usize| {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).is_ok()
    };
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            let pinned = pin(to);
            let mut delays = Vec::with_capacity(MAX_KEPT);
            let mut word = [0u8; 8];
            while rustix::io::read(&fd, &mut word).is_ok() && !done.load(Ordering::Acquire) {
                let now = epoch.elapsed().as_nanos() as u64;
                if delays.len() < MAX_KEPT {
                    delays.push(now.saturating_sub(sent.load(Ordering::Acquire)));
                }
            }
            pinned.then_some(delays)
        });
        // The waker is a thread of its own: pinning the caller would narrow what the
        // caller's later threads (and `available_parallelism`) see.
        let pinned = s
            .spawn(|| {
                let pinned = pin(from);
                let start = Instant::now();
                while pinned && start.elapsed() < time {
                    std::thread::sleep(every);
                    sent.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                    let _ = rustix::io::write(&fd, &1u64.to_ne_bytes());
                }
                done.store(true, Ordering::Release);
                let _ = rustix::io::write(&fd, &1u64.to_ne_bytes());
                pinned
            })
            .join()
            .unwrap_or(false);
        let mut delays = sleeper.join().ok().flatten()?;
        delays.sort_unstable();
        pinned.then_some(delays)
    })
}

/// The `q` quantile (0 to 1) of `sorted`, nearest rank; 0 for none.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

/// The smallest wait `x` (ns) such that frames arriving at random moments wait out more
/// than `x` of a stall no more than `share` of the time: `Σ max(0, gap - x) <= share ·
/// total`. 0 when the stalls take no more than `share` of the time in all.
pub fn floor(sample: &Sample, share: f64) -> u64 {
    let budget = share * sample.total_ns as f64;
    let over = |x: u64| -> f64 {
        sample
            .gaps_ns
            .iter()
            .map(|&g| g.saturating_sub(x) as f64)
            .sum()
    };
    let (mut lo, mut hi) = (0u64, sample.gaps_ns.iter().copied().max().unwrap_or(0));
    if over(0) <= budget {
        return 0;
    }
    // `over` falls as `x` grows; the smallest `x` within the budget, to the ns.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if over(mid) <= budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// A CPU's stalls, summed up for the report.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stalls {
    pub cpu: usize,
    /// How long the probes spun, in all.
    pub seconds: f64,
    /// Stalls of 20 µs or more, per second.
    pub over_20us_per_sec: f64,
    /// The share of the time lost in stalls of [`MIN_GAP`] or more.
    pub lost: f64,
    pub longest_ns: u64,
    /// From the stalls alone, no consumer on this CPU sees a p99 (p99.9) under these.
    pub floor_p99_ns: u64,
    pub floor_p999_ns: u64,
}

impl Stalls {
    pub fn of(cpu: usize, sample: &Sample) -> Option<Stalls> {
        let secs = sample.total_ns as f64 / 1e9;
        (sample.total_ns > 0).then(|| Stalls {
            cpu,
            seconds: secs,
            over_20us_per_sec: sample.gaps_ns.iter().filter(|&&g| g >= 20_000).count() as f64
                / secs,
            lost: sample.gaps_ns.iter().sum::<u64>() as f64 / sample.total_ns as f64,
            longest_ns: sample.gaps_ns.iter().copied().max().unwrap_or(0),
            floor_p99_ns: floor(sample, 0.01),
            floor_p999_ns: floor(sample, 0.001),
        })
    }

    /// One line for the report, naming `variant`.
    pub fn line(&self, variant: &str) -> String {
        format!(
            "`{variant}`: CPU {} alone (spun {:.2} s before its rounds): {:.0} stalls a second of 20 us or more, {:.2}% of its time lost, the longest {:.1} us; from these alone no consumer on CPU {} has a p99 under {:.1} us or a p99.9 under {:.1} us",
            self.cpu,
            self.seconds,
            self.over_20us_per_sec,
            self.lost * 100.0,
            self.longest_ns as f64 / 1e3,
            self.cpu,
            self.floor_p99_ns as f64 / 1e3,
            self.floor_p999_ns as f64 / 1e3,
        )
    }
}

/// Wake-ups of a sleeping consumer's CPU, summed up for the report.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Wakeups {
    pub cpu: usize,
    pub count: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub longest_ns: u64,
}

impl Wakeups {
    /// From the delays of [`wakeups`] (sorted).
    pub fn of(cpu: usize, sorted: &[u64]) -> Option<Wakeups> {
        (!sorted.is_empty()).then(|| Wakeups {
            cpu,
            count: sorted.len(),
            p50_ns: quantile(sorted, 0.5),
            p99_ns: quantile(sorted, 0.99),
            p999_ns: quantile(sorted, 0.999),
            longest_ns: sorted.last().copied().unwrap_or(0),
        })
    }

    /// One line for the report, naming `variant`.
    pub fn line(&self, variant: &str) -> String {
        format!(
            "`{variant}`: a thread asleep on CPU {} woken through an eventfd from CPU 0 ({} times before its rounds): p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, the longest {:.1} us; a consumer that sleeps between bursts waits that long for the first frame of each",
            self.cpu,
            self.count,
            self.p50_ns as f64 / 1e3,
            self.p99_ns as f64 / 1e3,
            self.p999_ns as f64 / 1e3,
            self.longest_ns as f64 / 1e3,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.99), 0);
        let w = Wakeups::of(1, &v).unwrap();
        assert_eq!((w.count, w.p99_ns, w.longest_ns), (1000, 990, 1000));
        assert!(Wakeups::of(1, &[]).is_none());
    }

    #[test]
    fn a_sleeping_thread_is_woken_once_per_write() {
        let d = wakeups(0, 0, Duration::from_millis(2), Duration::from_millis(30))
            .expect("CPU 0 exists");
        // About 15 writes; a sleep that overran takes one or two away.
        assert!((5..=16).contains(&d.len()), "{} wake-ups", d.len());
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "sorted");
        // Each delay is a wake-up's, from its own write: measured from the first
        // write or the start, the median would be about 15 ms.
        assert!(d[d.len() / 2] < 10_000_000, "median {} ns", d[d.len() / 2]);
        assert!(wakeups(0, 4096, Duration::from_millis(1), Duration::from_millis(5)).is_none());
    }

    #[test]
    fn the_floor_is_where_the_waits_left_take_the_share() {
        // 100 stalls of 200 us in 1 s: waits over x take 100 * (200 - x) us, which is
        // 1% of the time (10 ms) at x = 100 us and 0.1% at x = 190 us.
        let s = Sample {
            total_ns: 1_000_000_000,
            gaps_ns: vec![200_000; 100],
        };
        assert_eq!(floor(&s, 0.01), 100_000);
        assert_eq!(floor(&s, 0.001), 190_000);
        // Stalls that take less than the share in all leave no floor.
        assert_eq!(floor(&s, 0.05), 0);
        let st = Stalls::of(1, &s).unwrap();
        assert_eq!(st.over_20us_per_sec, 100.0);
        assert!((st.lost - 0.02).abs() < 1e-12);
        assert_eq!((st.longest_ns, st.floor_p99_ns), (200_000, 100_000));
        assert!(st
            .line("deliver -> consumer")
            .contains("p99 under 100.0 us"));
    }

    #[test]
    fn an_empty_sample_has_no_summary_and_no_floor() {
        assert!(Stalls::of(0, &Sample::default()).is_none());
        let quiet = Sample {
            total_ns: 1_000,
            gaps_ns: Vec::new(),
        };
        assert_eq!(floor(&quiet, 0.01), 0);
    }

    #[test]
    fn a_probe_spins_as_long_as_asked_and_keeps_only_stalls() {
        let s = probe(0, Duration::from_millis(20)).expect("CPU 0 exists");
        assert!(s.total_ns >= 20_000_000, "spun {} ns", s.total_ns);
        assert!(s.gaps_ns.iter().all(|&g| g >= MIN_GAP.as_nanos() as u64));
        assert!(s.gaps_ns.iter().sum::<u64>() <= s.total_ns);
        // A CPU the machine does not have: no probe.
        assert!(probe(4096, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn samples_merge_their_time_and_stalls() {
        let mut a = Sample {
            total_ns: 10,
            gaps_ns: vec![3],
        };
        a.merge(&Sample {
            total_ns: 5,
            gaps_ns: vec![4, 1],
        });
        assert_eq!((a.total_ns, a.gaps_ns), (15, vec![3, 4, 1]));
    }
}
