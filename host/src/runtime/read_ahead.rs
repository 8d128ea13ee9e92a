//! Whether a worker asks for its next vector's frames ahead of handling them: measured on
//! the CPU at hand, per queue, and measured again from time to time.
//!
//! For a device whose frames are likely out of cache (`RxQueue::frames_cold`: a replay
//! larger than L2), the worker can ask for every line of the next vector's frames
//! (PREFETCHT1) before it handles a vector. Whether that pays depends on the CPU, and
//! the machine memplex runs on changes CPU:
//!
//! - on the AMD EPYC of family 25 model 17 it won x1.11 at 1500 B (the `place` bench's
//!   8 MiB of frames: 0.524 against 0.471 of memcpy, 7 alternating pairs, 6 won);
//! - on the Intel Xeon of family 6 model 167 (2 MiB of L2 a core, a large L3) it lost a
//!   quarter at 1500 B (the same bench: 0.75 to 0.87 of memcpy with it, 0.95 to 1.03
//!   without, alternating runs) and did nothing at 128 B. Its own prefetchers bring the
//!   frames in; the requests only compete with them.
//!
//! No one setting is right on both, and a list of CPU models would be a guess for the
//! next one. So each queue measures: [`ReadAhead`] times its handling of bursts, in
//! epochs of [`EPOCH_BYTES`], alternating the two ways (on, off, off, on, ...) for
//! [`EPOCHS`] epochs, and keeps the one whose median time per byte is lower; ahead must
//! win by [`MARGIN`], as it costs instructions where it does not help. A probe that
//! disagrees with the way the queue has kept is confirmed by a second probe, right
//! after it, before the queue changes way. Then it handles [`SETTLED_BURSTS`] bursts
//! without a clock, and measures again, as the traffic (and with it the answer) may
//! change. A probe reads the clock twice a burst (of up to 64
//! frames), and only while it probes; settled, it costs one compare a burst.
//!
//! The first probe waits [`WARM_BURSTS`] bursts, handled without reading ahead. In the
//! `place` bench on the Intel VM, a probe from a run's first burst chose ahead in every
//! run that started right after the memcpy loop (everything slower by a third for the
//! first few MiB, and ahead faster then) and not in those that followed a run of the
//! engine: a wrong choice, for the rest of the run, in half of them (8 runs of the
//! bench: 0.77 to 1.04 of memcpy, 3 of them under 0.82; with the first probe after 256,
//! 512, 1024 or 2000 bursts, 0.92 to 1.01, and all 32 probes of each run chose not to).
//!
//! Why a second probe: on the AMD EPYC of family 23 model 49 reading ahead lost about
//! 15% at 1500 B, and one probe in 9 of a run still chose it (session 34), for the
//! 65,536 bursts until the next. With a confirmation, a wrong way needs two wrong
//! probes in a row; a right change costs one probe more (32 MiB of frames), not a
//! settled period.

use crate::stats::ReadAheadStats;
use std::time::Duration;

/// Frame bytes per epoch: about 1400 frames of 1500 B, 16 000 of 128 B. Long enough to
/// hold many bursts, so one slow burst (an interrupt, a page fault) weighs little; the
/// median over epochs drops the rest.
pub(crate) const EPOCH_BYTES: u64 = 2 << 20;

/// Epochs per probe, half each way.
pub(crate) const EPOCHS: usize = 16;

/// How much faster ahead must read (median ns per byte) to be kept: 3%.
pub(crate) const MARGIN: f64 = 0.97;

/// Bursts handled before the first probe: at 64 frames of 1500 B a burst, about 47 MiB.
pub(crate) const WARM_BURSTS: u32 = 512;

/// Bursts handled between probes: at 64 frames a burst, about 4 million frames, a second
/// or less at the rates a cold replay reaches.
pub(crate) const SETTLED_BURSTS: u32 = 1 << 16;

/// One queue's choice, and its measurements while it probes.
#[derive(Debug, Clone)]
pub(crate) struct ReadAhead {
    /// Ask for the next vector's frames ahead, now.
    on: bool,
    /// The way kept between probes (`on` alternates while probing).
    kept: bool,
    /// The last probe chose the other way than `kept`: the one now running confirms
    /// it, or not.
    confirming: bool,
    phase: Phase,
    /// What it decided so far.
    stats: ReadAheadStats,
}

#[derive(Debug, Clone)]
enum Phase {
    /// The device's frames are in cache: never ahead, never measured.
    Off,
    /// Measuring epoch `epoch` (of [`EPOCHS`]): its time and bytes so far, and each
    /// epoch's ns per byte by way (ahead first).
    Probing {
        epoch: usize,
        ns: u64,
        bytes: u64,
        ahead: [f64; EPOCHS / 2],
        not: [f64; EPOCHS / 2],
    },
    /// Decided, or warming up: bursts to handle untimed before the next probe.
    Settled { left: u32 },
}

/// Whether epoch `k` of a probe reads ahead: on, off, off, on, and again, so neither way
/// always goes first and a drift in the machine's speed over the probe falls on both.
fn ahead_in(k: usize) -> bool {
    matches!(k % 4, 0 | 3)
}

impl ReadAhead {
    /// For a device whose frames are likely out of cache (`cold`): probes after
    /// [`WARM_BURSTS`] bursts; otherwise never reads ahead.
    pub(crate) fn new(cold: bool) -> ReadAhead {
        ReadAhead {
            on: false,
            kept: false,
            confirming: false,
            phase: match cold {
                true => Phase::Settled { left: WARM_BURSTS },
                false => Phase::Off,
            },
            stats: ReadAheadStats::default(),
        }
    }

    /// Starts a probe from its first epoch.
    fn probe(&mut self) {
        self.on = ahead_in(0);
        self.phase = Phase::Probing {
            epoch: 0,
            ns: 0,
            bytes: 0,
            ahead: [0.0; EPOCHS / 2],
            not: [0.0; EPOCHS / 2],
        };
    }

    /// Whether the device's frames are likely out of cache (it was made `cold`): the
    /// worker then asks for the first lines of the next vector's frames even when not
    /// [`on`](Self::on).
    #[inline]
    pub(crate) fn cold(&self) -> bool {
        !matches!(self.phase, Phase::Off)
    }

    /// Ask for the next vector's frames ahead for this burst.
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.on
    }

    /// Whether this burst is to be timed (and then [`handled`](Self::handled) told);
    /// otherwise counts it toward the next probe.
    #[inline]
    pub(crate) fn timing(&mut self) -> bool {
        match &mut self.phase {
            Phase::Off => false,
            Phase::Probing { .. } => true,
            Phase::Settled { left: 0 } => {
                self.probe();
                true
            }
            Phase::Settled { left } => {
                *left -= 1;
                false
            }
        }
    }

    /// A timed burst of `bytes` took `took`.
    pub(crate) fn handled(&mut self, took: Duration, bytes: u64) {
        let Phase::Probing {
            epoch,
            ns,
            bytes: so_far,
            ahead,
            not,
        } = &mut self.phase
        else {
            return;
        };
        *ns += took.as_nanos() as u64;
        *so_far += bytes;
        if *so_far < EPOCH_BYTES {
            return;
        }
        let per_byte = *ns as f64 / *so_far as f64;
        let slot = *epoch / 2;
        match ahead_in(*epoch) {
            true => ahead[slot] = per_byte,
            false => not[slot] = per_byte,
        }
        (*ns, *so_far) = (0, 0);
        *epoch += 1;
        if *epoch < EPOCHS {
            self.on = ahead_in(*epoch);
            return;
        }
        let chose = median(ahead) < median(not) * MARGIN;
        self.stats.probes += 1;
        self.stats.chose_ahead += u64::from(chose);
        if chose != self.kept && !self.confirming {
            // Another way than the kept one: probed again before it is taken.
            self.confirming = true;
            self.probe();
            return;
        }
        // Agreed with the kept way, or confirmed the other: either way, `chose`.
        self.confirming = false;
        (self.kept, self.on) = (chose, chose);
        self.phase = Phase::Settled {
            left: SETTLED_BURSTS,
        };
    }

    /// What it decided so far.
    pub(crate) fn stats(&self) -> ReadAheadStats {
        self.stats
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    // Of an even count, the mean of the middle two.
    let m = v.len() / 2;
    match v.len() % 2 {
        0 => (v[m - 1] + v[m]) / 2.0,
        _ => v[m],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds bursts of 64 KiB until the probe settles: each burst takes `ahead_ns` or
    /// `not_ns` per byte as the probe reads ahead or not, `noise(i)` added to burst `i`.
    /// Returns the bursts it took.
    fn probe(
        ra: &mut ReadAhead,
        ahead_ns: f64,
        not_ns: f64,
        noise: impl Fn(usize) -> u64,
    ) -> usize {
        let bytes = 64 << 10;
        for i in 0.. {
            if !ra.timing() {
                return i;
            }
            let per_byte = if ra.on() { ahead_ns } else { not_ns };
            let ns = (per_byte * bytes as f64) as u64 + noise(i);
            ra.handled(Duration::from_nanos(ns), bytes);
            assert!(i < 10_000, "the probe never settled");
        }
        unreachable!()
    }

    /// A cold queue's read-ahead, past its warm-up, which neither reads ahead nor
    /// times a burst.
    fn warmed() -> ReadAhead {
        let mut ra = ReadAhead::new(true);
        for _ in 0..WARM_BURSTS {
            assert!(!ra.timing(), "warming up");
            assert!(!ra.on(), "warming up");
        }
        ra
    }

    #[test]
    fn a_probe_keeps_the_faster_way() {
        // Each epoch is 32 bursts of 64 KiB; 16 epochs. Ahead faster: another way than
        // the kept one (off), so a second probe confirms it.
        let mut ra = warmed();
        assert_eq!(probe(&mut ra, 0.05, 0.07, |_| 0), 2 * EPOCHS * 32);
        assert!(ra.on(), "ahead was faster");
        assert_eq!(
            ra.stats(),
            ReadAheadStats {
                probes: 2,
                chose_ahead: 2
            }
        );

        // Ahead slower: the kept way, taken after one probe.
        let mut ra = warmed();
        assert_eq!(probe(&mut ra, 0.07, 0.05, |_| 0), EPOCHS * 32);
        assert!(!ra.on(), "ahead was slower");
        assert_eq!(
            ra.stats(),
            ReadAheadStats {
                probes: 1,
                chose_ahead: 0
            }
        );
    }

    #[test]
    fn ahead_must_win_by_the_margin() {
        // 2% faster: not worth its instructions.
        let mut ra = warmed();
        probe(&mut ra, 0.98, 1.0, |_| 0);
        assert!(!ra.on());
        // 5% faster: kept.
        let mut ra = warmed();
        probe(&mut ra, 0.95, 1.0, |_| 0);
        assert!(ra.on());
    }

    #[test]
    fn a_few_slow_epochs_do_not_decide() {
        // Ahead is faster, but three of its epochs (one burst in each) were hit by
        // something taking 100 ms: the median does not see them.
        let mut ra = warmed();
        let hit = |i: usize| match i {
            0 | 96 | 128 => 100_000_000,
            _ => 0,
        };
        probe(&mut ra, 0.05, 0.07, hit);
        assert!(ra.on());
    }

    #[test]
    fn it_probes_again_after_the_settled_bursts() {
        let mut ra = warmed();
        assert!(ra.cold());
        probe(&mut ra, 0.05, 0.07, |_| 0);
        assert!(ra.on());
        assert!(ra.cold(), "deciding does not make the frames warm");
        // Settled: no clock for SETTLED_BURSTS bursts (the first of them the one that
        // ended `probe`), then a new probe, which now finds ahead slower.
        for _ in 1..SETTLED_BURSTS {
            assert!(!ra.timing());
            assert!(ra.on());
        }
        probe(&mut ra, 0.07, 0.05, |_| 0);
        assert!(!ra.on());
        assert!(ra.cold());
        assert_eq!(
            ra.stats(),
            ReadAheadStats {
                probes: 4,
                chose_ahead: 2
            }
        );
    }

    #[test]
    fn one_probe_alone_does_not_change_the_way() {
        // The first probe finds ahead faster (a fluke), its confirmation finds it
        // slower: the queue stays as it was, off, and settles.
        let mut ra = warmed();
        let bytes = 64 << 10;
        while ra.timing() {
            let ahead_ns = if ra.stats().probes == 0 { 0.05 } else { 0.09 };
            let per_byte = if ra.on() { ahead_ns } else { 0.07 };
            ra.handled(
                Duration::from_nanos((per_byte * bytes as f64) as u64),
                bytes,
            );
        }
        assert!(!ra.on());
        assert_eq!(
            ra.stats(),
            ReadAheadStats {
                probes: 2,
                chose_ahead: 1
            }
        );
        // Settled: the next probe comes after the settled bursts, not at once.
        for _ in 1..SETTLED_BURSTS {
            assert!(!ra.timing());
            assert!(!ra.on());
        }
        assert!(ra.timing());
    }

    #[test]
    fn frames_in_cache_are_never_read_ahead_or_timed() {
        let mut ra = ReadAhead::new(false);
        for _ in 0..1000 {
            assert!(!ra.timing());
            assert!(!ra.on());
            assert!(!ra.cold(), "no header lines asked for either");
            ra.handled(Duration::from_millis(1), EPOCH_BYTES);
        }
        assert_eq!(ra.stats(), ReadAheadStats::default());
    }

    #[test]
    fn epochs_alternate_so_neither_way_always_goes_first() {
        let ways: Vec<bool> = (0..EPOCHS).map(ahead_in).collect();
        assert_eq!(ways.iter().filter(|&&a| a).count(), EPOCHS / 2);
        assert_eq!(&ways[..4], &[true, false, false, true]);
    }
}
