//! A provider that breaks the contract is caught, named and quarantined; the host keeps
//! running and loses track of no buffer.

use super::*;
use memplex::pool::{Pool, PoolError, PoolErrorKind};
use memplex::provider::Fault;
use std::time::Duration;

/// Runs a pool over the faulty fixture with `fault`, allocating until it fails; returns
/// the buffers it got and the error that stopped it.
fn run_until_fault(fault: &str) -> (Pool, Vec<memplex::pool::PoolBuf>, PoolError) {
    let provider = faulty().instantiate(&params(&[("fault", fault)])).unwrap();
    let mut pool = Pool::new(provider, 64);
    let mut held = Vec::new();
    for _ in 0..1000 {
        match pool.alloc() {
            Ok(b) => held.push(b),
            Err(e) => return (pool, held, e),
        }
    }
    panic!("fault `{fault}` was never detected in 1000 allocations");
}

fn assert_quarantined(fault: &str, check: impl Fn(&Fault) -> bool) {
    let (mut pool, held, err) = run_until_fault(fault);
    let found = match err.kind() {
        PoolErrorKind::Quarantined { fault, provider } => {
            assert!(
                provider.contains("faulty"),
                "error names the provider: {provider}"
            );
            fault.clone()
        }
        other => panic!("fault `{fault}`: expected quarantine, got {other:?}"),
    };
    assert!(check(&found), "fault `{fault}` reported as {found:?}");
    assert_eq!(pool.provider().fault(), Some(&found));
    // Nothing of a quarantined provider is handed out, not even the good buffers of the
    // batch that broke the contract: they went straight back to it.
    assert!(held.is_empty(), "nothing handed out: {held:?}");
    let counters = pool.provider().counters();
    assert!(
        counters.handed_out > 0 && counters.released > 0,
        "{counters:?}"
    );
    // Further allocations fail fast with the same fault; the host keeps going.
    assert!(matches!(
        pool.alloc().map_err(PoolError::into_kind),
        Err(PoolErrorKind::Quarantined { .. })
    ));
    // Every buffer is accounted for: all come back, nothing leaks.
    let counters = pool.provider().counters();
    assert!(
        counters.rejected >= 1,
        "bad descriptors counted: {counters:?}"
    );
    for b in held {
        pool.recycle(b).unwrap();
    }
    let report = pool.shutdown(Duration::from_millis(100));
    assert_eq!(report.leaked, 0, "{report:?}");
    assert_eq!(
        report.provider_counters.handed_out,
        report.provider_counters.released + report.provider_counters.stranded
    );
}

#[test]
fn null_buffer() {
    assert_quarantined("null", |f| matches!(f, Fault::Null { .. }));
}

#[test]
fn duplicate_buffer() {
    assert_quarantined("duplicate", |f| matches!(f, Fault::Duplicate { .. }));
}

#[test]
fn short_buffer() {
    assert_quarantined("short", |f| {
        matches!(
            f,
            Fault::Short {
                len: 1024,
                want: 2048,
                ..
            }
        )
    });
}

#[test]
fn misaligned_buffer() {
    assert_quarantined("misaligned", |f| {
        matches!(f, Fault::Misaligned { align: 64, .. })
    });
}

#[test]
fn overlapping_buffers() {
    assert_quarantined("overlap", |f| matches!(f, Fault::Overlap { .. }));
}

#[test]
fn id_past_capacity() {
    assert_quarantined("id-range", |f| {
        matches!(f, Fault::IdOutOfRange { capacity: 256, .. })
    });
}

#[test]
fn overcount() {
    let provider = faulty()
        .instantiate(&params(&[("fault", "overcount")]))
        .unwrap();
    let mut pool = Pool::new(provider, 64);
    // The plugin-side glue passes the count on as the provider gave it (it used to clamp
    // it, hiding the bug); the host refuses it, reading only the slice it passed.
    let err = pool.alloc().unwrap_err();
    assert!(
        matches!(err.kind(), PoolErrorKind::Quarantined { fault: Fault::Overcount { claimed, room }, .. } if claimed > room),
        "{err}"
    );
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn panic_in_alloc_is_caught_and_quarantines() {
    let provider = faulty()
        .instantiate(&params(&[("fault", "panic-alloc"), ("after", "2")]))
        .unwrap();
    let mut pool = Pool::new(provider, 64);
    let mut held = Vec::new();
    let err = loop {
        match pool.alloc() {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
    };
    assert_eq!(held.len(), 64, "the first bulk call was good");
    match err.into_kind() {
        PoolErrorKind::Quarantined {
            fault: Fault::Panicked { op, message },
            ..
        } => {
            assert_eq!(op, "alloc_bulk");
            assert!(
                message.contains("deliberate panic in alloc_bulk"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The provider is poisoned: buffers coming back are stranded (counted), not released
    // into a provider that panicked.
    for b in held {
        pool.recycle(b).unwrap();
    }
    let report = pool.shutdown(Duration::from_millis(50));
    assert_eq!(report.leaked, 0);
    assert_eq!(report.provider_counters.stranded, 64);
}

#[test]
fn panic_in_release_is_caught() {
    let provider = faulty()
        .instantiate(&params(&[("fault", "panic-release")]))
        .unwrap();
    let mut pool = Pool::new(provider, 64);
    let b = pool.alloc().unwrap();
    pool.recycle(b).unwrap();
    let report = pool.shutdown(Duration::from_millis(50));
    assert!(
        matches!(
            report.fault,
            Some(Fault::Panicked {
                op: "release_bulk",
                ..
            })
        ),
        "{:?}",
        report.fault
    );
    assert_eq!(report.leaked, 0);
    assert_eq!(
        report.provider_counters.stranded, 64,
        "the 64 the pool held were not taken back"
    );
}

#[test]
fn an_error_from_alloc_is_reported_without_quarantine() {
    let provider = faulty()
        .instantiate(&params(&[("fault", "error-alloc")]))
        .unwrap();
    let mut pool = Pool::new(provider, 64);
    match pool.alloc().map_err(PoolError::into_kind) {
        Err(PoolErrorKind::Failed {
            fault:
                Fault::Error {
                    op: "alloc_bulk",
                    error,
                },
            ..
        }) => {
            assert!(error.message.contains("deliberate alloc_bulk failure"))
        }
        other => panic!("{other:?}"),
    }
    assert!(pool.provider().fault().is_none());
    assert_eq!(pool.stats().alloc_fail, 1);
}

#[test]
fn a_provider_that_runs_dry_is_not_a_fault() {
    let provider = faulty()
        .instantiate(&params(&[("fault", "leak-on-release"), ("buffers", "64")]))
        .unwrap();
    let mut pool = Pool::new(provider, 64);
    let held: Vec<_> = (0..64).map(|_| pool.alloc().unwrap()).collect();
    assert!(matches!(
        pool.alloc().map_err(PoolError::into_kind),
        Err(PoolErrorKind::Exhausted { held: 64, .. })
    ));
    assert!(pool.provider().fault().is_none());
    for b in held {
        pool.recycle(b).unwrap();
    }
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}
