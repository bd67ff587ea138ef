//! The wasmtime engine shared by every plugin: configuration, the epoch ticker, the linker,
//! and the on-disk cache of precompiled components.
//!
//! In: component bytes. Out: compiled [`Component`]s, from the cache when an entry for the same
//! bytes and engine configuration exists (`Component::serialize` / `deserialize`), else
//! compiled and written there. The ticker thread advances the engine's epoch every [`TICK`] so
//! that a guest spinning in wasm hits its deadline, but only while a call holds a
//! [`Ticking`] guard: with no call in flight it sleeps on a condition variable and never wakes,
//! so an idle daemon costs nothing here. It stops when the last [`Runtime`] handle is dropped.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
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

/// Engine, linkers and ticker; shared (`Arc`) by the host and every plugin set it loaded.
pub struct Runtime {
    pub engine: Engine,
    /// WASI p2 and the `host` interface: what every plugin gets.
    pub linker: Linker<State>,
    /// The same plus `wasi:http` (`outgoing-handler` and `types`): for plugins granted `http`.
    pub http_linker: Linker<State>,
    cache_dir: Option<PathBuf>,
    /// sha256 of the engine's compatibility hash and the wasmtime version.
    engine_key: [u8; 32],
    ticker: Ticker,
}

/// How a component was obtained.
#[derive(Clone, Copy, Debug)]
pub struct CompileInfo {
    pub from_cache: bool,
    pub took: Duration,
}

impl Runtime {
    /// Builds the engine (fuel, epochs, component model), links WASI p2 (filesystem,
    /// environment and network exist per store only as its plugin's grants say) and the `host`
    /// interface, once more with `wasi:http`, and starts the ticker. `cache_dir`: `None`
    /// disables the on-disk cache.
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
        let mut http_linker = linker.clone();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut http_linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        let mut key = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut key);
        key.0.update(WASMTIME_VERSION.as_bytes());
        key.0.update(std::env::consts::ARCH.as_bytes());
        let engine_key = key.0.finalize().into();
        let ticker = Ticker::start(engine.clone())?;
        Ok(Runtime {
            engine,
            linker,
            http_linker,
            cache_dir,
            engine_key,
            ticker,
        })
    }

    /// Epochs the ticker has advanced since the runtime started.
    #[cfg(test)]
    pub fn epoch_ticks(&self) -> u64 {
        self.ticker.ticks()
    }

    /// Keeps the epoch advancing until the guard is dropped. Every call into a guest holds one:
    /// the epoch deadline set before the call counts ticks from the epoch at that moment, so
    /// a deadline is as exact as with a ticker that never stops.
    pub fn ticking(&self) -> Ticking {
        self.ticker.acquire();
        Ticking {
            shared: self.ticker.shared.clone(),
        }
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

/// What the ticker thread and the guards share: the calls in flight and the stop flag.
#[derive(Default)]
struct TickerState {
    in_flight: usize,
    stop: bool,
    /// Epochs advanced so far (for tests and diagnostics).
    ticks: u64,
}

#[derive(Default)]
struct TickerShared {
    state: Mutex<TickerState>,
    changed: Condvar,
}

/// The thread that advances the epoch while a call is in flight; stops when dropped.
struct Ticker {
    shared: Arc<TickerShared>,
}

/// Held for the length of a guest call; the epoch advances while any guard is alive.
pub struct Ticking {
    shared: Arc<TickerShared>,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

impl Ticker {
    fn start(engine: Engine) -> anyhow::Result<Ticker> {
        let shared = Arc::new(TickerShared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("outrigger-epoch".into())
            .spawn(move || {
                let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    // Idle: sleep until a call starts (or the runtime goes).
                    while st.in_flight == 0 && !st.stop {
                        st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    if st.stop {
                        return;
                    }
                    drop(st);
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                    st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.ticks += 1;
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Ticker { shared })
    }

    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ticks
    }

    fn acquire(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.in_flight += 1;
        if st.in_flight == 1 {
            self.shared.changed.notify_one();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stop = true;
        self.shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_epoch_advances_only_while_a_call_is_in_flight() {
        let rt = Runtime::new(None).unwrap();
        std::thread::sleep(TICK * 6);
        assert_eq!(rt.epoch_ticks(), 0, "no call in flight: the ticker sleeps");
        let guard = rt.ticking();
        let second = rt.ticking();
        assert!(
            wait_for(|| rt.epoch_ticks() >= 2),
            "a call in flight: it ticks"
        );
        drop(guard);
        let before = rt.epoch_ticks();
        assert!(
            wait_for(|| rt.epoch_ticks() > before),
            "one guard left: still ticking"
        );
        drop(second);
        // At most the tick that was under way when the last guard went.
        std::thread::sleep(TICK * 2);
        let settled = rt.epoch_ticks();
        std::thread::sleep(TICK * 6);
        assert_eq!(rt.epoch_ticks(), settled, "idle again: no more ticks");
    }
}
