//! Hot reload: config and plugins change while the daemon runs, and nothing is lost.
//!
//! In: reload triggers from a debounced `notify` watcher on the config file and the plugins
//! directory ([`watch`]), SIGHUP, and `POST /v1/reload`. The [`Reloader`] coordinates: it reads
//! the new config, keeps the settings that need a restart (and reports them), then prepares
//! everything that can fail (new sinks opened, a new plugin set compiled in the background)
//! before it changes anything. A bad config, sink or plugin keeps what runs now and says why
//! (log, `reloads_total{result="error"}`, the returned [`ReloadError`], health). Once prepared,
//! the change is committed: the sink plan and the data-plane [`Routing`] go to the pipeline
//! worker (which applies them before the next event), and every other stage reconfigures
//! itself from the new config ([`Reconfigure`]). Only then is the reload reported. The watcher
//! thread ends when the daemon drops its receiver.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, SinkConfig};
use crate::control::limit::RateLimiter;
use crate::control::views::EventViews;
use crate::ingest::Admission;
use crate::metrics::Metrics;
use crate::pipeline::Routing;
use crate::plugins::{PluginHost, PluginSet};
use crate::queue::Queue;
use crate::sampler::Sampler;
use crate::sinks::{PlannedSink, SinkContext, SinkHandle, SinkPlan};

/// What a reload should look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub config: bool,
    pub plugins: bool,
}

impl Targets {
    /// The config file and the plugins directory.
    pub const ALL: Targets = Targets {
        config: true,
        plugins: true,
    };
}

/// The last reload failure, for health and `/v1/plugins`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub last_error: Option<String>,
    pub last_ok_unix_ms: Option<u64>,
    pub restart_needed: Vec<String>,
}

/// Why a reload was refused; what runs now keeps running.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file could not be read or validated, or a sink could not open.
    #[error("config: {0}")]
    Config(String),
    /// The plugin set could not be loaded.
    #[error("plugins: {0}")]
    Plugins(String),
}

impl ReloadError {
    /// The `target` label of `reloads_total`.
    pub fn target(&self) -> &'static str {
        match self {
            ReloadError::Config(_) => "config",
            ReloadError::Plugins(_) => "plugins",
        }
    }
}

/// Applies a new log filter; `Err` says why it was refused.
pub type LogLevelFn = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A stage that takes its live settings from a new, accepted config.
pub trait Reconfigure: Send + Sync {
    /// Applies what this stage can change live; never fails (the config was validated).
    fn reconfigure(&self, cfg: &Config);
}

impl Reconfigure for Queue {
    fn reconfigure(&self, cfg: &Config) {
        Queue::reconfigure(self, cfg.queue.capacity, cfg.queue.on_full);
    }
}

impl Reconfigure for Sampler {
    fn reconfigure(&self, cfg: &Config) {
        Sampler::reconfigure(self, cfg.sampling.clone());
    }
}

impl Reconfigure for Admission {
    fn reconfigure(&self, cfg: &Config) {
        self.enabled.store(cfg.enabled, Ordering::Relaxed);
        self.max_line_bytes
            .store(cfg.ingest.max_line_bytes.0 as usize, Ordering::Relaxed);
    }
}

impl Reconfigure for EventViews {
    fn reconfigure(&self, cfg: &Config) {
        EventViews::reconfigure(self, &cfg.control.redact_fields);
    }
}

impl Reconfigure for RateLimiter {
    fn reconfigure(&self, cfg: &Config) {
        self.set_rate(cfg.control.rate_limit);
    }
}

/// The profiler's settings channel.
impl Reconfigure for watch::Sender<crate::config::ProfilingConfig> {
    fn reconfigure(&self, cfg: &Config) {
        self.send_replace(cfg.profiling.clone());
    }
}

/// The data plane's side of a reload: the worker's channels and the sinks it runs.
pub struct DataPlane {
    pub routing: watch::Sender<Routing>,
    pub sink_plans: mpsc::UnboundedSender<SinkPlan>,
    pub sink_ctx: SinkContext,
    /// What the worker runs now: label and config of each sink, in order.
    pub sinks: Vec<(String, SinkConfig)>,
    pub plugin_host: Arc<PluginHost>,
}

/// Coordinates reloads of the running stages.
pub struct Reloader {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub metrics: Arc<Metrics>,
    pub data: DataPlane,
    /// Every stage outside the data plane, reconfigured after the data plane.
    pub stages: Vec<Arc<dyn Reconfigure>>,
    pub status: Arc<Mutex<ReloadStatus>>,
    pub set_log_level: Option<LogLevelFn>,
}

/// A reload prepared and ready to commit.
struct Prepared {
    config: Config,
    plan: Option<SinkPlan>,
    plugins: Option<Arc<PluginSet>>,
    summary: Vec<String>,
}

impl Reloader {
    /// Re-reads what `targets` names and applies it. `Ok` carries a short summary; by the time
    /// it returns, every event admitted later goes through the new chain and sinks.
    pub async fn reload(&mut self, targets: Targets) -> Result<String, ReloadError> {
        let started = Instant::now();
        let prepared = match self.prepare(targets).await {
            Ok(p) => p,
            Err(e) => return Err(self.fail(e)),
        };
        let summary = self.commit(prepared, targets);
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, summary = %summary, "reloaded");
        Ok(summary)
    }

    /// Reads the config, opens new sinks and loads plugins; changes nothing that runs.
    async fn prepare(&mut self, targets: Targets) -> Result<Prepared, ReloadError> {
        let mut config = self.config.clone();
        let mut summary = Vec::new();
        if targets.config {
            config = config::load(self.config_path.as_deref())
                .map_err(|e| ReloadError::Config(e.to_string()))?;
            let restart = keep_restart_only(&self.config, &mut config);
            if !restart.is_empty() {
                tracing::warn!(keys = %restart.join(", "), "these settings change only on restart");
            }
            self.status.lock().restart_needed = restart;
        }
        let plan = self.plan_sinks(&config, &mut summary)?;
        let plugins_changed = targets.plugins
            || serde_json::to_value(&config.plugins).ok()
                != serde_json::to_value(&self.config.plugins).ok();
        let mut plugins = None;
        if plugins_changed {
            match self.load_plugins(&config).await {
                Ok(set) => {
                    summary.push(format!("{} plugins", set.len()));
                    plugins = Some(set);
                }
                Err(e) => {
                    // Roll back: sinks opened for this reload are closed unused.
                    drop(plan);
                    return Err(e);
                }
            }
        }
        Ok(Prepared {
            config,
            plan,
            plugins,
            summary,
        })
    }

    async fn load_plugins(&self, config: &Config) -> Result<Arc<PluginSet>, ReloadError> {
        let host = self.data.plugin_host.clone();
        let pcfg = config.plugins.clone();
        match tokio::task::spawn_blocking(move || host.load_set(&pcfg)).await {
            Ok(Ok(set)) => Ok(set),
            Ok(Err(e)) => Err(ReloadError::Plugins(format!("{e:#}"))),
            Err(e) => Err(ReloadError::Plugins(format!("plugin loading failed: {e}"))),
        }
    }

    /// The sink plan for `new`: unchanged sinks kept, changed and new ones opened. `None` when
    /// nothing changes. A sink that cannot open refuses the reload.
    fn plan_sinks(
        &self,
        new: &Config,
        summary: &mut Vec<String>,
    ) -> Result<Option<SinkPlan>, ReloadError> {
        let mut sinks = Vec::new();
        let (mut opened, mut kept) = (Vec::new(), HashSet::new());
        for (i, s) in new.sinks.iter().enumerate() {
            let label = s.label(i);
            let same = self
                .data
                .sinks
                .iter()
                .any(|(l, c)| *l == label && same_sink(c, s));
            if same {
                kept.insert(label.clone());
                sinks.push(PlannedSink::Keep(label));
                continue;
            }
            // An error drops `sinks`, which closes the ones opened so far.
            let h = SinkHandle::spawn(label.clone(), s.clone(), self.data.sink_ctx.clone(), i == 0)
                .map_err(|e| ReloadError::Config(format!("{e:#}")))?;
            opened.push(label);
            sinks.push(PlannedSink::Open(Box::new(h)));
        }
        let closed: Vec<&str> = self
            .data
            .sinks
            .iter()
            .map(|(l, _)| l.as_str())
            .filter(|l| !kept.contains(*l))
            .collect();
        if opened.is_empty() && closed.is_empty() {
            return Ok(None);
        }
        if !opened.is_empty() {
            summary.push(format!("sinks opened: {}", opened.join(", ")));
        }
        if !closed.is_empty() {
            summary.push(format!("sinks closed: {}", closed.join(", ")));
        }
        Ok(Some(SinkPlan { sinks }))
    }

    /// Hands the prepared change to the worker and the stages; returns the summary.
    fn commit(&mut self, p: Prepared, targets: Targets) -> String {
        let Prepared {
            config,
            plan,
            plugins,
            mut summary,
        } = p;
        if let Some(plan) = plan {
            self.data.sinks = config
                .sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (s.label(i), s.clone()))
                .collect();
            if self.data.sink_plans.send(plan).is_err() {
                tracing::error!("the pipeline worker has ended: sink changes not applied");
            }
        }
        self.data.routing.send_modify(|r| {
            r.batch = config.batch.clone();
            if let Some(set) = plugins.clone() {
                r.plugins = set;
            }
        });
        if plugins.is_some() {
            self.count("plugins", "ok");
        }
        self.describe_config_changes(&config, &mut summary);
        for stage in &self.stages {
            stage.reconfigure(&config);
        }
        self.config = config;
        if targets.config {
            self.count("config", "ok");
        }
        let mut st = self.status.lock();
        st.last_error = None;
        st.last_ok_unix_ms = Some(crate::event::now_ns() / 1_000_000);
        if summary.is_empty() {
            "nothing changed".to_string()
        } else {
            summary.join("; ")
        }
    }

    /// Summary lines for live changes outside the sinks and plugins, and the log level.
    fn describe_config_changes(&self, new: &Config, summary: &mut Vec<String>) {
        let old = &self.config;
        if new.enabled != old.enabled {
            summary.push(format!("enabled: {}", new.enabled));
        }
        if serde_json::to_value(&new.sampling).ok() != serde_json::to_value(&old.sampling).ok() {
            summary.push("sampling".into());
        }
        if new.log.level != old.log.level
            && let Some(set) = &self.set_log_level
        {
            match set(&new.log.level) {
                Ok(()) => summary.push(format!("log level: {}", new.log.level)),
                Err(e) => tracing::warn!(error = %e, "log level not changed"),
            }
        }
    }

    fn count(&self, target: &str, result: &str) {
        self.metrics
            .reloads
            .with_label_values(&[target, result])
            .inc();
    }

    fn fail(&self, e: ReloadError) -> ReloadError {
        let target = e.target();
        self.count(target, "error");
        tracing::error!(target, error = %e, "reload refused; the previous {target} keeps running");
        self.status.lock().last_error = Some(e.to_string());
        e
    }
}

/// Keeps the running values of settings that only change on restart; returns their keys.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut restart = Vec::new();
    // Listeners are bound once, and their keys are read once.
    if new.ingest.socket != old.ingest.socket {
        restart.push("ingest.socket".to_string());
        new.ingest.socket = old.ingest.socket.clone();
    }
    if new.ingest.socket_mode != old.ingest.socket_mode {
        restart.push("ingest.socket_mode".to_string());
        new.ingest.socket_mode = old.ingest.socket_mode;
    }
    if new.ingest.socket_group != old.ingest.socket_group {
        restart.push("ingest.socket_group".to_string());
        new.ingest.socket_group = old.ingest.socket_group.clone();
    }
    if new.ingest.http != old.ingest.http {
        restart.push("ingest.http".to_string());
        new.ingest.http = old.ingest.http;
    }
    if new.ingest.api_key != old.ingest.api_key {
        restart.push("ingest.api_key".to_string());
        new.ingest.api_key = old.ingest.api_key.clone();
    }
    if new.control.listen != old.control.listen {
        restart.push("control.listen".to_string());
        new.control.listen = old.control.listen;
    }
    if new.control.api_key != old.control.api_key {
        restart.push("control.api_key".to_string());
        new.control.api_key = old.control.api_key.clone();
    }
    if new.log.format != old.log.format {
        restart.push("log.format".to_string());
    }
    // The write-ahead log is opened (and replayed) once: turning it on or off, or moving it,
    // needs a restart; its other keys (fsync, max_bytes, segment_bytes, commit_interval) reload live.
    match (&old.queue.durable, &mut new.queue.durable) {
        (None, None) => {}
        (Some(o), Some(n)) if o.dir == n.dir => {}
        _ => {
            restart.push("queue.durable".to_string());
            new.queue.durable = old.queue.durable.clone();
        }
    }
    restart
}

fn same_sink(a: &SinkConfig, b: &SinkConfig) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// A running file watcher; dropping it stops the watching.
pub struct ConfigWatcher {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
}

/// Marks what a file-system event touches: the config file, or the plugins directory (a
/// component or its config in it, or the directory itself, which is then watched again).
/// True when it touched one of them.
fn classify(
    ev: &notify::Event,
    config: Option<&Path>,
    plugins: &Path,
    watcher: Option<&Mutex<notify::RecommendedWatcher>>,
    pending: &mut Targets,
) -> bool {
    use notify::{RecursiveMode, Watcher};
    if matches!(ev.kind, notify::EventKind::Access(_)) {
        return false;
    }
    let mut touched = false;
    for p in &ev.paths {
        if config == Some(p.as_path()) {
            pending.config = true;
            touched = true;
        }
        if p == plugins {
            // The directory itself came or went: (re)watch it, reload plugins.
            if plugins.is_dir()
                && let Some(w) = watcher
            {
                let _ = w.lock().watch(plugins, RecursiveMode::NonRecursive);
            }
            pending.plugins = true;
            touched = true;
        } else if p.parent() == Some(plugins) {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "wasm" | "yml" | "yaml") {
                pending.plugins = true;
                touched = true;
            }
        }
    }
    touched
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    // Resolve symlinks in the directory part (e.g. /tmp on some systems), keep the file name.
    match (
        p.parent().and_then(|d| d.canonicalize().ok()),
        p.file_name(),
    ) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => p,
    }
}

/// Watches the config file (through its directory, so an editor's rename-over is seen) and the
/// plugins directory (through its parent too, so a re-created directory is seen). Changes are
/// debounced (`quiet` without further events) and sent as [`Targets`].
pub fn watch(
    config: Option<&Path>,
    plugins_dir: &Path,
    quiet: Duration,
) -> anyhow::Result<(ConfigWatcher, mpsc::Receiver<Targets>)> {
    use notify::{RecursiveMode, Watcher};
    let config = config.map(absolute);
    let plugins = absolute(plugins_dir);
    let (raw_tx, raw_rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = raw_tx.send(ev);
    })?;
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    if let Some(dir) = config.as_ref().and_then(|c| c.parent()) {
        dirs.insert(dir.to_path_buf());
    }
    if let Some(parent) = plugins.parent() {
        dirs.insert(parent.to_path_buf());
    }
    for d in &dirs {
        if d.is_dir() {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
    }
    if plugins.is_dir() {
        watcher.watch(&plugins, RecursiveMode::NonRecursive)?;
    }
    let (tx, rx) = mpsc::channel(8);
    let watcher = Arc::new(Mutex::new(watcher));
    // Weak: dropping the ConfigWatcher drops the watcher, which ends the thread.
    let w2 = Arc::downgrade(&watcher);
    std::thread::Builder::new()
        .name("outrigger-watch".into())
        .spawn(move || {
            let mut pending = Targets::default();
            // The quiet period runs from the last change to a watched file; other events in
            // the same directories (a log file read or written there) do not extend it.
            let mut due: Option<std::time::Instant> = None;
            loop {
                let ev = match due {
                    None => match raw_rx.recv() {
                        Ok(ev) => Some(ev),
                        Err(_) => return,
                    },
                    Some(at) => {
                        let wait = at.saturating_duration_since(std::time::Instant::now());
                        match raw_rx.recv_timeout(wait) {
                            Ok(ev) => Some(ev),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                            Err(_) => return,
                        }
                    }
                };
                match ev {
                    Some(Ok(ev)) => {
                        let w = w2.upgrade();
                        if classify(&ev, config.as_deref(), &plugins, w.as_deref(), &mut pending) {
                            due = Some(std::time::Instant::now() + quiet);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "file watcher error"),
                    None => {
                        due = None;
                        let t = std::mem::take(&mut pending);
                        if tx.blocking_send(t).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;
    Ok((ConfigWatcher { _watcher: watcher }, rx))
}
