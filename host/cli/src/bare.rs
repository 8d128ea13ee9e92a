//! The bare read loop: every queue on its own thread, counting only (or copying each
//! frame once into plain memory), with no split, pools or providers. `memplex bench` and
//! `memplex demo --compare` measure memplex against it on the same device.

use memplex::device::{Poll, RxQueue};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// What the bare read loop counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct BareCounts {
    pub frames: u64,
    pub bytes: u64,
    pub gso_frames: u64,
    pub kernel_drops: u64,
}

/// Reads every queue on its own thread, counting only, until `stop` (or the source ends).
/// With `copy`, each frame is also copied into a 2 MiB ring of plain memory per queue
/// (about what the pools hold), 64-byte aligned: the memcpy baseline.
pub fn bare_read(rx: Vec<Box<dyn RxQueue>>, stop: &AtomicBool, copy: bool) -> BareCounts {
    std::thread::scope(|s| {
        let hs: Vec<_> = rx
            .into_iter()
            .map(|mut q| {
                s.spawn(move || {
                    let mut c = BareCounts::default();
                    let mut ring = if copy { vec![0u8; 2 << 20] } else { Vec::new() };
                    let mut at = 0;
                    while !stop.load(Relaxed) {
                        let r = q.poll(Duration::from_millis(50), &mut |burst| {
                            for f in burst {
                                c.frames += 1;
                                c.bytes += f.data.len() as u64;
                                if copy {
                                    if at + f.data.len() > ring.len() {
                                        at = 0;
                                    }
                                    if let Some(dst) = ring.get_mut(at..at + f.data.len()) {
                                        dst.copy_from_slice(f.data);
                                    }
                                    at += f.data.len().next_multiple_of(64);
                                }
                            }
                        });
                        std::hint::black_box(&mut ring);
                        if !matches!(r, Ok(Poll::Frames(_) | Poll::Idle)) {
                            break;
                        }
                    }
                    c.gso_frames = q.stats().gso_frames;
                    c.kernel_drops = q.kernel_drops();
                    c
                })
            })
            .collect();
        hs.into_iter()
            .filter_map(|h| h.join().ok())
            .fold(BareCounts::default(), |a, b| BareCounts {
                frames: a.frames + b.frames,
                bytes: a.bytes + b.bytes,
                gso_frames: a.gso_frames + b.gso_frames,
                kernel_drops: a.kernel_drops + b.kernel_drops,
            })
    })
}
