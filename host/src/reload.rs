//! Hot reload: config and plugins change while the daemon runs, and nothing is lost.
//!
//! In: reload triggers from a debounced `notify` watcher on the config file and the plugins
//! directory ([`watch`]), SIGHUP, and `POST /v1/reload`. Out: the new config applied live
//! (kill switch, line limit, queue limits, sampling, batch settings, sinks added/removed/changed,
//! plugin chain and defaults, log level) and a new plugin set compiled in the background, both
//! handed to the pipeline worker as one [`Routing`] that it swaps in at a batch boundary. A bad
//! config or plugin keeps what runs now and says why (log, `reloads_total{result="error"}`, the
//! returned error). Settings that need a restart are reported, the rest is applied. The watcher
//! thread ends when the daemon drops its receiver.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, SinkConfig};
use crate::ingest::Admission;
use crate::metrics::Metrics;
use crate::pipeline::Routing;
use crate::plugins::PluginHost;
use crate::queue::Queue;
use crate::sampler::Sampler;
use crate::sinks::{self, SinkContext, SinkHandle};

/// What a reload should look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub config: bool,
    pub plugins: bool,
}

impl Targets {
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

/// Applies a new log filter; `Err` says why it was refused.
pub type LogLevelFn = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Applies the parts of a new config that live outside the pipeline (profiler budgets,
/// control API views and rate limit); called after a config was accepted.
pub type ConfigHook = Box<dyn Fn(&Config) + Send + Sync>;

/// Applies reloads to the running stages.
pub struct Reloader {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub metrics: Arc<Metrics>,
    pub queue: Arc<Queue>,
    pub sampler: Arc<Sampler>,
    pub admission: Arc<Admission>,
    pub plugin_host: Arc<PluginHost>,
    pub sink_ctx: SinkContext,
    pub sinks: Vec<SinkHandle>,
    pub routing: watch::Sender<Routing>,
    pub status: Arc<Mutex<ReloadStatus>>,
    pub set_log_level: Option<LogLevelFn>,
    pub hooks: Vec<ConfigHook>,
}

impl Reloader {
    /// Re-reads what `targets` names and applies it. `Ok` carries a short summary.
    pub async fn reload(&mut self, targets: Targets) -> Result<String, String> {
        let started = Instant::now();
        let mut summary = Vec::new();
        let mut new_cfg = self.config.clone();
        if targets.config {
            match config::load(self.config_path.as_deref()) {
                Ok(c) => new_cfg = c,
                Err(e) => return Err(self.fail("config", e.to_string())),
            }
        }
        let plugins_changed = targets.plugins
            || serde_json::to_value(&new_cfg.plugins).ok()
                != serde_json::to_value(&self.config.plugins).ok();
        if targets.config {
            let restart = self.apply_config(&mut new_cfg, &mut summary)?;
            self.status.lock().restart_needed = restart;
        }
        let mut routing = self.routing.borrow().clone();
        if plugins_changed {
            let host = self.plugin_host.clone();
            let pcfg = new_cfg.plugins.clone();
            let loaded = tokio::task::spawn_blocking(move || host.load_set(&pcfg)).await;
            match loaded {
                Ok(Ok(set)) => {
                    summary.push(format!("{} plugins", set.len()));
                    routing.plugins = set;
                    self.metrics
                        .reloads
                        .with_label_values(&["plugins", "ok"])
                        .inc();
                }
                Ok(Err(e)) => return Err(self.fail("plugins", format!("{e:#}"))),
                Err(e) => return Err(self.fail("plugins", format!("plugin loading failed: {e}"))),
            }
        }
        routing.batch = new_cfg.batch.clone();
        routing.sinks = self.sinks.iter().map(|s| s.tx.clone()).collect();
        self.routing.send_replace(routing);
        self.config = new_cfg;
        if targets.config {
            self.metrics
                .reloads
                .with_label_values(&["config", "ok"])
                .inc();
        }
        let mut st = self.status.lock();
        st.last_error = None;
        st.last_ok_unix_ms = Some(crate::event::now_ns() / 1_000_000);
        let s = if summary.is_empty() {
            "nothing changed".to_string()
        } else {
            summary.join("; ")
        };
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, summary = %s, "reloaded");
        Ok(s)
    }

    fn fail(&self, target: &str, error: String) -> String {
        self.metrics
            .reloads
            .with_label_values(&[target, "error"])
            .inc();
        tracing::error!(target, error = %error, "reload refused; the previous {target} keeps running");
        let msg = format!("{target}: {error}");
        self.status.lock().last_error = Some(msg.clone());
        msg
    }

    /// Applies everything that can change live; returns the keys that need a restart.
    fn apply_config(
        &mut self,
        new: &mut Config,
        summary: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        let old = &self.config;
        let mut restart = Vec::new();
        // Listeners are bound once: keep the running values and say so.
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
        if new.control.listen != old.control.listen {
            restart.push("control.listen".to_string());
            new.control.listen = old.control.listen;
        }
        if new.ingest.api_key != old.ingest.api_key {
            restart.push("ingest.api_key".to_string());
            new.ingest.api_key = old.ingest.api_key.clone();
        }
        if new.control.api_key != old.control.api_key {
            restart.push("control.api_key".to_string());
            new.control.api_key = old.control.api_key.clone();
        }
        if new.log.format != old.log.format {
            restart.push("log.format".to_string());
        }
        if !restart.is_empty() {
            tracing::warn!(keys = %restart.join(", "), "these settings change only on restart");
        }

        // Sinks first: the only part that can fail (a sink that cannot open).
        let mut kept: Vec<Option<SinkHandle>> = std::mem::take(&mut self.sinks)
            .into_iter()
            .map(Some)
            .collect();
        let mut next = Vec::new();
        let mut opened = Vec::new();
        for (i, s) in new.sinks.iter().enumerate() {
            let label = s.label(i);
            let same = kept.iter().position(|h| {
                h.as_ref()
                    .is_some_and(|h| h.label == label && same_sink(&h.config, s))
            });
            match same {
                Some(p) => next.push(kept[p].take().expect("present")),
                None => match sinks::spawn(label.clone(), s.clone(), self.sink_ctx.clone(), i == 0)
                {
                    Ok(h) => {
                        opened.push(label);
                        next.push(h);
                    }
                    Err(e) => {
                        // Roll back: the running sinks stay as they were.
                        let new_ones: Vec<SinkHandle> = next
                            .into_iter()
                            .filter(|h: &SinkHandle| opened.contains(&h.label))
                            .collect();
                        self.sinks = kept.into_iter().flatten().collect();
                        for h in new_ones {
                            tokio::spawn(h.finish());
                        }
                        return Err(self.fail("config", format!("{e:#}")));
                    }
                },
            }
        }
        let removed: Vec<SinkHandle> = kept.into_iter().flatten().collect();
        if !opened.is_empty() {
            summary.push(format!("sinks opened: {}", opened.join(", ")));
        }
        if !removed.is_empty() {
            summary.push(format!(
                "sinks closed: {}",
                removed
                    .iter()
                    .map(|h| h.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // A removed sink drains what it was given once the worker stops sending to it.
        for h in removed {
            tokio::spawn(h.finish());
        }
        self.sinks = next;

        if new.enabled != old.enabled {
            summary.push(format!("enabled: {}", new.enabled));
        }
        self.admission.enabled.store(new.enabled, Ordering::Relaxed);
        self.admission
            .max_line_bytes
            .store(new.ingest.max_line_bytes.0 as usize, Ordering::Relaxed);
        self.queue
            .reconfigure(new.queue.capacity, new.queue.on_full);
        if serde_json::to_value(&new.sampling).ok() != serde_json::to_value(&old.sampling).ok() {
            summary.push("sampling".into());
            self.sampler.reconfigure(new.sampling.clone());
        }
        if new.log.level != old.log.level
            && let Some(set) = &self.set_log_level
        {
            match set(&new.log.level) {
                Ok(()) => summary.push(format!("log level: {}", new.log.level)),
                Err(e) => tracing::warn!(error = %e, "log level not changed"),
            }
        }
        for hook in &self.hooks {
            hook(new);
        }
        Ok(restart)
    }
}

fn same_sink(a: &SinkConfig, b: &SinkConfig) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// A running file watcher; dropping it stops the watching.
pub struct ConfigWatcher {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
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
            loop {
                let ev = if pending == Targets::default() {
                    match raw_rx.recv() {
                        Ok(ev) => Some(ev),
                        Err(_) => return,
                    }
                } else {
                    match raw_rx.recv_timeout(quiet) {
                        Ok(ev) => Some(ev),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(_) => return,
                    }
                };
                match ev {
                    Some(Ok(ev)) => {
                        if matches!(ev.kind, notify::EventKind::Access(_)) {
                            continue;
                        }
                        for p in &ev.paths {
                            if config.as_ref() == Some(p) {
                                pending.config = true;
                            }
                            if p == &plugins {
                                // The directory itself came or went: (re)watch it, reload plugins.
                                if plugins.is_dir()
                                    && let Some(w) = w2.upgrade()
                                {
                                    let _ = w.lock().watch(&plugins, RecursiveMode::NonRecursive);
                                }
                                pending.plugins = true;
                            } else if p.parent() == Some(plugins.as_path()) {
                                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                                if matches!(ext, "wasm" | "yml" | "yaml") {
                                    pending.plugins = true;
                                }
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "file watcher error"),
                    None => {
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
