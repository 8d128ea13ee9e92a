//! `memplex providers`, `providers inspect` and `check-provider`.

use crate::{table, ParamArgs};
use anyhow::{Context, Result};
use comfy_table::{Cell, Color};
use memplex::conformance::{self, CheckOptions, Outcome};
use memplex::provider::wasm::WasmLimits;
use memplex::provider::{InitParams, PluginPath, ProviderPlugin, Trust};

pub fn list(path: &PluginPath) -> Result<i32> {
    let mut t = table(&[
        "provider",
        "version",
        "buf",
        "align",
        "capacity",
        "caps",
        "file / status",
    ]);
    let mut rows = 0;
    let builtins =
        ["heap", "slab", "hugepage", "shm"].map(|n| ProviderPlugin::builtin(n).expect("built-in"));
    let files = path.list();
    let loaded = files
        .iter()
        .map(|f| (f.display().to_string(), ProviderPlugin::open(f)));
    for (origin, plugin) in builtins
        .into_iter()
        .map(|p| ("built-in".to_string(), Ok(p)))
        .chain(loaded)
    {
        rows += 1;
        match plugin {
            Ok(p) => {
                let d = p.description().clone();
                let name = if origin == "built-in" {
                    format!("builtin:{}", d.name)
                } else {
                    d.name.to_string()
                };
                match p.instantiate_trusting(&InitParams::new(0, 2048, 256), Trust::Unverified) {
                    Ok(inst) => {
                        let i = inst.info();
                        let origin = if inst.is_unverified() {
                            format!("{origin}\nunverified: declares no memory region (a config must say `unverified = true`)")
                        } else {
                            origin
                        };
                        t.add_row(vec![
                            name,
                            d.version.to_string(),
                            i.buf_size.to_string(),
                            i.align.to_string(),
                            i.capacity.to_string(),
                            i.caps.to_string(),
                            origin,
                        ]);
                    }
                    Err(e) => {
                        t.add_row(vec![
                            Cell::new(name),
                            Cell::new(d.version),
                            Cell::new(""),
                            Cell::new(""),
                            Cell::new(""),
                            Cell::new(""),
                            Cell::new(format!("{origin}\ninit failed: {e}")).fg(Color::Red),
                        ]);
                    }
                }
            }
            Err(e) => {
                t.add_row(vec![
                    Cell::new("?"),
                    Cell::new(""),
                    Cell::new(""),
                    Cell::new(""),
                    Cell::new(""),
                    Cell::new(""),
                    Cell::new(e.to_string()).fg(Color::Red),
                ]);
            }
        }
    }
    println!("{t}");
    let dirs: Vec<String> = path.dirs().map(|d| d.display().to_string()).collect();
    println!("{rows} providers; plugin path: {}", dirs.join(":"));
    Ok(0)
}

fn params_of(args: &ParamArgs) -> InitParams {
    args.settings.iter().fold(
        InitParams::new(0, args.buf_size, args.pool_size),
        |p, (k, v)| p.set(k, v),
    )
}

pub fn inspect(path: &PluginPath, spec: &str, args: &ParamArgs) -> Result<i32> {
    let plugin = ProviderPlugin::load(spec, path)?;
    let d = plugin.description();
    let inst = plugin
        .instantiate_trusting(&params_of(args), Trust::Unverified)
        .with_context(|| format!("starting provider `{spec}`"))?;
    let i = inst.info();
    let mut t = table(&["field", "value"]);
    let regions: Vec<String> = i
        .regions
        .iter()
        .map(|r| format!("{:#x}+{}", r.base, r.len))
        .collect();
    for (k, v) in [
        ("name", d.name.to_string()),
        ("version", d.version.to_string()),
        ("summary", d.summary.to_string()),
        ("origin", plugin.origin().to_string()),
        (
            "abi",
            match plugin.abi_revision() {
                Some(r) => format!("{r} (host speaks {})", memplex_abi::ABI_VERSION),
                None => format!("{} (linked in or sandboxed)", memplex_abi::ABI_VERSION),
            },
        ),
        (
            "exportable",
            match inst.not_exportable() {
                None => {
                    "yes: every region can be shared by a file descriptor that cannot shrink".into()
                }
                Some(why) => format!("no: {why}"),
            },
        ),
        (
            "buf_size",
            format!("{} (asked {})", i.buf_size, args.buf_size),
        ),
        ("align", i.align.to_string()),
        ("capacity", i.capacity.to_string()),
        ("caps", i.caps.to_string()),
        ("backing", i.backing.to_string()),
        (
            "regions",
            if inst.is_unverified() {
                "(none declared): unverified, its buffer addresses cannot be checked; a config must say `unverified = true` to use it".into()
            } else if regions.is_empty() {
                "(none declared; not touched by address)".into()
            } else {
                regions.join(", ")
            },
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    for s in inst.provider_stats() {
        t.add_row(vec![format!("stat {}", s.name), s.value.to_string()]);
    }
    println!("{t}");
    Ok(0)
}

/// The cost budget and sandbox limits of `check-provider`.
#[derive(clap::Args)]
pub struct Budget {
    /// Fail when a buffer's alloc+release costs more than this many times the built-in
    /// slab's, timed in the same run.
    #[arg(long, default_value_t = 20.0, value_parser = positive)]
    max_cost_ratio: f64,
    /// Fail when a buffer's alloc+release costs more than this many nanoseconds.
    #[arg(long, value_parser = positive)]
    max_ns_per_buffer: Option<f64>,
    /// WASM providers: the most linear memory an instance may use, in MiB.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_memory_mib: Option<u32>,
    /// WASM providers: the longest one guest call may run, in ms.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    call_deadline_ms: Option<u64>,
    /// Certify a provider that declares no memory region as unverified (a warning)
    /// instead of failing it.
    #[arg(long)]
    unverified: bool,
}

/// A finite number above 0.
fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number above 0")),
    }
}

pub fn check(path: &PluginPath, spec: &str, args: &ParamArgs, budget: &Budget) -> Result<i32> {
    let mut plugin = ProviderPlugin::load(spec, path)?;
    let mut limits = String::from("native: no sandbox limits");
    if plugin.is_wasm() {
        let d = WasmLimits::default();
        let l = WasmLimits {
            memory: budget
                .max_memory_mib
                .map_or(d.memory, |m| m as usize * (1 << 20)),
            deadline: budget
                .call_deadline_ms
                .map_or(d.deadline, std::time::Duration::from_millis),
            ..d
        };
        limits = format!(
            "WASM limits: {} MiB of memory, {} ms per call",
            l.memory >> 20,
            l.deadline.as_millis()
        );
        plugin = plugin.with_wasm_limits(l);
    }
    let opts = CheckOptions {
        buf_size: args.buf_size,
        pool_size: args.pool_size,
        settings: args.settings.clone(),
        max_cost_ratio: budget.max_cost_ratio,
        max_ns_per_buffer: budget.max_ns_per_buffer,
        unverified: budget.unverified,
        ..Default::default()
    };
    let report = conformance::run(&plugin, &opts);
    let mut t = table(&["check", "result", "detail"]);
    for r in &report.results {
        let (label, color) = match r.outcome {
            Outcome::Pass => ("PASS", Color::Green),
            Outcome::Warn => ("WARN", Color::Yellow),
            Outcome::Fail => ("FAIL", Color::Red),
        };
        t.add_row(vec![
            Cell::new(r.name),
            Cell::new(label).fg(color),
            Cell::new(&r.detail),
        ]);
    }
    println!("check-provider {}\n{t}\n", report.plugin);
    println!("{}\n", report.certificate(&opts, &limits));
    let (failed, warned) = (report.count(Outcome::Fail), report.count(Outcome::Warn));
    if failed > 0 {
        println!("{failed} failed, {warned} warned: `{spec}` does not keep the provider contract");
        return Ok(1);
    }
    println!(
        "all {} checks passed ({warned} warnings)",
        report.results.len()
    );
    Ok(0)
}
