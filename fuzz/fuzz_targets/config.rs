//! Fuzzes the config loader: no text may panic it, and a config it accepts is one the
//! engine can compile (its routes name defined providers, its numbers are in range).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memplex::config::Config;
use memplex::route::RouteTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_toml(text, "fuzz.toml", Default::default(), None) else {
        return;
    };
    let names: Vec<String> = config.providers.keys().cloned().collect();
    RouteTable::new(&config.routes, &names).expect("a validated config's routes compile");
    assert!(config.device.queues >= 1 && config.device.queues <= 64);
    assert!(config.runtime.stats_interval.is_finite() && config.runtime.duration.is_finite());
    for p in config.providers.values() {
        assert!(p.buf_size >= 1 && p.pool_size >= 64);
    }
    // Shown back to the user: must not panic either.
    for r in &config.routes {
        let _ = r.matches.to_string();
    }
});
