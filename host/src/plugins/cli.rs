//! The plugin commands of the CLI: `outrigger plugin check`, `outrigger plugin new` and
//! `outrigger replay`.
//!
//! In: a component file, a name for a new project, or recorded NDJSON events and plugin files.
//! Out: a report on stdout (`check`), a project directory that builds as it is (`new`), or the
//! resulting events as native NDJSON on stdout with a verdict summary on stderr (`replay`).
//! Each runs once and returns.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::chain::Chain;
use super::load::{PluginHost, inspect, link};
use super::runtime::{Runtime, hex};
use crate::config::PluginsConfig;
use crate::event::{self, Event, Line};
use crate::metrics::Metrics;

/// The WIT contract, embedded so that a new project builds outside this repository.
const WIT: &str = include_str!("../../../wit/outrigger.wit");

/// Inspects a component: size, hash, compile time, exports, imports and world. Returns false
/// (after printing why) when it is not a component or does not implement a world of
/// `outrigger:plugin@0.1.0`; errors only when the file cannot be read.
pub fn check(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    println!("file:    {}", path.display());
    println!("size:    {} bytes", bytes.len());
    println!("sha256:  {}", hex(&Sha256::digest(&bytes)));
    let runtime = Runtime::new(None)?;
    let start = Instant::now();
    let component = match Component::new(&runtime.engine, &bytes) {
        Ok(c) => c,
        Err(e) => {
            println!("result:  not a loadable WebAssembly component: {e:#}");
            return Ok(false);
        }
    };
    println!("compile: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    let ins = inspect(&runtime, &component);
    println!("exports: {}", ins.exports.join(", "));
    println!("imports:");
    for i in &ins.imports {
        println!("  {i}");
    }
    match link(&runtime, &component) {
        Ok(world) => {
            println!("world:   {} (outrigger:plugin@0.1.0)", world.name());
            Ok(true)
        }
        Err(e) => {
            println!("result:  does not match a world of outrigger:plugin@0.1.0: {e:#}");
            Ok(false)
        }
    }
}

/// Creates `dir/NAME`, a plugin project that builds as it is with
/// `cargo build --release --target wasm32-wasip2`. Only `rust` for now.
pub fn new_scaffold(name: &str, lang: &str, dir: &Path) -> anyhow::Result<()> {
    if lang != "rust" {
        anyhow::bail!("--lang {lang}: not yet supported (only `rust` for now)");
    }
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        anyhow::bail!(
            "plugin name `{name}`: use lower-case letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let root = dir.join(name);
    if root.exists() {
        anyhow::bail!("{} already exists", root.display());
    }
    let crate_name = name.replace('-', "_");
    let files: [(&str, String); 7] = [
        ("Cargo.toml", CARGO_TOML.replace("{name}", name)),
        ("rust-toolchain.toml", TOOLCHAIN.to_string()),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("wit/outrigger.wit", WIT.to_string()),
        (
            "src/lib.rs",
            LIB_RS
                .replace("{name}", name)
                .replace("{crate}", &crate_name),
        ),
        (
            "README.md",
            README
                .replace("{name}", name)
                .replace("{crate}", &crate_name),
        ),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created {}", root.display());
    println!("build:  cd {} && cargo build --release", root.display());
    println!("output: target/wasm32-wasip2/release/{crate_name}.wasm");
    Ok(())
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = { version = "0.46", default-features = false, features = ["macros", "realloc", "std"] }

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# A workspace of its own, so it builds wherever it is created.
[workspace]
"#;

const TOOLCHAIN: &str = r#"[toolchain]
channel = "stable"
targets = ["wasm32-wasip2"]
profile = "minimal"
"#;

const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! `{name}`: an Outrigger handler plugin.
//!
//! Outrigger calls `init` once per instance with the plugin's config (JSON text, from
//! `{name}.yml` beside the .wasm or `plugins.chain[].config`), then `on_batch` with whole
//! batches. Return one verdict per event, in order: `Keep`, `Drop`, or `Replace(event)`.
//! State kept in statics survives between batches of the same instance.

use std::sync::atomic::{AtomicU64, Ordering};

use outrigger::plugin::host;
use outrigger::plugin::types::Level;

wit_bindgen::generate!({ world: "handler", path: "wit" });

static BATCHES: AtomicU64 = AtomicU64::new(0);

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        host::log(Level::Info, &format!("{name} starting with config {config}"));
        Ok(())
    }

    fn on_batch(events: Vec<Event>) -> Vec<Verdict> {
        BATCHES.fetch_add(1, Ordering::Relaxed);
        // Shows up as outrigger_plugin_counter_total{plugin="{name}", name="events"}.
        host::counter_add("events", events.len() as u64);
        events.iter().map(|_| Verdict::Keep).collect()
    }
}

export!(Plugin);
"#;

const README: &str = r#"# {name}

An Outrigger handler plugin (world `handler` of
`outrigger:plugin@0.1.0`, in `wit/`).

Build (needs the `wasm32-wasip2` target, which `rust-toolchain.toml` asks rustup for):

    cargo build --release

Check and try it:

    outrigger plugin check target/wasm32-wasip2/release/{crate}.wasm
    outrigger replay events.ndjson --plugin target/wasm32-wasip2/release/{crate}.wasm

Install: copy the `.wasm` into the daemon's `plugins.dir` as `{name}.wasm` (and its config as
`{name}.yml` beside it); the daemon loads it without a restart.
"#;

/// Runs `plugins` (in the given order, samplers first) over the events in `events` (NDJSON,
/// native or Weave lines), in batches of [`REPLAY_BATCH`]. Prints the resulting events as
/// native NDJSON on stdout and a summary of what each plugin did on stderr.
pub async fn replay(
    events: &Path,
    plugins: &[PathBuf],
    cfg: &PluginsConfig,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let anomalies: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let seen = anomalies.clone();
    let host = PluginHost::new(
        cfg,
        metrics,
        Arc::new(move |kind: &str, reason: &str| {
            *seen.lock().entry(format!("{kind} ({reason})")).or_default() += 1;
        }),
    )?;
    let mut files = Vec::new();
    for p in plugins {
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("plugin file name {}", p.display()))?;
        files.push((name.to_string(), p.clone()));
    }
    let set = Arc::new(host.load_files(cfg, files));
    for st in set.status() {
        if st.world == "unknown" {
            anyhow::bail!("plugin {}: {}", st.name, st.last_error.unwrap_or_default());
        }
    }
    let mut chain = Chain::new(set).await;
    let file =
        std::fs::File::open(events).with_context(|| format!("opening {}", events.display()))?;
    let mut lines = std::io::BufReader::new(file);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut read, mut written, mut bad) = (0u64, 0u64, 0u64);
    let mut batch: Vec<Event> = Vec::with_capacity(REPLAY_BATCH);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = lines
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", events.display()))?;
        if n > 0 {
            line_no += 1;
            let line = buf.trim_ascii();
            if !line.is_empty() {
                match event::parse_owned(line, MAX_LINE) {
                    Ok(Line::Event(ev)) => {
                        read += 1;
                        batch.push(ev);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        bad += 1;
                        eprintln!("{}:{line_no}: skipped: {e}", events.display());
                    }
                }
            }
        }
        if batch.len() >= REPLAY_BATCH || (n == 0 && !batch.is_empty()) {
            let result = chain.run(std::mem::take(&mut batch)).await;
            let mut text = Vec::new();
            for ev in &result {
                ev.write_native(&mut text);
            }
            written += result.len() as u64;
            out.write_all(&text).context("writing stdout")?;
        }
        if n == 0 {
            break;
        }
    }
    out.flush().context("writing stdout")?;
    eprintln!("replay: {read} events in, {written} out ({bad} lines skipped)");
    for (name, s) in chain.stats() {
        let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "  {name}: calls={} kept={} dropped={} replaced={} emitted={} bypassed={} failed_batches={} errors=[{}]",
            s.calls,
            s.kept,
            s.dropped,
            s.replaced,
            s.emitted,
            s.bypassed,
            s.failed_batches,
            errors.join(", ")
        );
    }
    for (what, n) in anomalies.lock().iter() {
        eprintln!("  anomaly reported: {what} x{n}");
    }
    Ok(())
}

/// Events per plugin call in `replay`.
pub const REPLAY_BATCH: usize = 1000;
const MAX_LINE: usize = 16 << 20;
