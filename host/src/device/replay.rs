//! Replaying frames from memory: the receive queue behind `kind = "pcap"`, the bench
//! harness's in-memory source and `memplex demo --synthetic`.
//!
//! The frames are held in memory, so replay makes no system call at all: it measures
//! the host's own cost, with the kernel out of the loop. Flows are spread over queues by
//! a symmetric 5-tuple hash. Each frame keeps the timestamp and original length it was
//! recorded with; repeats of a capture carry the same timestamps again.

use super::{flow_hash, monotonic_ns, DeviceError, Poll, RxFrame, RxQueue, Stamp, BURST};
use arrayvec::ArrayVec;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A frame as recorded: its bytes, when it was captured, and its length on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The captured bytes.
    pub data: Box<[u8]>,
    /// Capture time, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// Length on the wire (at least `data.len()`).
    pub orig_len: u32,
}

impl Recorded {
    /// Frames made here rather than captured: whole, and stamped 1 µs apart from now.
    pub fn synthetic(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<Recorded> {
        let start = super::wall_ns();
        frames
            .into_iter()
            .enumerate()
            .map(|(i, f)| Recorded {
                orig_len: f.len() as u32,
                data: f.into_boxed_slice(),
                timestamp_ns: start + i as u64 * 1000,
            })
            .collect()
    }
}

impl AsRef<[u8]> for Recorded {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// One queue's share of a replay.
pub struct ReplayQueue {
    name: String,
    frames: Arc<[Recorded]>,
    mine: Vec<u32>,
    next: usize,
    round: u32,
    repeat: u32,
    left: Option<u64>,
    pace: Option<Pace>,
    stamp: Stamp,
}

/// Replay at a fixed rate: frames due by now, counted from the first poll.
///
/// The polling thread's timer slack is set to 1 us at the first poll, so a sleep until
/// the next frame is due ends near when asked: with Linux's default 50 us, a replay at
/// 100 kpps woke about every 100 us and handed over bursts of about 10 frames, each one
/// stamped as it was handed over. Measured with `memplex bench configs/deliver.toml
/// --consumer meta --rate 100000` (4 alternating pairs, a busy-polling consumer on a
/// 2-vCPU AMD EPYC VM): latency p50 from 4.9-6.5 to 1.6-2.5 us, p99 from 66-163 to
/// 34-73 us, lower in every pair.
struct Pace {
    per_sec: f64,
    start: Option<Instant>,
    sent: u64,
}

impl Pace {
    /// How many frames may go now (at most `budget`), and how long to wait when none may.
    fn allowance(&mut self, budget: usize) -> (usize, Duration) {
        let start = *self.start.get_or_insert_with(|| {
            // Best effort: without it the pace is only burstier.
            let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
            Instant::now()
        });
        let due = (start.elapsed().as_secs_f64() * self.per_sec) as u64 + 1;
        let n = due.saturating_sub(self.sent).min(budget as u64) as usize;
        let wait = Duration::from_secs_f64((self.sent + 1) as f64 / self.per_sec)
            .saturating_sub(start.elapsed());
        (n, wait)
    }
}

/// Splits `frames` over `queues` queues by flow, each replaying its flows `repeat` times,
/// at `rate` frames per second over all queues when given. `name` names the queues
/// (`NAME q0`, `NAME q1`, ...).
pub fn queues(
    name: &str,
    frames: Arc<[Recorded]>,
    queues: u16,
    repeat: u32,
    rate: Option<u64>,
) -> Result<Vec<ReplayQueue>, DeviceError> {
    if frames.is_empty() {
        return Err(DeviceError::Capture {
            path: name.to_string(),
            message: "holds no frames".into(),
        });
    }
    let queues = queues.max(1);
    // One queue takes every frame: no frame is parsed for its flow (at 128 B that walk
    // cost about 58 ns a frame, 3.8 ms for 8 MiB of frames, before the first was sent).
    let shares: Vec<Vec<u32>> = if queues == 1 {
        vec![(0..frames.len() as u32).collect()]
    } else {
        let mut shares = vec![Vec::new(); usize::from(queues)];
        for (i, f) in frames.iter().enumerate() {
            shares[(flow_hash(&f.data) % u64::from(queues)) as usize].push(i as u32);
        }
        shares
    };
    Ok(shares
        .into_iter()
        .enumerate()
        .map(|(q, mine)| ReplayQueue {
            name: format!("{name} q{q}"),
            frames: Arc::clone(&frames),
            mine,
            next: 0,
            round: 0,
            repeat,
            left: None,
            pace: rate.filter(|&r| r > 0).map(|r| Pace {
                per_sec: r as f64 / f64::from(queues),
                start: None,
                sent: 0,
            }),
            stamp: Stamp {
                queue: q as u16,
                next_seq: 0,
            },
        })
        .collect())
}

impl ReplayQueue {
    /// Ends this queue after `frames` frames, whatever the repeat count says.
    #[must_use]
    pub fn limit(mut self, frames: u64) -> Self {
        self.left = Some(frames);
        self
    }
}

impl RxQueue for ReplayQueue {
    fn poll(
        &mut self,
        timeout: Duration,
        on_burst: &mut dyn FnMut(&[RxFrame<'_>]),
    ) -> Result<Poll, DeviceError> {
        let mut budget = BURST;
        if let Some(left) = self.left {
            budget = budget.min(left.min(BURST as u64) as usize);
        }
        if let Some(pace) = self.pace.as_mut() {
            match pace.allowance(budget) {
                (0, wait) => {
                    std::thread::sleep(wait.min(timeout));
                    return Ok(Poll::Idle);
                }
                (n, _) => {
                    pace.sent += n as u64;
                    budget = n;
                }
            }
        }
        let now = monotonic_ns();
        let mut burst = ArrayVec::<RxFrame<'_>, BURST>::new();
        // The frames in runs of `mine` up to its end or the budget, with nothing in
        // the loop that may panic: the position and sequence number stay in registers
        // and are stored once per run, where a frame's possible panics (an index, a
        // full burst) made the compiler store both for every frame. Measured on the AMD
        // EPYC of family 23 model 1 (`cargo xtask ab`, 4 pairs, 4096 flows of 128 B
        // TCP): the bench's memcpy loop over this queue x1.16, its bare read loop
        // x1.11, tcp-split.toml x1.03.
        let (frames, mut stamp) = (&self.frames[..], self.stamp);
        while burst.len() < budget {
            if self.next >= self.mine.len() {
                self.next = 0;
                self.round += 1;
            }
            if self.round >= self.repeat || self.mine.is_empty() {
                break;
            }
            let run = self.mine.get(self.next..).unwrap_or_default();
            let run = run.get(..budget - burst.len()).unwrap_or(run);
            let mut used = 0;
            for &i in run {
                // Every index in `mine` is a frame's (`queues` made them so), and the
                // run fits the burst: neither test fails.
                if let Some(f) = frames.get(i as usize) {
                    let meta = stamp.next(&f.data, f.orig_len, f.timestamp_ns, now);
                    if burst
                        .try_push(RxFrame {
                            data: &f.data,
                            meta,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                used += 1;
            }
            self.next += used;
        }
        self.stamp = stamp;
        if burst.is_empty() {
            return Ok(Poll::End);
        }
        if let Some(left) = self.left.as_mut() {
            *left -= burst.len() as u64;
        }
        on_burst(&burst);
        Ok(Poll::Frames(burst.len()))
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Its frames take more than [`COLD_BYTES`].
    fn frames_cold(&self) -> bool {
        self.mine
            .iter()
            .map(|&i| self.frames.get(i as usize).map_or(0, |f| f.data.len()))
            .sum::<usize>()
            > COLD_BYTES
    }
}

/// A replay whose frames take more memory than this hands over frames out of L2 (1 MiB a
/// core on the AMD EPYC VMs memplex is measured on): see [`RxQueue::frames_cold`].
pub const COLD_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_carry_sequence_numbers_and_recorded_times() {
        let frames: Arc<[Recorded]> = (0..100u64)
            .map(|i| Recorded {
                data: vec![0u8; 60].into_boxed_slice(),
                timestamp_ns: 1_000_000 + i,
                orig_len: 1500,
            })
            .collect();
        let mut q = queues("t", frames, 1, 2, None)
            .unwrap()
            .remove(0)
            .limit(150);
        let mut seen = Vec::new();
        while let Ok(Poll::Frames(_)) = q.poll(Duration::ZERO, &mut |b| {
            assert!(b.len() <= BURST);
            seen.extend(b.iter().map(|f| f.meta));
        }) {}
        assert_eq!(seen.len(), 150, "the limit ends the replay");
        assert!(seen.iter().enumerate().all(|(i, m)| m.seq == i as u64));
        assert_eq!(
            seen[101].timestamp_ns, 1_000_001,
            "a repeat keeps recorded times"
        );
        assert_eq!((seen[0].orig_len, seen[0].cap_len), (1500, 60));
        assert!(seen[0].rx_mono_ns > 0);
    }

    /// Bursts are taken in runs of the frame list: a burst that reaches the list's end
    /// goes on from its start (full, every frame in recorded order), and the replay ends
    /// after its last repeat.
    #[test]
    fn bursts_run_across_repeats_in_order_and_full() {
        let frames: Arc<[Recorded]> = (0..150u64)
            .map(|i| Recorded {
                data: vec![i as u8; 60].into_boxed_slice(),
                timestamp_ns: i,
                orig_len: 60,
            })
            .collect();
        let mut q = queues("t", frames, 1, 3, None).unwrap().remove(0);
        let (mut seen, mut sizes) = (Vec::new(), Vec::new());
        let end = loop {
            match q.poll(Duration::ZERO, &mut |b| {
                sizes.push(b.len());
                seen.extend(
                    b.iter()
                        .map(|f| (f.meta.timestamp_ns, f.data[0], f.meta.seq)),
                );
            }) {
                Ok(Poll::Frames(_)) => continue,
                other => break other,
            }
        };
        assert!(matches!(end, Ok(Poll::End)), "{end:?}");
        let want: Vec<(u64, u8, u64)> =
            (0..450u64).map(|i| (i % 150, (i % 150) as u8, i)).collect();
        assert_eq!(seen, want, "every frame, in order, three times");
        assert_eq!(
            sizes,
            [64, 64, 64, 64, 64, 64, 64, 2],
            "bursts full across the wrap"
        );
    }

    #[test]
    fn a_replay_larger_than_l2_says_its_frames_are_cold() {
        let frames = |n: usize| -> Arc<[Recorded]> {
            Recorded::synthetic((0..n).map(|_| vec![0u8; 1500])).into()
        };
        let small = queues("t", frames(64), 1, 1, None).unwrap();
        assert!(!small[0].frames_cold(), "96 KB of frames fit in L2");
        let large = queues("t", frames(4096), 1, 1, None).unwrap();
        assert!(large[0].frames_cold(), "6 MB of frames do not");
        // Over two queues, each counts only its own frames: equal frames share a flow,
        // so one queue holds all 1.5 MB and the other none.
        let split = queues("t", frames(1000), 2, 1, None).unwrap();
        assert_eq!(split.iter().filter(|q| q.frames_cold()).count(), 1);
    }

    #[test]
    fn a_paced_replay_sleeps_with_a_fine_timer_slack() {
        let frames: Arc<[Recorded]> = Recorded::synthetic([vec![0u8; 60]]).into();
        // On a thread of its own: the slack is the polling thread's.
        std::thread::spawn(move || {
            let before = rustix::thread::current_timer_slack().unwrap();
            assert!(before > 1_000, "Linux's default is 50 us: {before} ns");
            // Unpaced: the thread is left as it was.
            let mut q = queues("t", Arc::clone(&frames), 1, 1, None)
                .unwrap()
                .remove(0);
            let _ = q.poll(Duration::ZERO, &mut |_| {}).unwrap();
            assert_eq!(rustix::thread::current_timer_slack().unwrap(), before);
            let mut q = queues("t", frames, 1, 10, Some(1_000)).unwrap().remove(0);
            let _ = q.poll(Duration::ZERO, &mut |_| {}).unwrap();
            assert_eq!(rustix::thread::current_timer_slack().unwrap(), 1_000);
        })
        .join()
        .unwrap();
    }
}
