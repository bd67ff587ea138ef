//! Loading plugins: the [`PluginHost`] finds, compiles and configures them into an immutable
//! [`PluginSet`].
//!
//! In: `plugins.dir` (every `*.wasm`, name = file stem, `NAME.yml` beside it as its config),
//! `plugins.defaults` and `plugins.chain` (order, overrides, `types` routing, `enabled`,
//! `grants`: a component importing what it was not granted is refused, see [`super::grants`]).
//! Out: an `Arc<PluginSet>`: the plugins in call order (samplers first, then handlers; within
//! each, chain order, then the others by name), each with its compiled component, settings and
//! shared health (call counts, consecutive failures, quarantine), plus the plugins that failed
//! to load, with the reason. A failure of one plugin never fails the set. Loading again (hot
//! reload) reuses the compiled component and the health of every file whose bytes did not
//! change; a plugin whose new file or config cannot be loaded keeps its previous version
//! running, unless its grants changed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{HandlerPre, SamplerPre};
use super::grants::{self, PluginGrants};
use super::imports::{PluginCtx, State};
use super::runtime::{self, CompileInfo, Runtime};
use super::shadow::ShadowReport;
use super::{AnomalyFn, PluginError};
use crate::config::{ChainEntry, Grants, OnError, PluginsConfig};
use crate::metrics::Metrics;

/// The world a component implements, with its pre-instantiated form.
pub enum World {
    Handler(HandlerPre<State>),
    Sampler(SamplerPre<State>),
}

impl World {
    pub fn name(&self) -> &'static str {
        match self {
            World::Handler(_) => "handler",
            World::Sampler(_) => "sampler",
        }
    }
}

/// A compiled component, shareable across plugin sets (hot reload reuses it by hash and
/// linker).
pub struct Compiled {
    pub world: World,
    pub info: CompileInfo,
    /// What the component imports (`wasi:cli/environment@0.2.6`, …).
    pub imports: Vec<String>,
    /// Linked with `wasi:http` (for a plugin granted `http`).
    pub http: bool,
}

/// Compiled components are reused by file hash and by linker (with or without `wasi:http`).
type CompiledKey = ([u8; 32], bool);

/// Limits and error policy of one plugin (defaults with its chain overrides applied).
#[derive(Clone, Debug)]
pub struct Settings {
    pub fuel_per_event: u64,
    pub memory_bytes: usize,
    /// The least wall-clock time a call gets, however short its batch.
    pub timeout: Duration,
    /// Wall-clock time a call gets per event it is given (0: none beyond `timeout`).
    pub timeout_per_event: Duration,
    pub on_error: OnError,
    pub quarantine_after: u32,
    pub quarantine_initial: Duration,
    pub quarantine_max: Duration,
}

impl Settings {
    /// The wall-clock bound of one call over `events` events: `timeout`, or
    /// `timeout_per_event × events` when that is longer (saturating), so that time scales with
    /// the batch as fuel does.
    pub fn call_timeout(&self, events: usize) -> Duration {
        let per_event = self
            .timeout_per_event
            .as_nanos()
            .saturating_mul(events as u128)
            .min(u64::MAX as u128) as u64;
        self.timeout.max(Duration::from_nanos(per_event))
    }
}

/// One loaded plugin.
pub struct Plugin {
    pub name: Arc<str>,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub runtime: Arc<Runtime>,
    pub compiled: Arc<Compiled>,
    pub settings: Settings,
    /// Only events of these types go to the plugin (`None`: all).
    pub types: Option<HashSet<String>>,
    pub optional: bool,
    /// The config passed to `init`, as JSON text.
    pub config_json: String,
    /// `plugins.chain[].grants` as the plugin was loaded with them.
    pub grants: Grants,
    pub ctx: Arc<PluginCtx>,
    pub health: Arc<Health>,
    pub m_calls: prometheus::IntCounter,
    pub m_fuel: prometheus::IntCounter,
    pub m_duration: prometheus::Histogram,
    pub m_recycled: prometheus::IntCounter,
}

impl Plugin {
    pub fn is_sampler(&self) -> bool {
        matches!(self.compiled.world, World::Sampler(_))
    }

    /// Counts a failed call or instantiation; quarantines after `quarantine_after` in a row.
    pub fn failed(&self, err: &PluginError) {
        let m = &self.ctx.metrics;
        m.plugin_errors
            .with_label_values(&[&*self.name, err.kind.as_str()])
            .inc();
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        let s = &self.settings;
        let mut h = self.health.inner.lock();
        h.consecutive += 1;
        h.last_error = Some(format!("{}: {}", err.kind.as_str(), err.message));
        self.health.failing.store(h.consecutive, Ordering::Relaxed);
        if h.consecutive >= s.quarantine_after.max(1) {
            let period = match h.backoff {
                None => s.quarantine_initial,
                Some(b) => (b * 2).min(s.quarantine_max),
            };
            h.backoff = Some(period);
            h.until = Some((Instant::now() + period, SystemTime::now() + period));
            self.health.quarantined.store(true, Ordering::Release);
            m.plugin_quarantined
                .with_label_values(&[&*self.name])
                .set(1);
            tracing::warn!(plugin = %self.name, kind = err.kind.as_str(), failures = h.consecutive, for_ms = period.as_millis() as u64, error = %err.message, "plugin quarantined: batches bypass it");
        } else {
            tracing::warn!(plugin = %self.name, kind = err.kind.as_str(), failures = h.consecutive, error = %err.message, "plugin call failed");
        }
    }

    /// Counts a successful call; a success ends a run of failures and resets the back-off.
    pub fn succeeded(&self) {
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        if self.health.failing.load(Ordering::Relaxed) > 0 {
            let mut h = self.health.inner.lock();
            if h.consecutive > 0 {
                tracing::info!(plugin = %self.name, after_failures = h.consecutive, "plugin recovered");
            }
            h.consecutive = 0;
            h.backoff = None;
            self.health.failing.store(0, Ordering::Relaxed);
        }
    }

    /// Whether batches bypass the plugin now. Ends an expired quarantine (the next call tries
    /// a new instance; one more failure quarantines it again for twice as long).
    pub fn quarantined(&self) -> bool {
        if !self.health.quarantined.load(Ordering::Acquire) {
            return false;
        }
        let mut h = self.health.inner.lock();
        match h.until {
            Some((until, _)) if Instant::now() < until => true,
            _ => {
                h.until = None;
                self.health.quarantined.store(false, Ordering::Release);
                self.ctx
                    .metrics
                    .plugin_quarantined
                    .with_label_values(&[&*self.name])
                    .set(0);
                tracing::info!(plugin = %self.name, "plugin quarantine over: trying it again");
                false
            }
        }
    }

    fn status(&self) -> PluginStatus {
        let h = self.health.inner.lock();
        let until = h
            .until
            .filter(|(i, _)| Instant::now() < *i)
            .map(|(_, wall)| unix_secs(wall));
        let mut types: Option<Vec<String>> =
            self.types.as_ref().map(|t| t.iter().cloned().collect());
        if let Some(t) = types.as_mut() {
            t.sort();
        }
        let state = if until.is_some() {
            PluginState::Quarantined
        } else if h.newer_refused {
            PluginState::KeptPrevious
        } else {
            PluginState::Active
        };
        PluginStatus {
            name: self.name.to_string(),
            state,
            world: self.compiled.world.name().into(),
            path: self.path.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            calls: self.health.calls.load(Ordering::Relaxed),
            errors: self.health.errors.load(Ordering::Relaxed),
            consecutive_failures: h.consecutive,
            quarantined: until.is_some(),
            quarantined_until: until,
            last_error: h.last_error.clone(),
            types,
            optional: self.optional,
            compile_ms: Some(self.compiled.info.took.as_secs_f64() * 1e3),
            from_cache: Some(self.compiled.info.from_cache),
            shadow: None,
        }
    }
}

/// The inverse of `runtime::hex` for a sha256.
fn hex_to_sha(hex: &str) -> Result<[u8; 32], ()> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return Err(());
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| ())?;
    }
    Ok(out)
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Call counts and quarantine state of one plugin, shared by every worker's chain (and kept
/// across reloads while the file is unchanged).
#[derive(Default)]
pub struct Health {
    calls: AtomicU64,
    errors: AtomicU64,
    /// Mirrors `inner.consecutive`, so a success needs no lock.
    failing: AtomicU32,
    /// Set while a quarantine may be running; `inner.until` says until when.
    quarantined: AtomicBool,
    inner: Mutex<HealthInner>,
    /// For a shadow: how it compared with the live plugin.
    pub shadow: Mutex<ShadowReport>,
}

#[derive(Default)]
struct HealthInner {
    consecutive: u32,
    backoff: Option<Duration>,
    until: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    /// Set while a newer file of this plugin was refused and this version kept running.
    newer_refused: bool,
}

/// What a plugin is doing now, for health and `GET /v1/plugins`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Loaded and called.
    Active,
    /// Bypassed until its quarantine ends.
    Quarantined,
    /// Its newest file could not be loaded: the previous version keeps running.
    KeptPrevious,
    /// It could not be loaded at all; batches go on without it.
    Failed,
}

/// A plugin as `GET /v1/plugins`, health and `outrigger check` show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub state: PluginState,
    /// `handler`, `sampler`, or `unknown` when it failed to load.
    pub world: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// Successful batch calls.
    pub calls: u64,
    /// Failed calls and instantiations.
    pub errors: u64,
    pub consecutive_failures: u32,
    /// True while batches bypass the plugin.
    pub quarantined: bool,
    /// Unix seconds when the quarantine ends.
    pub quarantined_until: Option<f64>,
    /// The last failure (`kind: message`), or why the plugin could not be loaded.
    pub last_error: Option<String>,
    pub types: Option<Vec<String>>,
    pub optional: bool,
    pub compile_ms: Option<f64>,
    pub from_cache: Option<bool>,
    /// Its shadow (`NAME.shadow.wasm`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowStatus>>,
}

/// A shadow as `GET /v1/plugins` shows it under its live plugin: its own status and how its
/// answers compared.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShadowStatus {
    #[serde(flatten)]
    pub status: PluginStatus,
    pub comparison: ShadowReport,
}

/// An immutable set of loaded plugins in call order.
pub struct PluginSet {
    pub(crate) plugins: Vec<Arc<Plugin>>,
    failed: Vec<PluginStatus>,
    /// Shadows by the live plugin's name: loaded, or why not.
    shadows: HashMap<String, Result<Arc<Plugin>, PluginStatus>>,
}

impl PluginSet {
    /// Every plugin, loaded or not, in call order (failed ones last), each with its shadow.
    pub fn status(&self) -> Vec<PluginStatus> {
        let mut out: Vec<PluginStatus> = self
            .plugins
            .iter()
            .map(|p| {
                let mut st = p.status();
                st.shadow = self.shadows.get(&*p.name).map(|s| {
                    Box::new(match s {
                        Ok(sh) => ShadowStatus {
                            status: sh.status(),
                            comparison: sh.health.shadow.lock().clone(),
                        },
                        Err(failed) => ShadowStatus {
                            status: failed.clone(),
                            comparison: ShadowReport::default(),
                        },
                    })
                });
                st
            })
            .collect();
        out.extend(self.failed.iter().cloned());
        out
    }

    /// The loaded shadow of the plugin `name`.
    pub fn shadow_of(&self, name: &str) -> Option<Arc<Plugin>> {
        self.shadows.get(name)?.as_ref().ok().cloned()
    }

    /// The live plugin `name` (for promoting its shadow).
    pub fn plugin(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.iter().find(|p| &*p.name == name)
    }

    /// The file of the shadow of `name`, loaded or not.
    pub fn shadow_path(&self, name: &str) -> Option<PathBuf> {
        Some(match self.shadows.get(name)? {
            Ok(p) => p.path.clone(),
            Err(st) => st.path.clone(),
        })
    }

    /// True when no plugin is loaded (batches pass through untouched).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// How many plugins are loaded (failed ones not counted).
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// A set with no plugins.
    pub fn empty() -> PluginSet {
        PluginSet {
            plugins: Vec::new(),
            failed: Vec::new(),
            shadows: HashMap::new(),
        }
    }
}

/// A plugin's name and file hash.
type HealthKey = (String, [u8; 32]);

/// The plugin runtime: engine, epoch ticker, compile cache; loads plugin sets.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    /// Made when the first plugin is compiled ([`HostInner::runtime`]).
    runtime: Mutex<Option<Arc<Runtime>>>,
    /// The compile cache's directory, for the runtime.
    cache: Option<PathBuf>,
    metrics: Arc<Metrics>,
    anomaly: AnomalyFn,
    /// Components of the last loaded set, by file hash and linker, for reuse on reload.
    compiled: Mutex<HashMap<CompiledKey, Arc<Compiled>>>,
    /// Health of the last loaded set, by plugin name and file hash.
    health: Mutex<HashMap<HealthKey, Arc<Health>>>,
    /// The plugins of the last loaded set, by name: a reload that cannot load a plugin's new
    /// file or config keeps this one running.
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
}

impl HostInner {
    /// The runtime (engine, linkers, epoch ticker), made on first use: a daemon without
    /// plugins never builds it, and the code that would keep resident (the engine's setup,
    /// the WASI and `wasi:http` linkers) is never touched.
    fn runtime(&self) -> anyhow::Result<Arc<Runtime>> {
        let mut slot = self.runtime.lock();
        if let Some(rt) = &*slot {
            return Ok(rt.clone());
        }
        let rt = Arc::new(Runtime::new(self.cache.clone())?);
        *slot = Some(rt.clone());
        Ok(rt)
    }
}

impl PluginHost {
    /// Whether the runtime has been made.
    #[cfg(test)]
    pub fn runtime_made(&self) -> bool {
        self.inner.runtime.lock().is_some()
    }

    /// The host; the runtime itself is made when the first plugin is compiled.
    /// `cfg.cache_dir` (or the default cache location) is fixed for the host's lifetime;
    /// `metrics` and `anomaly` are handed to every plugin.
    pub fn new(
        cfg: &PluginsConfig,
        metrics: Arc<Metrics>,
        anomaly: AnomalyFn,
    ) -> anyhow::Result<PluginHost> {
        let cache = runtime::cache_dir(cfg.cache_dir.as_deref()).map(|d| d.join("components"));
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                runtime: Mutex::new(None),
                cache,
                metrics,
                anomaly,
                compiled: Mutex::new(HashMap::new()),
                health: Mutex::new(HashMap::new()),
                loaded: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Loads every `*.wasm` in `cfg.dir` (a missing directory is an empty set). Fails only if
    /// the directory cannot be read; a plugin that cannot be loaded is logged, counted in
    /// `reloads_total{target="plugin",result="error"}` and listed with its reason in the set's
    /// status.
    pub fn load_set(&self, cfg: &PluginsConfig) -> anyhow::Result<Arc<PluginSet>> {
        let (files, shadows): (Vec<_>, Vec<_>) = wasm_files(&cfg.dir)?
            .into_iter()
            .partition(|(n, _)| !n.ends_with(SHADOW_SUFFIX));
        let names: HashSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let mut ordered: Vec<(String, PathBuf)> = Vec::new();
        let mut missing = Vec::new();
        for entry in &cfg.chain {
            if let Some(f) = files.iter().find(|(n, _)| *n == entry.name) {
                if !ordered.iter().any(|(n, _)| *n == entry.name) {
                    ordered.push(f.clone());
                }
            } else if entry.enabled != Some(false) && !names.contains(&entry.name) {
                missing.push(entry.name.clone());
            }
        }
        for f in files {
            if !ordered.iter().any(|(n, _)| *n == f.0) {
                ordered.push(f);
            }
        }
        // What the previous set compiled, so that a shadow that did not change is not compiled
        // again and keeps its comparison (`load_files` keeps only what the new set uses).
        let old_compiled = self.inner.compiled.lock().clone();
        let old_health = self.inner.health.lock().clone();
        let mut set = self.load_files(cfg, ordered);
        self.load_shadows(cfg, &mut set, shadows, old_compiled, old_health);
        for name in missing {
            let path = cfg.dir.join(format!("{name}.wasm"));
            let err = format!("named in plugins.chain but there is no {}", path.display());
            tracing::warn!(plugin = %name, "{err}");
            self.inner
                .metrics
                .reloads
                .with_label_values(&["plugin", "error"])
                .inc();
            set.failed.push(failed_status(&name, &path, None, err));
        }
        Ok(Arc::new(set))
    }

    /// Loads the given plugin files (name, path), in that order but samplers first; settings
    /// and configs come from `cfg` as for [`PluginHost::load_set`].
    pub(crate) fn load_files(
        &self,
        cfg: &PluginsConfig,
        files: Vec<(String, PathBuf)>,
    ) -> PluginSet {
        let mut plugins = Vec::new();
        let mut failed = Vec::new();
        let mut compiled = HashMap::new();
        let mut health = HashMap::new();
        for (name, path) in files {
            let entry = cfg.chain.iter().find(|c| c.name == name);
            if entry.and_then(|e| e.enabled) == Some(false) {
                tracing::debug!(plugin = %name, "plugin disabled in plugins.chain");
                continue;
            }
            match self.load_one(cfg, entry, &name, &path, None) {
                Ok((plugin, sha)) => {
                    tracing::info!(
                        plugin = %name,
                        world = plugin.compiled.world.name(),
                        from_cache = plugin.compiled.info.from_cache,
                        compile_ms = plugin.compiled.info.took.as_millis() as u64,
                        "plugin loaded"
                    );
                    self.inner
                        .metrics
                        .reloads
                        .with_label_values(&["plugin", "ok"])
                        .inc();
                    plugin.health.inner.lock().newer_refused = false;
                    compiled.insert((sha, plugin.compiled.http), plugin.compiled.clone());
                    health.insert((name.clone(), sha), plugin.health.clone());
                    plugins.push(Arc::new(plugin));
                }
                Err((err, sha, size)) => {
                    let msg = format!("{err:#}");
                    self.inner
                        .metrics
                        .reloads
                        .with_label_values(&["plugin", "error"])
                        .inc();
                    // The previous version keeps running only under the grants it was loaded
                    // with: a config that changed them (a revoked grant) stops it too.
                    let grants = entry.map(|e| e.grants.clone()).unwrap_or_default();
                    let previous = self.inner.loaded.lock().get(&name).cloned();
                    let previous = match previous {
                        Some(p) if p.grants != grants => {
                            tracing::warn!(plugin = %name, "its grants changed: the previous version stops too");
                            None
                        }
                        p => p,
                    };
                    match previous {
                        Some(prev) => {
                            tracing::error!(plugin = %name, path = %path.display(), error = %msg, "new version not loaded: the previous one keeps running");
                            {
                                let mut h = prev.health.inner.lock();
                                h.newer_refused = true;
                                h.last_error =
                                    Some(format!("reload refused, previous version kept: {msg}"));
                            }
                            if let Ok(sha) = hex_to_sha(&prev.sha256) {
                                compiled.insert((sha, prev.compiled.http), prev.compiled.clone());
                                health.insert((name.clone(), sha), prev.health.clone());
                            }
                            plugins.push(prev);
                        }
                        None => {
                            tracing::error!(plugin = %name, path = %path.display(), error = %msg, "plugin not loaded");
                            let mut st = failed_status(&name, &path, sha.as_ref(), msg);
                            st.size = size;
                            failed.push(st);
                        }
                    }
                }
            }
        }
        // Keep only what this set uses, so replaced components are freed with their sets.
        *self.inner.compiled.lock() = compiled;
        *self.inner.health.lock() = health;
        *self.inner.loaded.lock() = plugins
            .iter()
            .map(|p| (p.name.to_string(), p.clone()))
            .collect();
        // Samplers run before handlers; the sort is stable, so order within each is kept.
        plugins.sort_by_key(|p| !p.is_sampler());
        PluginSet {
            plugins,
            failed,
            shadows: HashMap::new(),
        }
    }

    /// `files` as [`PluginHost::load_files`] does, with `shadow` as the shadow of the last of
    /// them (`outrigger replay --against`).
    pub(crate) fn load_files_with_shadow(
        &self,
        cfg: &PluginsConfig,
        files: Vec<(String, PathBuf)>,
        shadow: &Path,
    ) -> PluginSet {
        let last = files.last().map(|(n, _)| n.clone());
        let mut set = self.load_files(cfg, files);
        if let Some(name) = last {
            let shadows = vec![(format!("{name}{SHADOW_SUFFIX}"), shadow.to_path_buf())];
            self.load_shadows(cfg, &mut set, shadows, HashMap::new(), HashMap::new());
        }
        set
    }

    /// Loads `NAME.shadow.wasm` files next to the loaded `NAME`s: same world, settings, routing
    /// and chain entry as NAME; the config of NAME's chain entry, else `NAME.shadow.yml`, else
    /// NAME's `NAME.yml`. Each shadow is named `NAME.shadow`; `shadows` holds (that, path). A shadow cannot act: its anomaly reports are ignored, its HTTP
    /// requests are denied and its directories are read-only, whatever NAME is granted.
    fn load_shadows(
        &self,
        cfg: &PluginsConfig,
        set: &mut PluginSet,
        shadows: Vec<(String, PathBuf)>,
        old_compiled: HashMap<CompiledKey, Arc<Compiled>>,
        old_health: HashMap<HealthKey, Arc<Health>>,
    ) {
        if shadows.is_empty() {
            return;
        }
        {
            let mut c = self.inner.compiled.lock();
            for (k, v) in old_compiled {
                c.entry(k).or_insert(v);
            }
            let mut h = self.inner.health.lock();
            for (k, v) in old_health {
                h.entry(k).or_insert(v);
            }
        }
        for (name, path) in shadows {
            let base = name.trim_end_matches(SHADOW_SUFFIX).to_string();
            let Some(live) = set.plugin(&base).cloned() else {
                let err = format!(
                    "a shadow of {base}, which is not loaded (it needs {base}.wasm beside it)"
                );
                tracing::warn!(plugin = %name, "{err}");
                set.failed.push(failed_status(&name, &path, None, err));
                continue;
            };
            let entry = cfg.chain.iter().find(|c| c.name == base);
            let loaded = self
                .load_one(cfg, entry, &name, &path, Some(&live.path))
                .and_then(|(p, sha)| {
                    if p.is_sampler() == live.is_sampler() {
                        Ok(p)
                    } else {
                        Err((
                            anyhow::anyhow!(
                                "a shadow must be the same kind of plugin: {name} is a {}, {base} a {}",
                                p.compiled.world.name(),
                                live.compiled.world.name()
                            ),
                            Some(sha),
                            p.size,
                        ))
                    }
                });
            match loaded {
                Ok(p) => {
                    tracing::info!(plugin = %base, shadow = %name, "shadow loaded: it runs on the same batches, with no effect");
                    set.shadows.insert(base, Ok(Arc::new(p)));
                }
                Err((err, sha, size)) => {
                    let msg = format!("{err:#}");
                    tracing::error!(plugin = %name, path = %path.display(), error = %msg, "shadow not loaded");
                    let mut st = failed_status(&name, &path, sha.as_ref(), msg);
                    st.size = size;
                    set.shadows.insert(base, Err(st));
                }
            }
        }
        // Keep only what the set uses, shadows included.
        let used: Vec<&Arc<Plugin>> = set
            .plugins
            .iter()
            .chain(set.shadows.values().filter_map(|s| s.as_ref().ok()))
            .collect();
        let mut compiled = HashMap::new();
        let mut health = HashMap::new();
        for p in used {
            if let Ok(sha) = hex_to_sha(&p.sha256) {
                compiled.insert((sha, p.compiled.http), p.compiled.clone());
                health.insert((p.name.to_string(), sha), p.health.clone());
            }
        }
        *self.inner.compiled.lock() = compiled;
        *self.inner.health.lock() = health;
    }

    #[allow(clippy::type_complexity)]
    fn load_one(
        &self,
        cfg: &PluginsConfig,
        entry: Option<&ChainEntry>,
        name: &str,
        path: &Path,
        shadow_of: Option<&Path>,
    ) -> Result<(Plugin, [u8; 32]), (anyhow::Error, Option<[u8; 32]>, u64)> {
        let shadow = shadow_of.is_some();
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(|e| (e, None, 0))?;
        let size = bytes.len() as u64;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        let fail = |e: anyhow::Error| (e, Some(sha), size);
        let config_json = if let Some(live) = shadow_of {
            shadow_config(entry, path, live)
        } else {
            plugin_config(entry, path)
        }
        .map_err(fail)?;
        let e = entry.cloned().unwrap_or_default();
        let http = !e.grants.http.is_empty();
        let existing = self.inner.compiled.lock().get(&(sha, http)).cloned();
        let rt = self.inner.runtime().map_err(fail)?;
        let compiled = match existing {
            Some(c) => {
                grants::check_imports(c.imports.iter().map(String::as_str), &e.grants)
                    .map_err(|n| fail(anyhow::Error::new(n)))?;
                c
            }
            None => Arc::new(compile(&rt, &bytes, &sha, &e.grants).map_err(fail)?),
        };
        let d = &cfg.defaults;
        let settings = Settings {
            fuel_per_event: e.fuel_per_event.unwrap_or(d.fuel_per_event).max(1),
            memory_bytes: (e.memory_mb.unwrap_or(d.memory_mb).max(1) as usize)
                .saturating_mul(1 << 20),
            timeout: e.timeout.map(|t| t.0).unwrap_or(d.timeout.0),
            timeout_per_event: e
                .timeout_per_event
                .map(|t| t.0)
                .unwrap_or(d.timeout_per_event.0),
            on_error: e.on_error.unwrap_or(d.on_error),
            quarantine_after: d.quarantine_after,
            quarantine_initial: d.quarantine_initial.0,
            quarantine_max: d.quarantine_max.0.max(d.quarantine_initial.0),
        };
        let health = self
            .inner
            .health
            .lock()
            .get(&(name.to_string(), sha))
            .cloned()
            .unwrap_or_default();
        let name: Arc<str> = Arc::from(name);
        let m = &self.inner.metrics;
        let (anomaly, acts) = if shadow {
            // A shadow cannot act: no anomaly reaches the sampler, no request leaves (every
            // one is denied), no granted directory can be written.
            let mut g = e.grants.clone();
            g.http.clear();
            for d in &mut g.dirs {
                d.read_only = true;
            }
            let ignore: AnomalyFn = Arc::new(|_: &str, _: &str| {});
            (ignore, g)
        } else {
            (self.inner.anomaly.clone(), e.grants.clone())
        };
        let plugin = Plugin {
            ctx: Arc::new(PluginCtx::new(
                name.clone(),
                m.clone(),
                anomaly,
                PluginGrants::new(name.clone(), &acts, m),
            )),
            m_calls: m.plugin_calls.with_label_values(&[&*name]),
            m_fuel: m.plugin_fuel_consumed.with_label_values(&[&*name]),
            m_duration: m.plugin_call_duration.with_label_values(&[&*name]),
            m_recycled: m.plugin_recycled.with_label_values(&[&*name]),
            name,
            path: path.to_path_buf(),
            size,
            sha256: runtime::hex(&sha),
            runtime: rt,
            compiled,
            settings,
            types: e.types.map(|t| t.into_iter().collect()),
            optional: e.optional.unwrap_or(false),
            config_json,
            grants: e.grants.clone(),
            health,
        };
        m.plugin_quarantined
            .with_label_values(&[&*plugin.name])
            .set(plugin.health.quarantined.load(Ordering::Relaxed) as i64);
        Ok((plugin, sha))
    }
}

fn failed_status(name: &str, path: &Path, sha: Option<&[u8; 32]>, err: String) -> PluginStatus {
    PluginStatus {
        name: name.to_string(),
        state: PluginState::Failed,
        world: "unknown".into(),
        path: path.to_path_buf(),
        size: 0,
        sha256: sha.map(|s| runtime::hex(s)).unwrap_or_default(),
        calls: 0,
        errors: 0,
        consecutive_failures: 0,
        quarantined: false,
        quarantined_until: None,
        last_error: Some(err),
        types: None,
        optional: false,
        compile_ms: None,
        from_cache: None,
        shadow: None,
    }
}

/// The file stem suffix of a shadow: `NAME.shadow.wasm` shadows `NAME.wasm`.
pub const SHADOW_SUFFIX: &str = ".shadow";

/// A shadow's config: the chain entry's, else the `.yml` beside the shadow's file, else the
/// live plugin's.
fn shadow_config(entry: Option<&ChainEntry>, wasm: &Path, live: &Path) -> anyhow::Result<String> {
    if entry.and_then(|e| e.config.as_ref()).is_some() || wasm.with_extension("yml").exists() {
        return plugin_config(entry, wasm);
    }
    plugin_config(entry, live)
}

/// `*.wasm` files in `dir` as (name, path), sorted by name. A missing directory has none.
fn wasm_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("reading plugins dir {}", dir.display()));
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("reading plugins dir {}", dir.display()))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") || !path.is_file() {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            out.push((stem.to_string(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// The plugin's config as JSON text: `chain[].config` if given, else `NAME.yml` beside the
/// file (YAML), else `{}`.
fn plugin_config(entry: Option<&ChainEntry>, wasm: &Path) -> anyhow::Result<String> {
    if let Some(c) = entry.and_then(|e| e.config.as_ref()) {
        return Ok(c.to_string());
    }
    let yml = wasm.with_extension("yml");
    match std::fs::read_to_string(&yml) {
        Ok(text) => {
            let v: serde_json::Value = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing plugin config {}", yml.display()))?;
            Ok(if v.is_null() {
                "{}".into()
            } else {
                v.to_string()
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("{}".into()),
        Err(e) => Err(anyhow::Error::new(e)).with_context(|| format!("reading {}", yml.display())),
    }
}

/// What a component exports and imports, and which world it implements.
pub struct Inspection {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub world: Result<&'static str, String>,
}

/// Lists a component's exports and imports and finds its world from the exports.
pub fn inspect(runtime: &Runtime, component: &Component) -> Inspection {
    let ty = component.component_type();
    let engine = &runtime.engine;
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let has = |n: &str| exports.iter().any(|e| e == n);
    let world = match (has("on-batch"), has("sample")) {
        (true, false) => Ok("handler"),
        (false, true) => Ok("sampler"),
        (true, true) => Err("exports both `on-batch` (handler) and `sample` (sampler)".to_string()),
        (false, false) => Err(format!(
            "exports neither `on-batch` (world handler) nor `sample` (world sampler); exports: [{}]",
            exports.join(", ")
        )),
    };
    let world = match world {
        Ok(w) if !has("init") => Err(format!("world {w} needs an `init` export")),
        w => w,
    };
    Inspection {
        exports,
        imports,
        world,
    }
}

/// Compiles (or loads from cache) a component, checks its imports against `grants` (a refusal
/// is a [`grants::NotGranted`] error) and links it, with `wasi:http` when `grants.http` is set,
/// checking it against its world.
pub fn compile(
    runtime: &Runtime,
    bytes: &[u8],
    sha: &[u8; 32],
    grants: &Grants,
) -> anyhow::Result<Compiled> {
    let (component, info) = runtime.component(bytes, sha).context("compiling")?;
    let imports = inspect(runtime, &component).imports;
    grants::check_imports(imports.iter().map(String::as_str), grants)?;
    let http = !grants.http.is_empty();
    let world = link(runtime, &component, http)?;
    Ok(Compiled {
        world,
        info,
        imports,
        http,
    })
}

/// Pre-instantiates `component` against the host's imports (with `wasi:http` if `http`) and
/// its world's exports.
pub fn link(runtime: &Runtime, component: &Component, http: bool) -> anyhow::Result<World> {
    let found = inspect(runtime, component)
        .world
        .map_err(anyhow::Error::msg)?;
    let linker = if http {
        &runtime.http_linker
    } else {
        &runtime.linker
    };
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .context("linking its imports (only outrigger:plugin, WASI p2 and, with grants.http, wasi:http are offered)")?;
    Ok(match found {
        "handler" => World::Handler(
            HandlerPre::new(pre)
                .map_err(anyhow::Error::from)
                .context("its exports do not match world handler of outrigger:plugin@0.1.0")?,
        ),
        _ => World::Sampler(
            SamplerPre::new(pre)
                .map_err(anyhow::Error::from)
                .context("its exports do not match world sampler of outrigger:plugin@0.1.0")?,
        ),
    })
}
