//! `memplex`: inspect, check and exercise memory providers.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use memplex::conformance::{self, CheckOptions, Outcome};
use memplex::demo::{self, DemoOptions};
use memplex::pool::PoolReport;
use memplex::provider::{InitParams, PluginPath, ProviderPlugin};
use std::path::PathBuf;

mod bench;
mod netdemo;
mod run;

#[derive(Parser)]
#[command(
    name = "memplex",
    version,
    about = "Userspace header-split with pluggable memory providers"
)]
struct Cli {
    /// Extra directories to search for plugins, before MEMPLEX_PLUGIN_PATH.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the providers on the plugin path, or inspect one.
    Providers {
        #[command(subcommand)]
        inspect: Option<ProvidersCmd>,
    },
    /// Run the conformance suite on a provider; exits non-zero if any check fails.
    CheckProvider {
        /// A name on the plugin path, a path to a .so, or builtin:NAME.
        plugin: String,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Run a config: receive frames, split, place them in providers, report.
    Run {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Stop after this many seconds (overrides runtime.duration).
        #[arg(long)]
        duration: Option<f64>,
        /// Print stats as JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
    /// Write a deterministic traffic mix to a pcap file (for `kind = "pcap"` configs).
    GenPcap {
        /// The file to write.
        #[arg(long, short)]
        out: PathBuf,
        /// The mix: default, nvme, tunnel, malformed.
        #[arg(long, default_value = "default")]
        mix: String,
        /// How many frames.
        #[arg(long, default_value_t = 1000)]
        frames: usize,
    },
    /// Compare configs or providers on the same traffic: interleaved rounds, medians,
    /// ratios against a baseline and a bare read loop; a table, Markdown, JSON, SVG.
    Bench(bench::BenchArgs),
    /// Work with config files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Run configs/default.toml on real traffic in a network namespace the demo makes
    /// (needs root; without it, on a replayed capture).
    Demo {
        /// A config to run instead of the built-in configs/default.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long to send traffic.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Instead: compare memplex against a bare TAP read loop, N alternating pairs of
        /// rounds on the same traffic (root only).
        #[arg(long, value_name = "N")]
        compare: Option<usize>,
        /// With --compare: `tap` (the mix, GSO on) or `af_packet` (a UDP flood on a veth).
        #[arg(long, default_value = "tap")]
        device: String,
        /// With --compare --device af_packet: the flood's frame size in bytes.
        #[arg(long, default_value_t = 64)]
        frame_size: usize,
        /// Instead: push synthetic frames through each provider's pools, no device.
        #[arg(long)]
        synthetic: bool,
        /// Frames per provider, with --synthetic.
        #[arg(long, default_value_t = 400_000)]
        frames: u64,
        /// Providers to compare, with --synthetic (default: heap, slab, hugepage).
        #[arg(long = "provider", value_name = "PLUGIN")]
        providers: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config and load its providers, without running it.
    Check {
        /// The TOML config.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProvidersCmd {
    /// Load one provider, make an instance and show everything it reports.
    Inspect {
        /// A name on the plugin path, a path to a .so, or builtin:NAME.
        plugin: String,
        #[command(flatten)]
        params: ParamArgs,
    },
}

#[derive(Args)]
struct ParamArgs {
    /// Buffer size to ask for.
    #[arg(long, default_value_t = 2048)]
    buf_size: u32,
    /// Pool size to pass in the init params.
    #[arg(long, default_value_t = 256)]
    pool_size: u32,
    /// A provider setting, KEY=VALUE; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    settings: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMPLEX_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn plugin_path(extra: &[PathBuf]) -> PluginPath {
    let env = PluginPath::from_env();
    if extra.is_empty() {
        return env;
    }
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    dirs.extend(env.dirs().map(PathBuf::from));
    PluginPath::with_dirs(dirs)
}

fn run(cli: Cli) -> Result<i32> {
    let path = plugin_path(&cli.plugin_dirs);
    match cli.command {
        Command::Providers { inspect: None } => list(&path),
        Command::Providers {
            inspect: Some(ProvidersCmd::Inspect { plugin, params }),
        } => inspect(&path, &plugin, &params),
        Command::CheckProvider { plugin, params } => check(&path, &plugin, &params),
        Command::Demo {
            synthetic: true,
            frames,
            providers,
            ..
        } => run_demo(&path, frames, providers),
        Command::Demo {
            compare: Some(pairs),
            config,
            seconds,
            device,
            frame_size,
            ..
        } => netdemo::compare(&path, config, seconds, pairs.max(1), &device, frame_size),
        Command::Demo {
            config,
            seconds,
            json,
            ..
        } => netdemo::run(&path, config, seconds, json),
        Command::GenPcap { out, mix, frames } => {
            let Some(f) = memplex::traffic::mix(&mix, frames) else {
                bail!("unknown mix `{mix}`; known: {}", memplex::traffic::MIXES);
            };
            memplex::traffic::write_pcap(&out, &f)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} frames of the `{mix}` mix to {}",
                f.len(),
                out.display()
            );
            Ok(0)
        }
        Command::Run {
            config,
            duration,
            json,
        } => run::run(&path, &config, duration, json),
        Command::Config {
            cmd: ConfigCmd::Check { file },
        } => run::check(&path, &file),
        Command::Bench(args) => bench::bench(&path, &args),
    }
}

/// A table for the terminal: wrapped to the terminal's width when it reports a usable
/// one, else (a pipe, a pty with no size) at the content's natural width.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    if t.width().is_some_and(|w| w >= 60) {
        t.set_content_arrangement(ContentArrangement::Dynamic);
    }
    t
}

fn list(path: &PluginPath) -> Result<i32> {
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
        ["heap", "slab", "hugepage"].map(|n| ProviderPlugin::builtin(n).expect("built-in"));
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
                match p.instantiate(&InitParams::new(0, 2048, 256)) {
                    Ok(inst) => {
                        let i = inst.info();
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

fn inspect(path: &PluginPath, spec: &str, args: &ParamArgs) -> Result<i32> {
    let plugin = ProviderPlugin::load(spec, path)?;
    let d = plugin.description();
    let inst = plugin
        .instantiate(&params_of(args))
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
        ("abi", memplex_abi::ABI_VERSION.to_string()),
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
            if regions.is_empty() {
                "(none declared)".into()
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

fn check(path: &PluginPath, spec: &str, args: &ParamArgs) -> Result<i32> {
    let plugin = ProviderPlugin::load(spec, path)?;
    let opts = CheckOptions {
        buf_size: args.buf_size,
        pool_size: args.pool_size,
        settings: args.settings.clone(),
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
    println!("check-provider {}\n{t}", report.plugin);
    let failed = report
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .count();
    let warned = report
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Warn)
        .count();
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

fn run_demo(path: &PluginPath, frames: u64, providers: Vec<String>) -> Result<i32> {
    if frames == 0 {
        bail!("--frames must be at least 1");
    }
    let providers = if providers.is_empty() {
        vec!["heap".into(), "slab".into(), "hugepage".into()]
    } else {
        providers
    };
    let opts = DemoOptions {
        frames,
        ..Default::default()
    };
    println!(
        "memplex demo --synthetic: {frames} frames of the default mix (TCP, VLAN, UDP, IPv6, ICMP; 60-1514 B) per provider, split after the L4 header;\n\
         heads in {} B buffers, payload in {} B frags, placed by one thread, verified and recycled by another.\n",
        opts.head_size, opts.frag_size
    );
    let mut results = Vec::new();
    for (i, spec) in providers.iter().enumerate() {
        let plugin = ProviderPlugin::load(spec, path)
            .with_context(|| format!("loading provider `{spec}`"))?;
        eprintln!("[{}/{}] {} ...", i + 1, providers.len(), plugin.label());
        let r =
            demo::run(&plugin, &opts).with_context(|| format!("running the demo on `{spec}`"))?;
        results.push(r);
    }
    let mut t = table(&[
        "provider",
        "frames",
        "Mpps",
        "Gbit/s",
        "split",
        "frag bufs",
        "verified",
        "waits",
        "leaked",
    ]);
    for r in &results {
        t.add_row(vec![
            Cell::new(&r.provider),
            Cell::new(r.frames),
            Cell::new(format!("{:.2}", r.mpps())),
            Cell::new(format!("{:.2}", r.gbps())),
            Cell::new(r.split),
            Cell::new(r.frag_bufs),
            Cell::new(if r.mismatches == 0 {
                "all".to_string()
            } else {
                format!("{} BAD", r.mismatches)
            })
            .fg(if r.mismatches == 0 {
                Color::Green
            } else {
                Color::Red
            }),
            Cell::new(r.waits),
            Cell::new(r.head.leaked + r.frags.leaked),
        ]);
    }
    println!("{t}\n");
    let mut p = table(&[
        "pool",
        "alloc_fast",
        "alloc_refill",
        "alloc_slow",
        "alloc_empty",
        "recycle_ring",
        "ring_full",
        "released",
        "hit rate",
        "provider calls",
    ]);
    let row = |p: &mut Table, what: &str, rep: &PoolReport| {
        let s = rep.stats;
        let c = rep.provider_counters;
        p.add_row(vec![
            format!("{} {what}", rep.provider),
            s.alloc_fast.to_string(),
            s.alloc_refill.to_string(),
            s.alloc_slow.to_string(),
            s.alloc_empty.to_string(),
            s.recycle_ring.to_string(),
            s.recycle_ring_full.to_string(),
            s.recycle_released.to_string(),
            format!("{:.2}%", s.hit_rate() * 100.0),
            (c.alloc_calls + c.release_calls).to_string(),
        ]);
    };
    for r in &results {
        row(&mut p, "head", &r.head);
        row(&mut p, "frags", &r.frags);
    }
    println!("{p}");
    let bad = results
        .iter()
        .any(|r| r.mismatches > 0 || r.head.leaked + r.frags.leaked > 0);
    if bad {
        println!("FAILED: some frames did not reassemble or some buffers did not come back");
        return Ok(1);
    }
    println!("every frame reassembled byte for byte; every buffer returned to its provider.");
    Ok(0)
}
