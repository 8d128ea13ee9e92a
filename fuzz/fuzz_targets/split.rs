//! Fuzzes the header-split walk: no input may panic, and every split stays in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memplex::wire::{SplitMode, Splitter};

fuzz_target!(|data: &[u8]| {
    let (Some(&selector), frame) = (data.first(), data.get(1..).unwrap_or_default()) else { return };
    let modes = [SplitMode::None, SplitMode::Fixed, SplitMode::L2, SplitMode::L3, SplitMode::L4, SplitMode::App];
    let splitter = Splitter {
        mode: modes[usize::from(selector) % modes.len()],
        fixed_offset: usize::from(selector),
        hds_threshold: usize::from(selector >> 4),
    };
    let split = splitter.split(frame);
    assert!(split.head_len <= frame.len());
    if split.outcome.is_ok() {
        assert!(split.head_len < frame.len());
    }
});
