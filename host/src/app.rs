//! Wires the stages together, runs them, and shuts them down in order.
//!
//! In: a validated [`Config`] and a shutdown token (cancelled on SIGINT/SIGTERM by `main`).
//! Builds metrics, queue, sampler, plugins, sinks, the pipeline worker, ingest and the control
//! API; marks the daemon ready. On shutdown: ingest stops accepting, the queue is closed and
//! drained through the pipeline, sinks flush; all within `shutdown.grace`, after which sinks stop
//! retrying and count what they hold as lost. The socket file is removed on the way out.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::limit::RateLimiter;
use crate::control::views::EventViews;
use crate::control::{self, ControlState, ReloadRequest, health::HealthMonitor};
use crate::event::Event;
use crate::ingest::{self, Admission};
use crate::metrics::Metrics;
use crate::pipeline::{FlushRequests, Routing, Worker};
use crate::plugins::PluginHost;
use crate::profiler::{ProfileHistory, Profiler};
use crate::queue::Queue;
use crate::reload::{self, ConfigWatcher, ReloadStatus, Reloader, Targets};
use crate::sampler::Sampler;
use crate::sinks::{self, Progress, SinkContext, SinkHandle};

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

/// What `outrigger run` passes besides the config.
#[derive(Default)]
pub struct RunOptions {
    /// `--watch-pid`: profiled in addition to `profiling.watch_pids`.
    pub watch_pids: Vec<u32>,
    /// The live log filter, for reloads and `PUT /v1/log`; `None` leaves the level fixed.
    pub log: Option<crate::logging::LogControl>,
}

/// Runs the daemon until `stop` is cancelled, then drains and returns.
pub async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    stop: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let started = Instant::now();
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
    let plugin_set = plugin_host
        .load_set(&cfg.plugins)
        .context("loading plugins")?;
    tracing::info!(plugins = plugin_set.len(), dir = %cfg.plugins.dir.display(), "plugins loaded");

    let progress = Arc::new(Progress::default());
    let abort = CancellationToken::new();
    let sink_ctx = SinkContext {
        metrics: metrics.clone(),
        progress: progress.clone(),
        delivery: cfg.delivery.clone(),
        abort: abort.clone(),
    };
    let mut sinks: Vec<SinkHandle> = Vec::new();
    for (i, s) in cfg.sinks.iter().enumerate() {
        sinks.push(sinks::spawn(
            s.label(i),
            s.clone(),
            sink_ctx.clone(),
            i == 0,
        )?);
    }
    let routing = Routing {
        batch: cfg.batch.clone(),
        sinks: sinks.iter().map(|s| s.tx.clone()).collect(),
        plugins: plugin_set,
    };
    let (routing_tx, routing_rx) = watch::channel(routing);

    let flush = Arc::new(FlushRequests::default());
    let over_budget = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        queue: queue.clone(),
        sampler: sampler.clone(),
        metrics: metrics.clone(),
        routing: routing_rx.clone(),
        flush: flush.clone(),
        over_budget: over_budget.clone(),
    }
    .spawn()?;

    // The live tail and per-run rings see every admitted batch.
    let views = Arc::new(EventViews::new(
        cfg.control.runs,
        cfg.control.run_events,
        &cfg.control.redact_fields,
    ));
    let observer: ingest::Observer = {
        let views = views.clone();
        Arc::new(move |events: &[Event]| views.observe(events))
    };
    let admission = Arc::new(Admission {
        queue: queue.clone(),
        metrics: metrics.clone(),
        enabled: AtomicBool::new(cfg.enabled),
        max_line_bytes: AtomicUsize::new(cfg.ingest.max_line_bytes.0 as usize),
        flush,
        progress,
        observer: Some(observer),
    });

    // Listeners: a failure here is fatal at start (the socket is someone else's, a port is taken).
    let ingest_stop = CancellationToken::new();
    let mut listeners = tokio::task::JoinSet::new();
    let socket = ingest::socket::bind(
        &cfg.ingest.socket,
        cfg.ingest.socket_mode,
        cfg.ingest.socket_group.as_ref(),
    )?;
    listeners.spawn(ingest::socket::serve(
        socket,
        cfg.ingest.socket.clone(),
        admission.clone(),
        ingest_stop.clone(),
    ));
    if let Some(addr) = cfg.ingest.http {
        let l = ingest::http::bind(addr).await?;
        tracing::info!(addr = %l.local_addr()?, "HTTP ingest listening");
        listeners.spawn(ingest::http::serve(
            l,
            admission.clone(),
            cfg.ingest.api_key.clone(),
            ingest_stop.clone(),
        ));
    }

    let profile = Arc::new(ProfileHistory::new(&cfg.profiling));
    let reload_status = Arc::new(parking_lot::Mutex::new(ReloadStatus::default()));
    let health = Arc::new(HealthMonitor::new(
        metrics.clone(),
        queue.clone(),
        routing_rx.clone(),
        profile.clone(),
        reload_status.clone(),
    ));
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let control_state = Arc::new(ControlState {
        metrics: metrics.clone(),
        sampler: sampler.clone(),
        queue: queue.clone(),
        routing: routing_rx.clone(),
        ready: AtomicBool::new(false),
        api_key: cfg.control.api_key.clone(),
        reload: reload_tx,
        started,
        health: health.clone(),
        views: views.clone(),
        limiter: Arc::new(RateLimiter::new(cfg.control.rate_limit)),
        log: opts.log.clone(),
    });
    let control_stop = CancellationToken::new();
    let mut control_task = None;
    if let Some(addr) = cfg.control.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (control.listen): {e}"))?;
        tracing::info!(addr = %l.local_addr()?, "control API listening");
        control_task = Some(tokio::spawn(control::serve(
            l,
            control_state.clone(),
            control_stop.clone(),
        )));
    }

    let health_stop = control_stop.clone();
    let health_interval = cfg.health.interval.0;
    let health_task = tokio::spawn({
        let health = health.clone();
        let sampler = sampler.clone();
        async move {
            let mut tick = tokio::time::interval(health_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        health.tick();
                        sampler.boosts(); // expires finished boosts and their gauges
                    }
                    _ = health_stop.cancelled() => break,
                }
            }
        }
    });

    let profiler = Profiler {
        config: cfg.profiling.clone(),
        extra_pids: opts.watch_pids.clone(),
        metrics: metrics.clone(),
        sampler: sampler.clone(),
        over_budget: over_budget.clone(),
        history: profile,
    }
    .spawn(control_stop.clone());

    control_state.ready.store(true, Ordering::Release);
    tracing::info!(
        socket = %cfg.ingest.socket.display(),
        sinks = sinks.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        config = %config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        "outrigger ready"
    );

    let mut reloader = Reloader {
        config: cfg,
        config_path,
        metrics: metrics.clone(),
        queue: queue.clone(),
        sampler: sampler.clone(),
        admission: admission.clone(),
        plugin_host,
        sink_ctx,
        sinks,
        routing: routing_tx,
        status: reload_status.clone(),
        set_log_level: opts.log.as_ref().map(|l| l.setter()),
        hooks: vec![
            {
                let profiling = profiler.reconfigurer();
                Box::new(move |c: &Config| {
                    profiling.send_replace(c.profiling.clone());
                })
            },
            {
                let state = control_state.clone();
                Box::new(move |c: &Config| {
                    state.views.reconfigure(
                        c.control.runs,
                        c.control.run_events,
                        &c.control.redact_fields,
                    );
                    state.limiter.set_rate(c.control.rate_limit);
                })
            },
        ],
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut watching = start_watcher(&reloader);
    loop {
        let targets = tokio::select! {
            _ = stop.cancelled() => break,
            Some(answer) = reload_rx.recv() => {
                let _ = answer.send(reloader.reload(Targets::ALL).await);
                None
            }
            _ = hangup.recv() => {
                tracing::info!("SIGHUP received: reloading config and plugins");
                Some(Targets::ALL)
            }
            Some(t) = next_change(&mut watching) => Some(t),
        };
        if let Some(t) = targets {
            let dir = reloader.config.plugins.dir.clone();
            let _ = reloader.reload(t).await;
            if reloader.config.plugins.dir != dir {
                watching = start_watcher(&reloader);
            }
        }
    }
    let Reloader {
        config: cfg,
        sinks,
        routing: routing_tx,
        ..
    } = reloader;

    // Shutdown: stop accepting, drain, flush.
    tracing::info!("shutting down: draining the queue");
    control_state.ready.store(false, Ordering::Release);
    ingest_stop.cancel();
    while listeners.join_next().await.is_some() {}
    queue.close();
    let grace = cfg.shutdown.grace.0;
    let drain = async {
        if let Err(e) = worker.await {
            tracing::error!(error = %e, "pipeline worker failed");
        }
        // The control API still reads the routing; release its sink senders so the sinks end.
        routing_tx.send_modify(|r| r.sinks.clear());
        for s in sinks {
            s.finish().await;
        }
    };
    tokio::pin!(drain);
    if tokio::time::timeout(grace, &mut drain).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over: sinks stop retrying"
        );
        abort.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut drain)
            .await
            .is_err()
        {
            tracing::error!("sinks did not finish after the grace period");
        }
    }
    control_stop.cancel();
    if let Some(t) = control_task {
        let _ = t.await;
    }
    let _ = health_task.await;
    profiler.join().await;
    let received: u64 = ["socket", "http"]
        .iter()
        .map(|s| metrics.events_received.with_label_values(&[s]).get())
        .sum();
    let dropped: u64 = crate::metrics::DropReason::ALL
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
    Ok(())
}
