//! The wasmtime engine shared by every plugin: configuration, the epoch ticker, the linker,
//! and the on-disk cache of precompiled components.
//!
//! In: component bytes. Out: compiled [`Component`]s, from the cache when an entry for the same
//! bytes and engine configuration exists (`Component::serialize` / `deserialize`), else
//! compiled and written there. The ticker thread advances the engine's epoch every [`TICK`] so
//! that a guest spinning in wasm hits its deadline; it stops when the last [`Runtime`] handle is
//! dropped.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::bindings;
use super::imports::State;

/// How often the epoch advances: the resolution of the wall-clock limit.
pub const TICK: Duration = Duration::from_millis(5);

/// The wasmtime version, part of the cache key (the engine hash covers the rest).
const WASMTIME_VERSION: &str = "48.0.8";

/// Engine, linker and ticker; shared (`Arc`) by the host and every plugin set it loaded.
pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<State>,
    cache_dir: Option<PathBuf>,
    /// sha256 of the engine's compatibility hash and the wasmtime version.
    engine_key: [u8; 32],
    _ticker: Ticker,
}

/// How a component was obtained.
#[derive(Clone, Copy, Debug)]
pub struct CompileInfo {
    pub from_cache: bool,
    pub took: Duration,
}

impl Runtime {
    /// Builds the engine (fuel, epochs, component model), links WASI p2 (no filesystem,
    /// network or environment is granted per store) and the `host` interface, and starts the
    /// ticker. `cache_dir`: `None` disables the on-disk cache.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .parallel_compilation(true);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        bindings::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking the host interface")?;
        let mut key = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut key);
        key.0.update(WASMTIME_VERSION.as_bytes());
        key.0.update(std::env::consts::ARCH.as_bytes());
        let engine_key = key.0.finalize().into();
        let ticker = Ticker::start(engine.clone())?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            engine_key,
            _ticker: ticker,
        })
    }

    /// Compiles `bytes` (whose sha256 is `sha`), or loads the precompiled artifact from the
    /// cache. A cache entry that is unreadable, corrupt or from another engine is ignored and
    /// rewritten.
    pub fn component(
        &self,
        bytes: &[u8],
        sha: &[u8; 32],
    ) -> anyhow::Result<(Component, CompileInfo)> {
        let start = Instant::now();
        let entry = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(self.cache_name(sha)));
        if let Some(path) = &entry
            && let Some(c) = self.read_cached(path)
        {
            let info = CompileInfo {
                from_cache: true,
                took: start.elapsed(),
            };
            return Ok((c, info));
        }
        let component = Component::new(&self.engine, bytes).map_err(anyhow::Error::from)?;
        if let Some(path) = &entry
            && let Err(e) = write_cached(&component, path)
        {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot write the plugin cache");
        }
        let info = CompileInfo {
            from_cache: false,
            took: start.elapsed(),
        };
        Ok((component, info))
    }

    fn cache_name(&self, sha: &[u8; 32]) -> String {
        let mut h = Sha256::new();
        h.update(sha);
        h.update(self.engine_key);
        format!("{}.cwasm", hex(&h.finalize()))
    }

    fn read_cached(&self, path: &Path) -> Option<Component> {
        let data = std::fs::read(path).ok()?;
        let ok = data.len() > 32 && Sha256::digest(&data[32..]).as_slice() == &data[..32];
        if !ok {
            tracing::warn!(path = %path.display(), "corrupt plugin cache entry: recompiling");
            return None;
        }
        // SAFETY: the artifact was written by `Component::serialize` of this same engine
        // configuration (the file name is keyed by it) and its checksum matches, so it is
        // exactly what we wrote; wasmtime checks the header and engine compatibility again.
        match unsafe { Component::deserialize(&self.engine, &data[32..]) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable plugin cache entry: recompiling");
                None
            }
        }
    }
}

/// Writes `[sha256 of artifact][artifact]` to `path` atomically (temp file, then rename).
fn write_cached(component: &Component, path: &Path) -> anyhow::Result<()> {
    let artifact = component.serialize().map_err(anyhow::Error::from)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut data = Vec::with_capacity(artifact.len() + 32);
    data.extend_from_slice(&Sha256::digest(&artifact));
    data.extend_from_slice(&artifact);
    std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The cache directory: `plugins.cache_dir` if set (an empty path disables the cache), else
/// `$XDG_CACHE_HOME/outrigger`, `~/.cache/outrigger`, or `./outrigger-data/cache`.
pub fn cache_dir(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    Some(match base {
        Some(b) => b.join("outrigger"),
        None => PathBuf::from("./outrigger-data/cache"),
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let digits = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digits[(b >> 4) as usize] as char);
        s.push(digits[(b & 0xf) as usize] as char);
    }
    s
}

/// Feeds `Hash` output into sha256, so the engine's compatibility hash is stable across runs.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The thread that advances the epoch; stops when dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> anyhow::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("outrigger-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
