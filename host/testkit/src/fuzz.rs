//! The bodies of the fuzz targets beyond the parser (`fuzz/fuzz_targets/`), here so that
//! the tests run every seed and every input that once found a bug on each build, without
//! a fuzzer.

use memplex::config::Config;
use memplex::pool::{Pool, PoolBuf};
use memplex::provider::{InitParams, ProviderPlugin};
use memplex::route::RouteTable;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// The config loader: no text may panic it, and a config it accepts compiles and holds
/// numbers in range.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, "fuzz.toml", Default::default(), None) else {
        return;
    };
    let names: Vec<String> = config.providers.keys().cloned().collect();
    RouteTable::new(
        &config.routes,
        &names,
        &config.consumers.keys().cloned().collect::<Vec<_>>(),
        &config.device_names(),
    )
    .expect("a validated config's routes compile");
    assert!((1..=64).contains(&config.device.queues));
    assert!(config.runtime.stats_interval.is_finite() && config.runtime.duration.is_finite());
    for p in config.providers.values() {
        assert!(p.buf_size >= 1 && p.pool_size >= 64);
    }
    for r in &config.routes {
        let _ = r.matches.to_string();
    }
}

/// The replay guest (`fuzz/guests/replay.wat`), loaded once.
fn replay_guest() -> &'static ProviderPlugin {
    static PLUGIN: OnceLock<ProviderPlugin> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/guests/replay.wat");
        ProviderPlugin::open(&path).expect("the replay guest loads")
    })
}

/// The WASM boundary: a guest hands out what `data` scripts (descriptor batches, counts,
/// release verdicts), through the host's checks and a pool. No input may panic the host;
/// every buffer handed out reads back what was placed in it; every buffer is returned to
/// the guest or counted stranded.
pub fn wasm_boundary(data: &[u8]) {
    let script: String = data
        .iter()
        .map(|&b| char::from_u32(0x100 + u32::from(b)).expect("a valid char"))
        .collect();
    let params = InitParams::new(0, 32, 64).set("script", &script);
    let Ok(provider) = replay_guest().instantiate(&params) else {
        return;
    };
    let mut pool = Pool::new(provider, 64);
    let mut held: Vec<(PoolBuf, u8)> = Vec::new();
    let mut back = Vec::new();
    for i in 0..300u32 {
        if let Ok(mut b) = pool.alloc() {
            let mark = (i % 251) as u8;
            if pool.place(&mut b, 0, &[mark; 32]).is_ok() {
                held.push((b, mark));
            } else {
                pool.recycle(b).expect("the pool's own buffer");
            }
        }
        if i % 13 == 12 || held.len() > 40 {
            for (b, mark) in held.drain(..) {
                back.clear();
                if pool.read(&b, 32, &mut back) {
                    assert_eq!(back, [mark; 32], "a buffer kept what was placed in it");
                }
                pool.recycle(b).expect("the pool's own buffer");
            }
        }
    }
    for (b, _) in held {
        pool.recycle(b).expect("the pool's own buffer");
    }
    let report = pool.shutdown(Duration::ZERO);
    assert_eq!(report.leaked, 0, "every buffer came back: {report:?}");
    let c = report.provider_counters;
    assert_eq!(c.handed_out, c.released + c.stranded, "{c:?}");
}
