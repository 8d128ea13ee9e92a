//! The engine: a config made ready to run (providers loaded, routes compiled), which
//! runs a device's queues on one worker thread each.

use super::sink::{ChannelSink, ChecksumSink, CountSink, PcapOut, PcapSink, Sink, VerifySink};
use super::worker::{run_queue, Worker};
use super::{FrameStream, RunControl, RunError, RunReport, StreamRun};
use crate::config::{Config, SinkKind};
use crate::device::{self, RxQueue};
use crate::pool::{Pool, PoolReport};
use crate::provider::{InitParams, PluginPath, ProviderPlugin, Trust};
use crate::route::RouteTable;
use crate::stats::QueueStats;
use crate::wire::Splitter;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A config made ready to run: plugins loaded, routes compiled.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    plugins: Vec<ProviderPlugin>,
    names: Arc<[String]>,
    fallback: Arc<[Option<usize>]>,
    routes: RouteTable,
}

impl Engine {
    /// Loads every provider the config names.
    pub fn new(config: Config, path: &PluginPath) -> Result<Self, RunError> {
        let names: Vec<String> = config.providers.keys().cloned().collect();
        let index: BTreeMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let plugins = config
            .providers
            .iter()
            .map(|(name, p)| {
                let plugin =
                    ProviderPlugin::load(&p.plugin, path).map_err(|source| RunError::Provider {
                        name: name.clone(),
                        cause: source,
                    })?;
                let defaults = crate::provider::wasm::WasmLimits::default();
                Ok::<_, RunError>(
                    plugin
                        .with_wasm_limits(crate::provider::wasm::WasmLimits {
                            memory: p
                                .max_memory_mib
                                .map_or(defaults.memory, |m| m as usize * (1 << 20)),
                            deadline: p
                                .call_deadline_ms
                                .map_or(defaults.deadline, Duration::from_millis),
                            instances: p.max_instances.map_or(defaults.instances, |n| n as usize),
                        })
                        .with_trust(if p.unverified {
                            Trust::Unverified
                        } else {
                            Trust::Checked
                        }),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fallback = config
            .providers
            .values()
            .map(|p| p.fallback.as_ref().and_then(|f| index.get(f).copied()))
            .collect();
        let consumers: Vec<String> = config.consumers.keys().cloned().collect();
        let routes = RouteTable::new(&config.routes, &names, &consumers, &config.device_names())?;
        Ok(Engine {
            config,
            plugins,
            names: names.into(),
            fallback,
            routes,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The loaded plugins, in provider order.
    pub fn plugins(&self) -> impl Iterator<Item = (&str, &ProviderPlugin)> {
        self.names.iter().map(String::as_str).zip(&self.plugins)
    }

    /// Checks what a run would find wrong at its start, without running: each provider
    /// is started once (for queue 0, with its settings) and shut down, and a replayed
    /// capture is read. `memplex config check` calls this, so it refuses what `run`
    /// would.
    pub fn check(&self) -> Result<(), RunError> {
        let pools = self.pools_for(0)?;
        let deliverable = self
            .deliverable(&pools)
            .and_then(|()| self.forwardable(&pools, None));
        for pool in pools {
            pool.shutdown(Duration::from_millis(10));
        }
        if let (crate::config::DeviceKind::Pcap, Some(path)) =
            (self.config.device.kind, &self.config.device.path)
        {
            device::pcap::read_frames(path)?;
        }
        deliverable
    }

    /// The consumers, in config order (the index routes use).
    fn consumers(&self) -> Vec<(String, crate::config::ConsumerConfig)> {
        self.config
            .consumers
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }

    /// Checks every delivering route against the instances of one queue: the frags'
    /// memory must be shareable (or the route says `copy = true`), a head whose memory is
    /// not must fit inline, and a consumer holding its whole quota must leave the
    /// provider buffers for everyone else.
    fn deliverable(&self, pools: &[Pool]) -> Result<(), RunError> {
        let consumers = self.consumers();
        for (i, r) in self.config.routes.iter().enumerate() {
            let Some(name) = &r.deliver else { continue };
            let Some((_, c)) = consumers.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let err = |problem: String| RunError::NotDeliverable {
                route: i,
                consumer: name.clone(),
                problem,
            };
            let index = |p: &str| self.names.iter().position(|n| n == p).unwrap_or(0);
            let frag_names = [Some(&r.frags), r.frags_rest.as_ref()];
            for p in frag_names.into_iter().flatten() {
                let pool = &pools[index(p)];
                if let (Some(why), false) = (pool.provider().not_exportable(), r.copy) {
                    return Err(err(format!(
                        "its frags provider `{p}` cannot share its memory: {why}. Use a provider whose memory can be shared (slab, hugepage, shm), or set copy = true to copy such frames into the ring (counted as copies)"
                    )));
                }
            }
            let head = &pools[index(&r.head)];
            let head_size = self.config.providers[&r.head].buf_size;
            if head.provider().not_exportable().is_some() && head_size > c.inline_head && !r.copy {
                return Err(err(format!(
                    "its head provider `{}` cannot share its memory and its {head_size}-byte heads do not fit inline (consumers.{name}.inline_head = {}); raise inline_head or use a provider that can share",
                    r.head, c.inline_head
                )));
            }
            // Buffers a consumer can hold: those of providers whose memory is lent (an
            // inline head is copied from the frame and takes no buffer).
            for p in [Some(&r.head), Some(&r.frags), r.frags_rest.as_ref()]
                .into_iter()
                .flatten()
            {
                let pool = &pools[index(p)];
                if pool.provider().not_exportable().is_some() {
                    continue;
                }
                let capacity = pool.provider().info().capacity;
                let cached = self.config.providers[p].pool_size;
                let quota = c.quota() * c.max_sessions;
                if u64::from(quota) + u64::from(cached) >= u64::from(capacity) {
                    return Err(err(format!(
                        "provider `{p}` has {capacity} buffers per queue, and {} sessions holding their quota of {} (consumers.{name}.quota) plus its pool's cache of {cached} could take them all; raise the provider's buffers or lower the quota or max_sessions",
                        c.max_sessions,
                        c.quota()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks every forwarding route: the host must be able to read its memory (the
    /// parts go out by address), and, given the opened queues' transmitters by device
    /// (`tx`), the device it names must be able to send. A capture replays; it sends
    /// nothing.
    fn forwardable(
        &self,
        pools: &[Pool],
        tx: Option<&[Vec<Arc<dyn device::TxQueue>>]>,
    ) -> Result<(), RunError> {
        let devices = self.config.device_names();
        for (i, r) in self.config.routes.iter().enumerate() {
            // A route forwards, or delivers to a consumer that may send its frames on.
            let transmit = r
                .deliver
                .as_ref()
                .and_then(|c| self.config.consumers.get(c))
                .and_then(|c| c.transmit.as_ref());
            let Some(to) = r.forward.as_ref().or(transmit) else {
                continue;
            };
            let err = |problem: String| RunError::NotForwardable {
                route: i,
                device: to.clone(),
                problem,
            };
            let index = |p: &str| self.names.iter().position(|n| n == p).unwrap_or(0);
            for p in [Some(&r.head), Some(&r.frags), r.frags_rest.as_ref()]
                .into_iter()
                .flatten()
            {
                let caps = pools[index(p)].provider().info().caps;
                if !caps.contains(memplex_abi::Capabilities::CPU_READABLE) {
                    return Err(err(format!(
                        "provider `{p}` keeps its memory where the host cannot read it, and forwarded frames go out from their buffers; use a CPU-readable provider for forwarding routes"
                    )));
                }
            }
            // The devices frames of this route can go out of.
            let targets: Vec<usize> = match to.as_str() {
                "in" => match &r.matches.device_name() {
                    Some(d) => devices.iter().position(|n| n == d).into_iter().collect(),
                    None => (0..devices.len()).collect(),
                },
                name => devices.iter().position(|n| n == name).into_iter().collect(),
            };
            for t in targets {
                let d = self.config.device_at(t).map(|d| d.kind);
                if d == Some(crate::config::DeviceKind::Pcap) {
                    return Err(err(format!(
                        "device `{}` replays a capture and sends nothing; forward to a tap or af_packet device",
                        devices[t]
                    )));
                }
                if let Some(tx) = tx {
                    if tx.get(t).is_none_or(Vec::is_empty) {
                        return Err(err(format!(
                            "device `{}` has no queue that can send here",
                            devices[t]
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// What consumers may be told about each pool's memory.
    fn pool_memory(&self, pools: &[Pool]) -> Vec<crate::deliver::PoolMemory> {
        pools
            .iter()
            .zip(self.names.iter())
            .map(|(pool, name)| crate::deliver::PoolMemory::of(pool.provider(), name))
            .collect()
    }

    /// Opens the queues of every configured device (see [`device::open`]): `[device]`'s,
    /// then each `[devices.NAME]`'s, which know their device's index.
    pub fn open_device(&self) -> Result<Vec<Box<dyn RxQueue>>, RunError> {
        let mut queues = device::open(&self.config.device)?;
        for (i, d) in self.config.devices.values().enumerate() {
            for q in device::open(d)? {
                queues.push(Box::new(device::OnDevice {
                    device: i as u16 + 1,
                    queue: q,
                }));
            }
        }
        Ok(queues)
    }

    fn sink(&self, shared: &Option<PcapOut>) -> Box<dyn Sink> {
        match (self.config.runtime.sink, shared) {
            (SinkKind::Verify, _) => Box::new(VerifySink::default()),
            (SinkKind::Checksum, _) => Box::new(ChecksumSink::default()),
            (SinkKind::Pcap, Some(w)) => Box::new(PcapSink::new(
                Arc::clone(w),
                self.config
                    .runtime
                    .sink_path
                    .as_deref()
                    .unwrap_or(Path::new("")),
            )),
            _ => Box::new(CountSink),
        }
    }

    /// One pool per provider, for queue `queue`.
    fn pools_for(&self, queue: u16) -> Result<Vec<Pool>, RunError> {
        let mut pools = Vec::new();
        for ((name, plugin), cfg) in self.plugins().zip(self.config.providers.values()) {
            let params = cfg.settings.iter().fold(
                InitParams::new(u32::from(queue), cfg.buf_size, cfg.pool_size),
                |p, (k, v)| p.set(k, &v.to_string()),
            );
            let provider = plugin
                .instantiate(&params)
                .map_err(|source| RunError::Provider {
                    name: name.to_string(),
                    cause: source,
                })?;
            pools.push(Pool::new(provider, cfg.pool_size as usize));
        }
        Ok(pools)
    }

    /// Queue 0's worker, for tests that drive it by hand.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn test_worker(
        &self,
        sink: Box<dyn Sink>,
        inbox: Option<Arc<crate::deliver::Inbox>>,
    ) -> Result<Worker, RunError> {
        self.worker(0, "test".into(), sink, inbox)
    }

    fn worker(
        &self,
        queue: u16,
        name: String,
        sink: Box<dyn Sink>,
        inbox: Option<Arc<crate::deliver::Inbox>>,
    ) -> Result<Worker, RunError> {
        let pools = self.pools_for(queue)?;
        let delivery = match inbox {
            Some(inbox) => {
                self.deliverable(&pools)?;
                Some(crate::deliver::QueueDelivery::new(
                    queue,
                    inbox,
                    &self.consumers(),
                    self.pool_memory(&pools),
                ))
            }
            None => None,
        };
        let s = &self.config.split;
        Ok(Worker::new(
            name,
            Splitter {
                mode: s.mode,
                fixed_offset: s.fixed_offset,
                hds_threshold: s.hds_threshold,
            },
            self.routes.clone(),
            pools,
            &self.names,
            Arc::clone(&self.fallback),
            self.config.runtime.on_dry,
            Duration::from_millis(self.config.runtime.wait_ms),
            sink,
            delivery,
        ))
    }

    /// Runs every queue on its own worker thread until the device ends or `control.stop`
    /// is set, then shuts the pools down and reports. The consumer is the config's sink.
    pub fn run(
        &self,
        queues: Vec<Box<dyn RxQueue>>,
        control: &RunControl,
    ) -> Result<RunReport, RunError> {
        let shared = match (self.config.runtime.sink, &self.config.runtime.sink_path) {
            (SinkKind::Pcap, Some(path)) => Some(PcapSink::create(path)?),
            _ => None,
        };
        let report = self.run_with(queues, control, |_| self.sink(&shared))?;
        if let (Some(out), Some(path)) = (shared, &self.config.runtime.sink_path) {
            // Every sink is gone with its worker, so this is the last handle: flush and
            // report a failed write rather than lose it in a drop.
            PcapSink::finish(out, path)?;
        }
        Ok(report)
    }

    /// Runs on a background thread and returns a tokio `Stream` of frames, for embedding
    /// memplex in an async program. At most `capacity` frames wait in the stream; past
    /// that the workers wait for the consumer (backpressure). Dropping a frame returns
    /// its buffers to their pools; the run ends when the device does, when
    /// `StreamRun::control.stop` is set, or when the stream is dropped and the workers
    /// next find it closed.
    ///
    /// ```no_run
    /// # async fn f(engine: std::sync::Arc<memplex::runtime::Engine>) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio_stream::StreamExt;
    /// let queues = engine.open_device()?;
    /// let (mut frames, run) = memplex::runtime::Engine::stream(engine, queues, 1024);
    /// while let Some(frame) = frames.next().await {
    ///     println!("{} bytes in {} buffers", frame.len, frame.parts().len());
    /// }
    /// let report = run.thread.join().expect("run thread")?;
    /// # Ok(()) }
    /// ```
    pub fn stream(
        engine: Arc<Engine>,
        queues: Vec<Box<dyn RxQueue>>,
        capacity: usize,
    ) -> (FrameStream, StreamRun) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let control = RunControl::default();
        let run_control = control.clone();
        let thread = std::thread::spawn(move || {
            let stop = Arc::clone(&run_control.stop);
            engine.run_with(queues, &run_control, move |_| {
                Box::new(ChannelSink {
                    tx: tx.clone(),
                    sent: 0,
                    stop: Arc::clone(&stop),
                })
            })
        });
        (
            tokio_stream::wrappers::ReceiverStream::new(rx),
            StreamRun { control, thread },
        )
    }

    /// Like [`run`](Self::run), with a consumer made per queue by `sink`: for embedding
    /// memplex with a consumer of one's own.
    pub fn run_with(
        &self,
        queues: Vec<Box<dyn RxQueue>>,
        control: &RunControl,
        sink: impl Fn(u16) -> Box<dyn Sink>,
    ) -> Result<RunReport, RunError> {
        let delivering = !self.config.consumers.is_empty();
        let inboxes: Vec<Arc<crate::deliver::Inbox>> = if delivering {
            queues.iter().map(|_| Arc::default()).collect()
        } else {
            Vec::new()
        };
        // Transmitters by device, for routes that forward.
        let forwarding = self.config.routes.iter().any(|r| r.forward.is_some())
            || self.config.consumers.values().any(|c| c.transmit.is_some());
        let mut tx: Vec<Vec<Arc<dyn device::TxQueue>>> =
            vec![Vec::new(); self.config.device_names().len()];
        let mut index_in_device = Vec::with_capacity(queues.len());
        for rx in &queues {
            let d = usize::from(rx.device()).min(tx.len() - 1);
            index_in_device.push(tx[d].len());
            if forwarding {
                if let Some(t) = rx.transmitter() {
                    tx[d].push(t);
                }
            }
        }
        let tx: Arc<[Vec<Arc<dyn device::TxQueue>>]> = if forwarding {
            tx.into()
        } else {
            Arc::from(Vec::new())
        };
        let mut workers = Vec::new();
        for (q, rx) in queues.into_iter().enumerate() {
            let mut w = self.worker(
                q as u16,
                rx.name().to_string(),
                sink(q as u16),
                inboxes.get(q).cloned(),
            )?;
            if forwarding {
                self.forwardable(&w.pools, Some(&tx))?;
            }
            w.device = rx.device();
            w.queue = index_in_device[q];
            if self.config.runtime.profile {
                w.profiler = Some(super::worker::Profiler::new());
            }
            w.tx = Arc::clone(&tx);
            if let Some(d) = w.delivery.as_mut() {
                // Each consumer's transmit ring on this queue sends out of its device,
                // through that device's queue of the same index (as forwarding does).
                let devices = self.config.device_names();
                for (ci, c) in self.config.consumers.values().enumerate() {
                    let to = match c.transmit.as_deref() {
                        None => continue,
                        Some("in") => Some(usize::from(rx.device())),
                        Some(name) => devices.iter().position(|n| n == name),
                    };
                    if let Some(out) = to.and_then(|t| tx.get(t)).filter(|v| !v.is_empty()) {
                        d.set_transmitter(ci, Arc::clone(&out[index_in_device[q] % out.len()]));
                    }
                }
            }
            workers.push((rx, w));
        }
        // Consumers may connect from here on; the server stops when the run does.
        let server = if delivering {
            Some(crate::deliver::Server::start(&self.consumers(), inboxes)?)
        } else {
            None
        };
        // The factory may hold resources the sinks share (a stream's sender): drop it so
        // they are released when the workers' sinks are.
        drop(sink);
        *control
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            workers.iter().map(|(_, w)| w.snapshot()).collect();
        let start = Instant::now();
        type Outcome = Result<(QueueStats, Vec<Pool>, Option<RunError>), RunError>;
        let results: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .into_iter()
                .enumerate()
                .map(|(i, (rx, w))| {
                    let name = w.name.clone();
                    (name, s.spawn(move || run_queue(i, rx, w, control)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(name, h)| h.join().map_err(|_| RunError::Worker(name)))
                .collect()
        });
        let elapsed = start.elapsed();
        if let Some(server) = server {
            server.stop();
        }
        // Every consumer is gone now; wait (bounded) for the buffers they still return.
        let mut queues = Vec::new();
        let mut pools = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok((mut q, p, failed)) => {
                    if let Some(e) = failed {
                        first_error = first_error.or(Some(e));
                    }
                    let reports: Vec<PoolReport> = p
                        .into_iter()
                        .map(|p| p.shutdown(Duration::from_secs(1)))
                        .collect();
                    for (stats, report) in q.providers.iter_mut().zip(&reports) {
                        stats.leaked = report.leaked;
                        stats.checks = report.provider_counters;
                        stats.pool = report.stats;
                    }
                    queues.push(q);
                    pools.push(reports);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        let report = RunReport {
            queues,
            pools,
            elapsed,
            providers: self.names.to_vec(),
        };
        match first_error {
            // The queues that ran are accounted for all the same (buffers included).
            Some(e) => Err(RunError::Failed {
                cause: Box::new(e),
                report: Box::new(report),
            }),
            None => Ok(report),
        }
    }
}
