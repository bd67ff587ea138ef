//! Wires the stages together: build, run, and a bounded drain.
//!
//! In: a validated [`Config`]. [`build`] creates every stage (metrics, queue, sampler, plugins,
//! sinks, the pipeline worker, the profiler) and binds every listener (socket, HTTP ingest,
//! control API), returning a [`Daemon`] with their real addresses, so `127.0.0.1:0` works and
//! the log names the port. [`check`] builds the same stages short of binding and starting, so
//! that what `outrigger check` accepts, `run` starts. [`Daemon::run`] serves reloads (file
//! watcher, SIGHUP, the API) until the stop token is cancelled, then drains: ingest stops
//! accepting, the queue is closed and drained through the pipeline, the sinks flush; all within
//! `shutdown.grace`, after which sinks stop retrying and count what they hold as lost. A
//! `force` token (a second signal) cuts the drain short. The socket file is removed on the way
//! out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::debug::Debugger;
use crate::control::limit::RateLimiter;
use crate::control::views::EventViews;
use crate::control::{self, ControlState, ReloadRequest, health::HealthMonitor};
use crate::event::Event;
use crate::ingest::{self, Admission};
use crate::metrics::{DropReason, Metrics};
use crate::pipeline::{FlushRequests, Routing, Worker};
use crate::plugins::{PluginHost, PluginSet, PluginStatus};
use crate::profiler::{ProfileHistory, Profiler, ProfilerHandle};
use crate::queue::Queue;
use crate::reload::{self, ConfigWatcher, DataPlane, ReloadStatus, Reloader, Targets};
use crate::sampler::Sampler;
use crate::sinks::{self, ClosingSinks, Progress, SinkContext, SinkHandle, SinkSet};
use crate::tail::Tail;
use crate::wal::Wal;

/// What `outrigger run` passes besides the config.
#[derive(Default)]
pub struct RunOptions {
    /// `--watch-pid`: profiled in addition to `profiling.watch_pids`.
    pub watch_pids: Vec<u32>,
    /// The live log filter, for reloads and `PUT /v1/log`; `None` leaves the level fixed.
    pub log: Option<crate::logging::LogControl>,
}

/// Where a built daemon listens, as bound (port 0 resolved).
#[derive(Clone, Debug)]
pub struct Addrs {
    pub socket: PathBuf,
    pub http: Option<SocketAddr>,
    pub control: Option<SocketAddr>,
}

/// How the daemon ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Drained within the grace period (or after it, with the rest counted).
    Drained,
    /// A second signal cut the drain short.
    Forced,
}

/// The stages both `check` and `run` build from a config.
struct Stages {
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    sampler: Arc<Sampler>,
    plugin_host: Arc<PluginHost>,
    plugins: Arc<PluginSet>,
    tail: Tail,
}

fn build_stages(cfg: &Config) -> anyhow::Result<Stages> {
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(
        cfg.queue.capacity,
        cfg.queue.on_full,
        metrics.clone(),
    ));
    let sampler = Arc::new(Sampler::new(cfg.sampling.clone(), metrics.clone()));
    let anomaly_sampler = sampler.clone();
    let plugin_host = Arc::new(
        PluginHost::new(
            &cfg.plugins,
            metrics.clone(),
            Arc::new(move |kind: &str, reason: &str| anomaly_sampler.report_anomaly(kind, reason)),
        )
        .context("starting the plugin runtime")?,
    );
    let plugins = plugin_host
        .load_set(&cfg.plugins)
        .context("loading plugins")?;
    let tail = Tail::new(cfg, metrics.clone());
    queue.set_lost_filter(tail.lost_filter());
    Ok(Stages {
        metrics,
        queue,
        sampler,
        plugin_host,
        plugins,
        tail,
    })
}

/// `outrigger check`: builds every stage as `run` would (sinks opened and closed, plugins
/// compiled and instantiated), binding nothing. Returns each plugin's status.
pub fn check(cfg: &Config) -> anyhow::Result<Vec<PluginStatus>> {
    let stages = build_stages(cfg)?;
    sinks::check(&cfg.sinks, &stages.metrics)?;
    // The socket is not bound, but the group it would be given must exist.
    if let Some(g) = &cfg.ingest.socket_group {
        ingest::socket::group_id(g)?;
    }
    Ok(stages.plugins.status())
}

/// A daemon with every stage started and every listener bound, not yet serving reloads.
pub struct Daemon {
    addrs: Addrs,
    started: Instant,
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    reloader: Reloader,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    control_state: Arc<ControlState>,
    tasks: Tasks,
    /// The write-ahead log, closed once the sinks have drained.
    wal: Option<Arc<Wal>>,
}

/// Everything that runs, in the order the drain stops it.
struct Tasks {
    ingest_stop: CancellationToken,
    listeners: JoinSet<()>,
    worker: oneshot::Receiver<ClosingSinks>,
    /// Cancelled when the grace period is over: sinks stop retrying.
    abort: CancellationToken,
    control_stop: CancellationToken,
    control: Option<JoinHandle<()>>,
    health: JoinHandle<()>,
    profiler: ProfilerHandle,
}

/// The data plane as started: the worker and the channels a reload uses.
struct DataPlaneParts {
    worker: oneshot::Receiver<ClosingSinks>,
    routing_tx: watch::Sender<Routing>,
    routing_rx: watch::Receiver<Routing>,
    plans_tx: mpsc::UnboundedSender<crate::sinks::SinkPlan>,
    sink_ctx: SinkContext,
    flush: Arc<FlushRequests>,
    over_budget: Arc<AtomicBool>,
}

/// Opens the sinks and starts the pipeline worker that owns them.
fn start_data_plane(cfg: &Config, st: &Stages) -> anyhow::Result<DataPlaneParts> {
    let sink_ctx = SinkContext {
        metrics: st.metrics.clone(),
        progress: Arc::new(Progress::default()),
        delivery: cfg.delivery.clone(),
        abort: CancellationToken::new(),
    };
    let mut sinks = Vec::new();
    for (i, s) in cfg.sinks.iter().enumerate() {
        sinks.push(SinkHandle::spawn(
            s.label(i),
            s.clone(),
            sink_ctx.clone(),
            i == 0,
        )?);
    }
    let (routing_tx, routing_rx) = watch::channel(Routing {
        batch: cfg.batch.clone(),
        plugins: st.plugins.clone(),
    });
    let (plans_tx, plans_rx) = mpsc::unbounded_channel();
    let flush = Arc::new(FlushRequests::default());
    let over_budget = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        queue: st.queue.clone(),
        sampler: st.sampler.clone(),
        tail: st.tail.clone(),
        metrics: st.metrics.clone(),
        routing: routing_rx.clone(),
        sink_plans: plans_rx,
        sinks: SinkSet::new(sinks, st.metrics.clone()),
        flush: flush.clone(),
        over_budget: over_budget.clone(),
    }
    .spawn()?;
    Ok(DataPlaneParts {
        worker,
        routing_tx,
        routing_rx,
        plans_tx,
        sink_ctx,
        flush,
        over_budget,
    })
}

/// The control plane as started: the API's state, its tasks and the reload channel.
struct ControlPlaneParts {
    state: Arc<ControlState>,
    status: Arc<parking_lot::Mutex<ReloadStatus>>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    stop: CancellationToken,
    control: Option<JoinHandle<()>>,
    addr: Option<SocketAddr>,
    health: JoinHandle<()>,
    profiler: ProfilerHandle,
}

/// Binds the control API and starts it, the health ticker and the profiler.
#[allow(clippy::too_many_arguments)] // the parts the control API shares with the data plane
async fn start_control_plane(
    cfg: &Config,
    st: &Stages,
    dp: &DataPlaneParts,
    views: Arc<EventViews>,
    debugger: Arc<Debugger>,
    opts: &RunOptions,
    started: Instant,
    wal: Option<Arc<Wal>>,
) -> anyhow::Result<ControlPlaneParts> {
    let profile = Arc::new(ProfileHistory::new(&cfg.profiling));
    let status = Arc::new(parking_lot::Mutex::new(ReloadStatus::default()));
    let health = Arc::new(HealthMonitor::new(
        st.metrics.clone(),
        st.queue.clone(),
        dp.routing_rx.clone(),
        profile.clone(),
        status.clone(),
        Some(st.tail.clone()),
    ));
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let state = Arc::new(ControlState {
        metrics: st.metrics.clone(),
        sampler: st.sampler.clone(),
        queue: st.queue.clone(),
        routing: dp.routing_rx.clone(),
        ready: AtomicBool::new(false),
        api_key: cfg.control.api_key.clone(),
        reload: reload_tx,
        started,
        health: health.clone(),
        views,
        tail: st.tail.clone(),
        limiter: Arc::new(RateLimiter::new(cfg.control.rate_limit)),
        log: opts.log.clone(),
        wal,
        debugger,
        cors: Arc::new(control::CorsOrigins::new(&cfg.control.cors)),
    });
    let stop = CancellationToken::new();
    let (control, addr) = start_control(cfg, &state, &stop).await?;
    let health = spawn_health_ticker(cfg, health, st.sampler.clone(), &stop);
    let profiler = Profiler {
        config: cfg.profiling.clone(),
        extra_pids: opts.watch_pids.clone(),
        metrics: st.metrics.clone(),
        sampler: st.sampler.clone(),
        over_budget: dp.over_budget.clone(),
        history: profile,
    }
    .spawn(stop.clone());
    Ok(ControlPlaneParts {
        state,
        status,
        reload_rx,
        stop,
        control,
        addr,
        health,
        profiler,
    })
}

/// Builds the daemon: every stage, every listener. A listener that cannot bind is fatal here.
pub async fn build(
    cfg: Config,
    config_path: Option<PathBuf>,
    opts: RunOptions,
) -> anyhow::Result<Daemon> {
    let started = Instant::now();
    let st = build_stages(&cfg)?;
    tracing::info!(plugins = st.plugins.len(), dir = %cfg.plugins.dir.display(), "plugins loaded");
    let dp = start_data_plane(&cfg, &st)?;
    // The log is replayed into the running pipeline before any listener is bound, so that
    // what it holds goes before every new event.
    let wal = open_wal(&cfg, &st, &dp).await?;
    let views = Arc::new(EventViews::new(&cfg.control.redact_fields));
    let debugger = Arc::new(Debugger::new(&cfg, st.metrics.clone()));
    let admission = admission(&cfg, &st, &views, &debugger, &dp, wal.clone());
    let ingest_stop = CancellationToken::new();
    let (listeners, http) = bind_ingest(&cfg, &admission, &ingest_stop).await?;
    let cp = start_control_plane(
        &cfg,
        &st,
        &dp,
        views.clone(),
        debugger.clone(),
        &opts,
        started,
        wal.clone(),
    )
    .await?;
    let addrs = Addrs {
        socket: cfg.ingest.socket.clone(),
        http,
        control: cp.addr,
    };
    let reloader = Reloader {
        config_path,
        metrics: st.metrics.clone(),
        data: DataPlane {
            routing: dp.routing_tx,
            sink_plans: dp.plans_tx,
            sink_ctx: dp.sink_ctx.clone(),
            sinks: sink_labels(&cfg),
            plugin_host: st.plugin_host.clone(),
        },
        stages: vec![
            st.queue.clone(),
            Arc::new(WalReconfigure(wal.clone())),
            st.sampler.clone(),
            admission,
            views,
            Arc::new(st.tail.clone()),
            cp.state.limiter.clone(),
            debugger,
            cp.state.cors.clone(),
            Arc::new(cp.profiler.reconfigurer()),
        ],
        status: cp.status,
        set_log_level: opts.log.as_ref().map(|l| l.setter()),
        config: cfg,
    };
    Ok(Daemon {
        addrs,
        started,
        metrics: st.metrics,
        queue: st.queue,
        reloader,
        reload_rx: cp.reload_rx,
        control_state: cp.state,
        tasks: Tasks {
            ingest_stop,
            listeners,
            worker: dp.worker,
            abort: dp.sink_ctx.abort,
            control_stop: cp.stop,
            control: cp.control,
            health: cp.health,
            profiler: cp.profiler,
        },
        wal,
    })
}

/// Opens the write-ahead log (`queue.durable`), replays it into the queue and lets it trim by
/// the sinks' progress.
async fn open_wal(
    cfg: &Config,
    st: &Stages,
    dp: &DataPlaneParts,
) -> anyhow::Result<Option<Arc<Wal>>> {
    let Some(d) = &cfg.queue.durable else {
        return Ok(None);
    };
    let wal = Wal::open(d, cfg.queue.on_full, &st.queue, st.metrics.clone())
        .await
        .context("opening the write-ahead log (queue.durable)")?;
    let progress = dp.sink_ctx.progress.clone();
    wal.set_floor_source(Arc::new(move || {
        progress.safe_floor().map(|f| (f, progress.cursors()))
    }));
    tracing::info!(dir = %d.dir.display(), fsync = ?d.fsync, max_bytes = d.max_bytes.0, "durable queue: answers wait for the write-ahead log");
    Ok(Some(wal))
}

/// Live settings of the write-ahead log on a reload (`dir` and on/off need a restart).
struct WalReconfigure(Option<Arc<Wal>>);

impl reload::Reconfigure for WalReconfigure {
    fn reconfigure(&self, cfg: &Config) {
        if let (Some(w), Some(d)) = (&self.0, &cfg.queue.durable) {
            w.reconfigure(d, cfg.queue.on_full);
        }
    }
}

fn sink_labels(cfg: &Config) -> Vec<(String, crate::config::SinkConfig)> {
    cfg.sinks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.label(i), s.clone()))
        .collect()
}

/// The checks every ingest path shares; the live tail and run views see every admitted batch.
fn admission(
    cfg: &Config,
    st: &Stages,
    views: &Arc<EventViews>,
    debugger: &Arc<Debugger>,
    dp: &DataPlaneParts,
    wal: Option<Arc<Wal>>,
) -> Arc<Admission> {
    let observer: ingest::Observer = {
        let views = views.clone();
        Arc::new(move |events: &[Event]| views.observe(events))
    };
    Arc::new(Admission {
        queue: st.queue.clone(),
        metrics: st.metrics.clone(),
        enabled: AtomicBool::new(cfg.enabled),
        max_line_bytes: AtomicUsize::new(cfg.ingest.max_line_bytes.0 as usize),
        flush: dp.flush.clone(),
        progress: dp.sink_ctx.progress.clone(),
        observer: Some(observer),
        wal,
        debugger: Some(debugger.clone()),
    })
}

/// Binds the socket and HTTP ingest and starts serving them; returns the HTTP address.
async fn bind_ingest(
    cfg: &Config,
    admission: &Arc<Admission>,
    stop: &CancellationToken,
) -> anyhow::Result<(JoinSet<()>, Option<SocketAddr>)> {
    let mut listeners = JoinSet::new();
    let socket = ingest::socket::bind(
        &cfg.ingest.socket,
        cfg.ingest.socket_mode,
        cfg.ingest.socket_group.as_ref(),
    )?;
    listeners.spawn(ingest::socket::serve(
        socket,
        cfg.ingest.socket.clone(),
        admission.clone(),
        stop.clone(),
    ));
    let mut http = None;
    if let Some(addr) = cfg.ingest.http {
        let l = ingest::http::bind(addr).await?;
        let bound = l.local_addr()?;
        tracing::info!(addr = %bound, "HTTP ingest listening");
        http = Some(bound);
        listeners.spawn(ingest::http::serve(
            l,
            admission.clone(),
            cfg.ingest.api_key.clone(),
            stop.clone(),
        ));
    }
    if let Some(o) = &cfg.ingest.otlp {
        let max = o.max_request_bytes.0 as usize;
        if let Some(addr) = o.http {
            let l = ingest::otlp::http::bind(addr, "ingest.otlp.http").await?;
            tracing::info!(addr = %l.local_addr()?, "OTLP/HTTP ingest listening");
            listeners.spawn(ingest::otlp::http::serve(
                l,
                admission.clone(),
                cfg.ingest.api_key.clone(),
                max,
                stop.clone(),
            ));
        }
        if let Some(addr) = o.grpc {
            let l = ingest::otlp::http::bind(addr, "ingest.otlp.grpc").await?;
            tracing::info!(addr = %l.local_addr()?, "OTLP/gRPC ingest listening");
            listeners.spawn(ingest::otlp::grpc::serve(
                l,
                admission.clone(),
                cfg.ingest.api_key.clone(),
                max,
                stop.clone(),
            ));
        }
    }
    Ok((listeners, http))
}

/// Binds the control API (when configured) and starts serving it.
async fn start_control(
    cfg: &Config,
    state: &Arc<ControlState>,
    stop: &CancellationToken,
) -> anyhow::Result<(Option<JoinHandle<()>>, Option<SocketAddr>)> {
    let Some(addr) = cfg.control.listen else {
        return Ok((None, None));
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (control.listen): {e}"))?;
    let bound = l.local_addr()?;
    tracing::info!(addr = %bound, "control API listening");
    let task = tokio::spawn(control::serve(l, state.clone(), stop.clone()));
    Ok((Some(task), Some(bound)))
}

/// Starts a new health window every `health.interval` and expires finished boosts.
fn spawn_health_ticker(
    cfg: &Config,
    health: Arc<HealthMonitor>,
    sampler: Arc<Sampler>,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let interval = cfg.health.interval.0;
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    health.tick();
                    sampler.boosts(); // expires finished boosts and their gauges
                }
                _ = stop.cancelled() => break,
            }
        }
    })
}

/// Watches the config file and plugins directory; without a watcher, SIGHUP and the API still work.
fn start_watcher(r: &Reloader) -> Option<(ConfigWatcher, mpsc::Receiver<Targets>)> {
    match reload::watch(
        r.config_path.as_deref(),
        &r.config.plugins.dir,
        Duration::from_millis(150),
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable: reload with SIGHUP or POST /v1/reload");
            None
        }
    }
}

async fn next_change(w: &mut Option<(ConfigWatcher, mpsc::Receiver<Targets>)>) -> Option<Targets> {
    match w {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Where the daemon listens.
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// Profiles one more process from now on (`outrigger exec`'s child).
    pub fn watch_pid(&self, pid: u32) {
        self.tasks.profiler.watch_pid(pid);
    }

    /// Marks the daemon ready, serves reloads until `stop`, then drains (cut short by `force`).
    pub async fn run(
        mut self,
        stop: CancellationToken,
        force: CancellationToken,
    ) -> anyhow::Result<Stopped> {
        // Watching and the SIGHUP handler start before the daemon says it is ready: a plugin
        // dropped in as soon as `/readyz` answers must not land before the watch exists (it
        // would go unseen until the next change), nor a SIGHUP before the handler (it would
        // end the process).
        use tokio::signal::unix::{SignalKind, signal};
        let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let watching = start_watcher(&self.reloader);
        self.control_state.ready.store(true, Ordering::Release);
        let cfg = &self.reloader.config;
        tracing::info!(
            socket = %self.addrs.socket.display(),
            http = ?self.addrs.http,
            control = ?self.addrs.control,
            sinks = cfg.sinks.len(),
            startup_ms = self.started.elapsed().as_millis() as u64,
            config = %self.reloader.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
            "outrigger ready"
        );
        self.serve_reloads(&stop, hangup, watching).await?;
        Ok(self.drain(force).await)
    }

    /// Applies reloads from the API, SIGHUP and the file watcher until `stop`.
    async fn serve_reloads(
        &mut self,
        stop: &CancellationToken,
        mut hangup: tokio::signal::unix::Signal,
        mut watching: Option<(ConfigWatcher, mpsc::Receiver<Targets>)>,
    ) -> anyhow::Result<()> {
        loop {
            let targets = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                Some(answer) = self.reload_rx.recv() => {
                    let result = self.reloader.reload(Targets::ALL).await;
                    let _ = answer.send(result.map_err(|e| e.to_string()));
                    None
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading config and plugins");
                    Some(Targets::ALL)
                }
                Some(t) = next_change(&mut watching) => Some(t),
            };
            if let Some(t) = targets {
                let dir = self.reloader.config.plugins.dir.clone();
                let _ = self.reloader.reload(t).await;
                if self.reloader.config.plugins.dir != dir {
                    watching = start_watcher(&self.reloader);
                }
            }
        }
    }

    /// Stops ingest, drains the queue through the pipeline and the sinks within the grace
    /// period, then stops the control plane and logs the final counts.
    async fn drain(self, force: CancellationToken) -> Stopped {
        let Daemon {
            started,
            metrics,
            queue,
            reloader,
            control_state,
            mut tasks,
            wal,
            ..
        } = self;
        tracing::info!("shutting down: draining the queue");
        control_state.ready.store(false, Ordering::Release);
        tasks.ingest_stop.cancel();
        while tasks.listeners.join_next().await.is_some() {}
        queue.close();
        let cfg = reloader.config.clone();
        // The worker ends once it has drained the queue; its sink set ends with it. Dropping
        // the reloader drops the worker's control channels.
        drop(reloader);
        let outcome = bounded_drain(tasks.worker, &tasks.abort, cfg.shutdown.grace.0, &force).await;
        if let Some(w) = wal {
            // After the sinks: the final trim sees everything they confirmed.
            w.close().await;
        }
        tasks.control_stop.cancel();
        if let Some(t) = tasks.control {
            let _ = t.await;
        }
        let _ = tasks.health.await;
        tasks.profiler.join().await;
        log_final_counts(&metrics, &cfg, started);
        outcome
    }
}

/// Waits for the worker and then the sinks; past `grace` the sinks stop retrying, and a
/// `force` (second signal) stops waiting at once.
async fn bounded_drain(
    worker: oneshot::Receiver<ClosingSinks>,
    abort: &CancellationToken,
    grace: Duration,
    force: &CancellationToken,
) -> Stopped {
    let drain = async {
        match worker.await {
            Ok(closing) => closing.finish().await,
            Err(_) => tracing::error!("pipeline worker failed"),
        }
    };
    tokio::pin!(drain);
    tokio::select! {
        _ = &mut drain => return Stopped::Drained,
        _ = tokio::time::sleep(grace) => {}
        _ = force.cancelled() => {
            abort.cancel();
            tracing::warn!("second signal: exiting without draining");
            return Stopped::Forced;
        }
    }
    tracing::warn!(
        grace_ms = grace.as_millis() as u64,
        "grace period over: sinks stop retrying"
    );
    abort.cancel();
    tokio::select! {
        _ = &mut drain => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::error!("sinks did not finish after the grace period");
        }
        _ = force.cancelled() => return Stopped::Forced,
    }
    Stopped::Drained
}

fn log_final_counts(metrics: &Metrics, cfg: &Config, started: Instant) {
    let received: u64 = ["socket", "http"]
        .iter()
        .map(|s| metrics.events_received.with_label_values(&[s]).get())
        .sum();
    let dropped: u64 = DropReason::ALL
        .iter()
        .map(|r| metrics.dropped_count(*r))
        .sum();
    let delivered: Vec<String> = cfg
        .sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let label = s.label(i);
            let n = metrics.events_delivered.with_label_values(&[&label]).get();
            format!("{label}={n}")
        })
        .collect();
    tracing::info!(
        uptime_s = started.elapsed().as_secs(),
        received,
        dropped,
        delivered = %delivered.join(","),
        "outrigger stopped"
    );
}

/// Builds the daemon and runs it until `stop`; see [`build`] and [`Daemon::run`].
pub async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    stop: CancellationToken,
    force: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<Stopped> {
    build(cfg, config_path, opts).await?.run(stop, force).await
}
