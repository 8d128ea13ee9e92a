//! `memplex run` and `memplex config check`.

use anyhow::{Context, Result};
use comfy_table::{Cell, Color};
use memplex::config::Config;
use memplex::provider::PluginPath;
use memplex::runtime::{Engine, RunControl, RunReport};
use memplex::stats::{self, DropReason, QueueStats};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::table;

/// `memplex config check FILE`.
pub fn check(path: &PluginPath, file: &Path) -> Result<i32> {
    let config = Config::load(file)?;
    let engine = Engine::new(config, path)?;
    engine.check()?;
    let c = engine.config();
    println!(
        "{}: ok\ndevice: {:?} {} ({} queue{})\nsplit: {:?}, hds_threshold {}",
        file.display(),
        c.device.kind,
        c.device
            .interface
            .clone()
            .or_else(|| c.device.path.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_default(),
        c.device.queues,
        if c.device.queues == 1 { "" } else { "s" },
        c.split.mode,
        c.split.hds_threshold,
    );
    for (name, d) in &c.devices {
        println!(
            "device {name}: {:?} {} ({} queue{})",
            d.kind,
            d.interface
                .clone()
                .or_else(|| d.path.as_ref().map(|p| p.display().to_string()))
                .unwrap_or_default(),
            d.queues,
            if d.queues == 1 { "" } else { "s" },
        );
    }
    let mut t = table(&[
        "provider",
        "plugin",
        "from",
        "buf_size",
        "pool_size",
        "fallback",
    ]);
    for ((name, plugin), p) in engine.plugins().zip(c.providers.values()) {
        t.add_row(vec![
            name.to_string(),
            p.plugin.clone(),
            plugin.origin().to_string(),
            p.buf_size.to_string(),
            p.pool_size.to_string(),
            p.fallback.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
    let mut r = table(&["route", "match", "head", "frags", "frags_rest", "to"]);
    for (i, route) in c.routes.iter().enumerate() {
        r.add_row(vec![
            i.to_string(),
            route.matches.to_string(),
            route.head.clone(),
            route.frags.clone(),
            route
                .frags_rest
                .clone()
                .unwrap_or_else(|| route.frags.clone()),
            match (&route.deliver, &route.forward) {
                (_, Some(f)) if f == "in" => "out of the device it came in on".to_string(),
                (_, Some(f)) => format!("out of device {f}"),
                (Some(d), None) if route.copy => format!("consumer {d} (copies)"),
                (Some(d), None) => match c.consumers.get(d).and_then(|k| k.transmit.as_ref()) {
                    Some(t) if t == "in" => {
                        format!("consumer {d}; its verdicts out of the device it came in on")
                    }
                    Some(t) => format!("consumer {d}; its verdicts out of device {t}"),
                    None => format!("consumer {d}"),
                },
                (None, None) => format!("sink ({})", config_name(&c.runtime.sink)),
            },
        ]);
    }
    println!("{r}");
    if !c.consumers.is_empty() {
        let mut t = table(&[
            "consumer", "socket", "ring", "quota", "wake", "policy", "checksum",
        ]);
        for (name, k) in &c.consumers {
            t.add_row(vec![
                name.clone(),
                k.socket.display().to_string(),
                match k.transmit_ring() {
                    0 => format!("{} / refill {}", k.ring_entries, k.refill()),
                    t => format!("{} / refill {} / transmit {t}", k.ring_entries, k.refill()),
                },
                format!("{} x {} sessions", k.quota(), k.max_sessions),
                config_name(&k.wake),
                config_name(&k.policy),
                k.checksum.to_string(),
            ]);
        }
        println!("{t}");
    }
    if c.routes.last().is_some_and(|r| !r.matches.is_catch_all()) {
        println!("note: the last route matches only some frames; frames no route matches are dropped and counted as no_route");
    }
    Ok(0)
}

/// `memplex run`.
pub fn run(path: &PluginPath, file: &Path, duration: Option<f64>, json: bool) -> Result<i32> {
    let config = Config::load(file)?;
    let duration = duration.unwrap_or(config.runtime.duration);
    let interval = config.runtime.stats_interval;
    let metrics = config.runtime.metrics;
    let allow_fault_drops = config.runtime.allow_fault_drops;
    let engine = Engine::new(config, path)?;
    let queues = engine.open_device()?;
    let control = RunControl::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let pretty = !json && std::io::stdout().is_terminal();
    let report = rt.block_on(async {
        tokio::spawn(crate::signal::stop_on_signal(control.stop.clone()));
        if duration > 0.0 {
            let stop = control.stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(duration)).await;
                stop.store(true, Relaxed);
            });
        }
        if let Some(addr) = metrics {
            crate::metrics::serve(addr, control.live.clone()).await?;
        }
        if interval > 0.0 {
            let live = control.live.clone();
            let stop = control.stop.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs_f64(interval));
                tick.tick().await;
                let mut last = (0u64, Instant::now());
                loop {
                    tick.tick().await;
                    if stop.load(Relaxed) {
                        break;
                    }
                    let snapshot = live.lock().map(|l| l.clone()).unwrap_or_default();
                    let total = stats::total(&snapshot);
                    let rate = (total.received.frames - last.0) as f64 / last.1.elapsed().as_secs_f64();
                    last = (total.received.frames, Instant::now());
                    if pretty {
                        print!("\x1b[2J\x1b[H{}", live_table(&snapshot, rate, start.elapsed()));
                    } else {
                        let line = serde_json::json!({ "elapsed": start.elapsed().as_secs_f64(), "pps": rate, "total": total, "queues": snapshot });
                        println!("{line}");
                    }
                    let _ = std::io::stdout().flush();
                }
            });
        }
        let control = control.clone();
        tokio::task::spawn_blocking(move || engine.run(queues, &control)).await.context("the run was cancelled")?.map_err(anyhow::Error::from)
    });
    control.stop.store(true, Relaxed);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // A queue failed: what every queue did up to then, then why.
            if let Some(memplex::runtime::RunError::Failed { report, .. }) =
                e.downcast_ref::<memplex::runtime::RunError>()
            {
                print_report(report, json);
                let leaked = report.leaked();
                eprintln!(
                    "memplex run: stopped early; {leaked} buffers leaked (every queue's buffers are accounted above)"
                );
            }
            return Err(e);
        }
    };
    print_report(&report, json);
    Ok(verdict(&report, allow_fault_drops))
}

/// The exit code of a finished run: 1, saying why, when buffers leaked, frames did not
/// reassemble, or frames were dropped because a provider faulted (unless
/// `runtime.allow_fault_drops`); else 0.
pub fn verdict(report: &RunReport, allow_fault_drops: bool) -> i32 {
    let total = report.total();
    let fault_drops = total.dropped.get(DropReason::Fault);
    let mut why = Vec::new();
    if report.leaked() > 0 {
        why.push(format!("{} buffers leaked", report.leaked()));
    }
    if total.sink.mismatched > 0 {
        why.push(format!(
            "{} frames did not reassemble",
            total.sink.mismatched
        ));
    }
    if fault_drops > 0 && !allow_fault_drops {
        let faulted: Vec<String> = total
            .providers
            .iter()
            .filter_map(|p| p.fault.as_ref().map(|f| format!("`{}`: {f}", p.name)))
            .collect();
        why.push(format!(
            "{fault_drops} frames dropped because a provider faulted ({}); give it a `fallback`, \
             or set runtime.allow_fault_drops = true to accept such drops",
            if faulted.is_empty() {
                "a fill failed".to_string()
            } else {
                faulted.join("; ")
            }
        ));
    }
    if why.is_empty() {
        return 0;
    }
    eprintln!("FAILED: {}", why.join("; "));
    1
}

fn live_table(queues: &[QueueStats], pps: f64, elapsed: Duration) -> String {
    let mut t = table(&[
        "queue", "frames", "MB", "split", "unsplit", "dropped", "verified",
    ]);
    for q in queues.iter().chain(std::iter::once(&stats::total(queues))) {
        t.add_row(vec![
            q.queue.clone(),
            q.received.frames.to_string(),
            format!("{:.1}", q.received.bytes as f64 / 1e6),
            q.split.sum().to_string(),
            q.unsplit.sum().to_string(),
            q.dropped.sum().to_string(),
            q.sink.verified.to_string(),
        ]);
    }
    format!(
        "memplex run: {:.1} s, {:.0} frames/s (Ctrl-C stops)\n{t}\n",
        elapsed.as_secs_f64(),
        pps
    )
}

pub fn print_report(r: &RunReport, json: bool) {
    let t = r.total();
    if json {
        let pools: Vec<_> = r
            .pools
            .iter()
            .flatten()
            .map(|p| serde_json::json!({ "provider": &*p.provider, "leaked": p.leaked, "fault": p.fault.as_ref().map(ToString::to_string) }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "final": true, "elapsed": r.elapsed.as_secs_f64(), "total": t, "queues": r.queues, "pools": pools })
        );
        return;
    }
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    println!(
        "\nreceived {} frames, {:.2} MB in {}: {:.3} Mpps, {:.3} Gbit/s",
        t.received.frames,
        t.received.bytes as f64 / 1e6,
        if secs < 1.0 {
            format!("{:.1} ms", secs * 1e3)
        } else {
            format!("{secs:.2} s")
        },
        t.received.frames as f64 / secs / 1e6,
        t.received.bytes as f64 * 8.0 / secs / 1e9
    );
    fn fmt<K: memplex::stats::Reason>(t: &memplex::stats::Tally<K>) -> String {
        let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(", ")
        }
    }
    println!(
        "split: {}\nunsplit: {}\ndropped: {}",
        fmt(&t.split),
        fmt(&t.unsplit),
        fmt(&t.dropped)
    );
    if let Some(ns) = t.profile.per_frame() {
        let stages: Vec<String> = memplex::stats::Stage::ALL
            .iter()
            .zip(ns)
            .map(|(s, n)| format!("{} {n:.1}", s.name()))
            .collect();
        println!(
            "stages, ns per frame ({} frames timed, on every queue): {}",
            t.profile.frames,
            stages.join(", ")
        );
    }
    if t.read_ahead.probes > 0 {
        println!(
            "read-ahead (a replay past L2): chosen by {} of {} probes of whether it pays here",
            t.read_ahead.chose_ahead, t.read_ahead.probes
        );
    }
    if t.forwarded.frames > 0 {
        println!(
            "forwarded: {} frames, {:.2} MB",
            t.forwarded.frames,
            t.forwarded.bytes as f64 / 1e6
        );
    }
    if t.sink != Default::default() {
        println!(
            "sink: verified {}, mismatched {}, unreadable {}, written {}, checksummed {} (digest {:#010x})",
            t.sink.verified,
            t.sink.mismatched,
            t.sink.unreadable,
            t.sink.written,
            t.sink.checksummed,
            t.sink.digest
        );
    }
    let mut routes = table(&["route", "frames", "bytes"]);
    for (i, rt) in t.routes.iter().enumerate() {
        routes.add_row(vec![
            i.to_string(),
            rt.frames.to_string(),
            rt.bytes.to_string(),
        ]);
    }
    println!("{routes}");
    let mut p = table(&[
        "provider",
        "buffers",
        "bytes",
        "alloc_fast",
        "alloc_slow",
        "recycle_cached",
        "hit rate",
        "leaked",
        "fault",
    ]);
    for (i, ps) in t.providers.iter().enumerate() {
        let leaked: u64 = r
            .pools
            .iter()
            .filter_map(|q| q.get(i))
            .map(|p| p.leaked)
            .sum();
        p.add_row(vec![
            if ps.unverified {
                Cell::new(format!("{} (unverified)", ps.name)).fg(Color::Yellow)
            } else {
                Cell::new(&ps.name)
            },
            Cell::new(ps.placed.frames),
            Cell::new(ps.placed.bytes),
            Cell::new(ps.pool.alloc_fast),
            Cell::new(ps.pool.alloc_slow),
            Cell::new(ps.pool.recycle_cached),
            Cell::new(format!("{:.2}%", ps.pool.hit_rate() * 100.0)),
            Cell::new(leaked).fg(if leaked == 0 {
                Color::Green
            } else {
                Color::Red
            }),
            Cell::new(ps.fault.clone().unwrap_or_else(|| "-".into())),
        ]);
    }
    println!("{p}");
    if !t.consumers.is_empty() {
        let mut c = table(&[
            "consumer",
            "frames",
            "bytes",
            "copied",
            "returned",
            "sent on",
            "reclaimed",
            "gone",
            "ring full",
            "wake-ups",
            "sessions",
            "disconnects",
        ]);
        for cs in &t.consumers {
            let n = &cs.counters;
            c.add_row(vec![
                Cell::new(&cs.name),
                Cell::new(n.frames),
                Cell::new(n.bytes),
                Cell::new(n.copied),
                Cell::new(n.returned),
                Cell::new(if n.tx_refused > 0 {
                    format!("{} ({} refused)", n.transmitted, n.tx_refused)
                } else {
                    n.transmitted.to_string()
                }),
                Cell::new(n.reclaimed),
                Cell::new(n.gone),
                Cell::new(n.ring_full),
                Cell::new(n.wakeups),
                Cell::new(n.sessions_started),
                Cell::new(fmt(&cs.disconnects)),
            ]);
        }
        println!("{c}");
    }
}

/// A config value as the config file spells it (`busy_poll`, not `BusyPoll`).
fn config_name<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}
