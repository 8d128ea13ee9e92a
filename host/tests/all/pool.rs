//! The page_pool equivalent: counters, recycling paths, in-flight accounting, shutdown.

use super::*;
use memplex::pool::{Pool, PoolBuf, PoolErrorKind, CACHE_SIZE, REFILL};
use std::time::Duration;

fn slab_pool(buffers: u32) -> Pool {
    let p = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&params(&[("buffers", &buffers.to_string())]))
        .unwrap();
    Pool::new(p, 256)
}

#[test]
fn fast_path_serves_from_the_cache_after_one_bulk_call() {
    let mut pool = slab_pool(1024);
    let first = pool.alloc().unwrap();
    pool.recycle(first).unwrap();
    for _ in 0..1000 {
        let b = pool.alloc().unwrap();
        pool.recycle(b).unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.alloc_slow, 1);
    assert_eq!(s.alloc_fast, 1000);
    assert_eq!(s.recycle_cached, 1001);
    assert_eq!(pool.provider().counters().alloc_calls, 1);
    assert_eq!(pool.provider().counters().handed_out, REFILL as u64);
    assert_eq!(s.inflight, 0);
}

#[test]
fn full_cache_spills_to_the_ring_then_to_the_provider() {
    let mut pool = slab_pool(2048);
    let ring = 256; // as built by slab_pool
                    // A multiple of the bulk size, so the cache is empty when the recycling starts.
    let held: Vec<PoolBuf> = (0..CACHE_SIZE + ring + REFILL)
        .map(|_| pool.alloc().unwrap())
        .collect();
    assert_eq!((CACHE_SIZE + ring + REFILL) % REFILL, 0);
    assert_eq!(pool.stats().inflight, held.len() as u64);
    for b in held {
        pool.recycle(b).unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.recycle_cached, CACHE_SIZE as u64);
    assert_eq!(s.recycle_cache_full, (ring + REFILL) as u64);
    assert_eq!(s.recycle_ring, ring as u64);
    assert_eq!(s.recycle_ring_full, REFILL as u64);
    assert_eq!(s.recycle_released, REFILL as u64);
    assert_eq!(s.inflight, 0);
    // Taken again: the full cache by the fast path, then refills from the ring (one
    // buffer each through the slow path, the rest of each refill by the fast path).
    let fast = s.alloc_fast;
    let held: Vec<PoolBuf> = (0..CACHE_SIZE + REFILL + 1)
        .map(|_| pool.alloc().unwrap())
        .collect();
    let s = pool.stats();
    assert_eq!(s.alloc_refill, 2, "{s:?}");
    assert_eq!(
        s.alloc_fast - fast,
        (CACHE_SIZE + REFILL - 1) as u64,
        "{s:?}"
    );
    assert_eq!(s.inflight, held.len() as u64);
    for b in held {
        pool.recycle(b).unwrap();
    }
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn a_burst_takes_what_single_allocations_would_and_goes_back_in_one_piece() {
    let mut pool = slab_pool(1024);
    let mut burst = pool.burst(32);
    assert_eq!(burst.pool_id(), pool.id());
    // More than one bulk provider call's worth: the cache runs out twice on the way.
    pool.alloc_burst(2 * REFILL + 5, &mut burst).unwrap();
    assert_eq!(burst.len(), 2 * REFILL + 5);
    let mut ids: Vec<u32> = burst.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), burst.len(), "every buffer once");
    assert!(burst.iter().all(|n| n.len > 0 && n.addr != 0));
    let s = pool.stats();
    assert_eq!(s.alloc_slow, 3, "{s:?}");
    assert_eq!(s.alloc_fast, (2 * REFILL + 5 - 3) as u64, "{s:?}");
    assert_eq!(s.inflight, burst.len() as u64);
    // One copy into the cache as far as it has room (it kept what the third bulk call
    // left over), the rest to the ring as single recycles would.
    pool.recycle_burst(&mut burst).unwrap();
    assert!(burst.is_empty());
    let s = pool.stats();
    assert_eq!(s.inflight, 0, "{s:?}");
    let left = 3 * REFILL - (2 * REFILL + 5);
    assert_eq!(s.recycle_cached, (CACHE_SIZE - left) as u64, "{s:?}");
    assert_eq!(
        s.recycle_ring,
        (2 * REFILL + 5 - (CACHE_SIZE - left)) as u64,
        "{s:?}"
    );
    // Served again from the cache, with no provider call. Recycling a burst and taking
    // one back keeps the cache's stack order: popping gives what single recycles of the
    // same buffers, then single allocations, would (the last one in comes out first).
    let calls = pool.provider().counters().alloc_calls;
    let single: Vec<u32> = (0..REFILL)
        .map(|_| pool.alloc().unwrap())
        .map(|b| {
            let id = b.netmem().id;
            burst.push(b).unwrap();
            id
        })
        .collect();
    pool.recycle_burst(&mut burst).unwrap();
    pool.alloc_burst(REFILL, &mut burst).unwrap();
    assert_eq!(pool.provider().counters().alloc_calls, calls);
    let popped: Vec<u32> = std::iter::from_fn(|| burst.pop())
        .map(|b| {
            let id = b.netmem().id;
            pool.recycle(b).unwrap();
            id
        })
        .collect();
    assert_eq!(popped, single.into_iter().rev().collect::<Vec<_>>());
    assert_eq!(pool.stats().inflight, 0);
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn a_burst_holds_one_pools_buffers_and_goes_back_only_to_it() {
    let mut pool = slab_pool(1024);
    let mut other = slab_pool(64);
    let mut burst = pool.burst(8);
    pool.alloc_burst(4, &mut burst).unwrap();
    // Another pool's buffer is handed back, not taken in.
    let foreign = other.alloc().unwrap();
    let foreign = burst.push(foreign).unwrap_err();
    assert_eq!(foreign.pool_id(), other.id());
    other.recycle(foreign).unwrap();
    // Another pool neither fills nor takes the burst, and leaves it as it was.
    let err = other.alloc_burst(2, &mut burst).unwrap_err();
    assert!(
        matches!(err.kind(), PoolErrorKind::ForeignBurst { burst_pool, pool: p }
            if *burst_pool == pool.id() && *p == other.id()),
        "{err}"
    );
    assert!(err.to_string().contains("burst of pool"), "{err}");
    let err = other.recycle_burst(&mut burst).unwrap_err();
    assert!(
        matches!(err.kind(), PoolErrorKind::ForeignBurst { .. }),
        "{err}"
    );
    assert_eq!(burst.len(), 4);
    assert_eq!(other.stats().inflight, 0);
    assert_eq!(pool.stats().inflight, 4);
    assert_eq!(burst.get(3), burst.iter().nth(3));
    assert_eq!(burst.get(4), None);
    pool.recycle_burst(&mut burst).unwrap();
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
    assert_eq!(other.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn a_burst_from_a_dry_provider_keeps_what_it_got() {
    let mut pool = slab_pool(100);
    let mut burst = pool.burst(0);
    let err = pool.alloc_burst(150, &mut burst).unwrap_err();
    assert!(
        matches!(err.kind(), PoolErrorKind::Exhausted { .. }),
        "{err}"
    );
    assert_eq!(burst.len(), 100, "every buffer the provider had");
    assert_eq!(pool.stats().inflight, 100);
    pool.recycle_burst(&mut burst).unwrap();
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn buffers_returned_from_other_threads_refill_the_cache() {
    let mut pool = slab_pool(1024);
    let recycler = pool.recycler();
    let held: Vec<PoolBuf> = (0..200).map(|_| pool.alloc().unwrap()).collect();
    std::thread::spawn(move || {
        for b in held {
            recycler.recycle(b).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(pool.stats().recycle_ring, 200);
    assert_eq!(
        pool.stats().recycle_cached,
        0,
        "nothing went back on this thread"
    );
    // The cache still holds what was left of the bulk calls; drain it, then the ring.
    let calls = pool.provider().counters().alloc_calls;
    let again: Vec<PoolBuf> = (0..200).map(|_| pool.alloc().unwrap()).collect();
    assert!(pool.stats().alloc_refill >= 1, "{:?}", pool.stats());
    assert_eq!(
        pool.provider().counters().alloc_calls,
        calls,
        "no provider call needed"
    );
    for b in again {
        pool.recycle(b).unwrap();
    }
    // Counted from the cache's fill and the slow paths (the fast path does not count
    // recycles): exactly what fit in the cache, the rest spilled. The first 200 came
    // from 4 bulk calls (56 left over); the next 200 took those 56 and 3 ring refills
    // of 64 (48 left over), so the cache had room for 80.
    let s = pool.stats();
    assert_eq!((s.alloc_slow, s.alloc_refill), (4, 3), "{s:?}");
    assert_eq!(s.recycle_cached + s.recycle_cache_full, 200, "{s:?}");
    assert_eq!(s.recycle_cached, (CACHE_SIZE - 48) as u64, "{s:?}");
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}

#[test]
fn ring_overflow_from_other_threads_is_not_lost() {
    let p = ProviderPlugin::builtin("slab")
        .unwrap()
        .instantiate(&params(&[("buffers", "1024")]))
        .unwrap();
    let mut pool = Pool::new(p, 64);
    let recycler = pool.recycler();
    let held: Vec<PoolBuf> = (0..300).map(|_| pool.alloc().unwrap()).collect();
    std::thread::spawn(move || held.into_iter().for_each(|b| recycler.recycle(b).unwrap()))
        .join()
        .unwrap();
    let s = pool.stats();
    assert_eq!(s.recycle_ring, 64);
    assert_eq!(s.recycle_ring_full, 236);
    assert_eq!(s.inflight, 0, "overflowed buffers are still accounted for");
    let report = pool.shutdown(Duration::from_millis(10));
    assert_eq!(report.leaked, 0);
    assert_eq!(
        report.provider_counters.released,
        report.provider_counters.handed_out
    );
}

#[test]
fn a_buffer_from_another_pool_is_handed_back() {
    let mut a = slab_pool(128);
    let mut b = slab_pool(128);
    let buf = a.alloc().unwrap();
    let buf = b.recycle(buf).unwrap_err();
    let buf = b.recycler().recycle(buf).unwrap_err();
    a.recycle(buf).unwrap();
}

#[test]
fn shutdown_waits_for_buffers_then_reports_leaks_by_provider() {
    let mut pool = slab_pool(256);
    let recycler = pool.recycler();
    let late = pool.alloc().unwrap();
    let lost = pool.alloc().unwrap();
    drop(lost); // a consumer that loses a buffer
    let returner = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        recycler.recycle(late).unwrap();
    });
    let report = pool.shutdown(Duration::from_millis(300));
    returner.join().unwrap();
    assert_eq!(
        report.leaked, 1,
        "the forgotten buffer is reported, the late one is not"
    );
    assert!(report.waited >= Duration::from_millis(30));
    assert!(report.provider.contains("slab"));
}

#[test]
fn placed_bytes_land_in_provider_memory() {
    let mut pool = slab_pool(128);
    let mut buf = pool.alloc().unwrap();
    pool.place(&mut buf, 100, b"frame bytes").unwrap();
    assert_eq!(&buf.as_slice().unwrap()[100..111], b"frame bytes");
    let err = pool.place(&mut buf, 2045, b"too long").unwrap_err();
    assert!(
        err.to_string()
            .contains("do not fit a buffer of 2048 bytes"),
        "{err}"
    );
    pool.recycle(buf).unwrap();
}

/// A burst larger than the cache's room goes back in part by copy and in part to the
/// ring, each buffer once.
#[test]
fn a_burst_that_spills_past_the_cache_goes_back_once_each() {
    let mut pool = slab_pool(1024);
    let mut burst = pool.burst(CACHE_SIZE + 8);
    pool.alloc_burst(CACHE_SIZE + 8, &mut burst).unwrap();
    // Room in the cache now: what the provider calls left there.
    let room = CACHE_SIZE - (3 * REFILL - (CACHE_SIZE + 8));
    assert!(room < burst.len(), "the burst spills past the cache");
    let before = pool.stats();
    pool.recycle_burst(&mut burst).unwrap();
    assert!(burst.is_empty());
    let s = pool.stats();
    assert_eq!(s.inflight, 0, "{s:?}");
    assert_eq!(
        s.recycle_cached - before.recycle_cached,
        room as u64,
        "{s:?}"
    );
    assert_eq!(
        (s.recycle_cached - before.recycle_cached)
            + (s.recycle_cache_full - before.recycle_cache_full),
        (CACHE_SIZE + 8) as u64,
        "each of the pool's buffers went back once: {s:?}"
    );
    assert_eq!(pool.shutdown(Duration::from_millis(10)).leaked, 0);
}
