//! `memplex`: run configs, inspect and check providers, benchmark them, demo it all.
//!
//! The command-line program over the `memplex` library. Its terminal, plotting and HTTP
//! dependencies are its own, not the library's.
//!
//! - `providers.rs`: `providers`, `providers inspect`, `check-provider`;
//! - `run.rs`: `run` and `config check` (live stats, the final report);
//! - `metrics.rs`: the Prometheus endpoint (axum + prometheus-client);
//! - `demo.rs`: `demo` on a network it makes, without privileges on a capture, and
//!   `demo --synthetic`; `compare.rs`: `demo --compare`;
//! - `bench/`: `memplex bench` (variants, measurement, reports); `bare.rs`: the bare
//!   read loop both comparisons measure against;
//! - `signal.rs`: Ctrl-C and SIGTERM end runs cleanly.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use memplex::provider::PluginPath;
use memplex_testkit::traffic;
use std::path::PathBuf;

mod bare;
mod bench;
mod compare;
mod consume;
mod demo;
mod metrics;
mod providers;
mod run;
mod signal;

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
    /// Run the conformance suite on a provider, cost included, and print a certificate;
    /// exits non-zero if any check fails.
    CheckProvider {
        /// A name on the plugin path, a path to a .so or .wasm, or builtin:NAME.
        plugin: String,
        #[command(flatten)]
        params: ParamArgs,
        #[command(flatten)]
        budget: providers::Budget,
    },
    /// Run a config: receive frames, split, place them in providers, report.
    Run {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Stop after this many seconds (overrides runtime.duration).
        #[arg(long, value_parser = seconds_or_zero, allow_negative_numbers = true)]
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
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        frames: u32,
    },
    /// Compare configs or providers on the same traffic: interleaved rounds, medians,
    /// ratios against a baseline and a bare read loop; a table, Markdown, JSON, SVG.
    Bench(bench::BenchArgs),
    /// Receive frames from a running memplex in this process, without a copy: count,
    /// verify or write them (the reference consumer; see `[consumers.NAME]`).
    Consume(consume::ConsumeArgs),
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
        #[arg(long, default_value_t = 3.0, value_parser = seconds, allow_negative_numbers = true)]
        seconds: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Instead: compare memplex against a bare TAP read loop, N alternating pairs of
        /// rounds on the same traffic (root only).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        compare: Option<u32>,
        /// With --compare: `tap` (the mix, GSO on) or `af_packet` (a UDP flood on a veth).
        /// With --forward: `tap` (a TAP per host) or `af_packet` (veths, read and written
        /// with AF_PACKET in a third namespace).
        #[arg(long, default_value = "tap")]
        device: String,
        /// With --compare --device af_packet: the flood's frame size in bytes.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(60..=9000))]
        frame_size: u32,
        /// Instead: push synthetic frames through each provider's pools, no device.
        #[arg(long)]
        synthetic: bool,
        /// Instead: put memplex between two namespaces as a bump in the wire (a TAP
        /// each, configs/forward.toml) and run pings and iperf3 through it (root only).
        #[arg(long)]
        forward: bool,
        /// With --forward: no GSO anywhere (TAPs without vnet headers' offloads; with
        /// af_packet, the hosts' veths send finished frames and memplex's sockets take no
        /// vnet headers).
        #[arg(long, requires = "forward")]
        no_gso: bool,
        /// With --forward: a consumer process per direction decides each frame
        /// (configs/middlebox.toml): `memplex consume --forward` sends it on through its
        /// transmit ring, from the buffers it was placed in.
        #[arg(long, requires = "forward")]
        middlebox: bool,
        /// Frames per provider, with --synthetic.
        #[arg(long, default_value_t = 400_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
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
pub(crate) struct ParamArgs {
    /// Buffer size to ask for.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub buf_size: u32,
    /// Pool size to pass in the init params.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=1 << 20))]
    pub pool_size: u32,
    /// A provider setting, KEY=VALUE; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub settings: Vec<(String, String)>,
}

/// A number of seconds for `--seconds`: finite, above 0, at most a year.
pub(crate) fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    match memplex::config::check_seconds(v, false, 0.001, memplex::config::MAX_DURATION) {
        None => Ok(v),
        Some(problem) => Err(format!("{problem}; 0.001 to 31536000 seconds (a year)")),
    }
}

/// As [`seconds`], where 0 means "until Ctrl-C".
pub(crate) fn seconds_or_zero(s: &str) -> Result<f64, String> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    seconds(s)
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
        // Colour codes only where a terminal shows them, not in logs and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Providers { inspect: None } => providers::list(&path),
        Command::Providers {
            inspect: Some(ProvidersCmd::Inspect { plugin, params }),
        } => providers::inspect(&path, &plugin, &params),
        Command::CheckProvider {
            plugin,
            params,
            budget,
        } => providers::check(&path, &plugin, &params, &budget),
        Command::Demo {
            synthetic: true,
            frames,
            providers,
            ..
        } => demo::synthetic(&path, frames, providers),
        Command::Demo {
            compare: Some(pairs),
            config,
            seconds,
            device,
            frame_size,
            ..
        } => compare::compare(
            &path,
            config,
            seconds,
            pairs as usize,
            &device,
            frame_size as usize,
        ),
        Command::Demo {
            forward: true,
            config,
            seconds,
            json,
            device,
            no_gso,
            middlebox,
            ..
        } => demo::forward(&path, config, seconds, json, &device, !no_gso, middlebox),
        Command::Demo {
            config,
            seconds,
            json,
            ..
        } => demo::run(&path, config, seconds, json),
        Command::GenPcap { out, mix, frames } => {
            let Some(f) = traffic::mix(&mix, frames as usize) else {
                bail!("unknown mix `{mix}`; known: {}", traffic::MIXES);
            };
            traffic::write_pcap(&out, &f).with_context(|| format!("writing {}", out.display()))?;
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
        Command::Consume(args) => consume::consume(&args),
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
