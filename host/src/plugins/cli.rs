//! The plugin commands of the CLI: `outrigger plugin check` and `outrigger replay`
//! (`outrigger plugin new` is in [`super::scaffold`]).
//!
//! In: a component file, or recorded NDJSON events and plugin files. Out: a report on stdout
//! (`check`), or the resulting events as native NDJSON on stdout with a verdict summary on stderr (`replay`).
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
use super::grants::{Need, check_imports};
use super::load::{PluginHost, inspect, link};
use super::runtime::{Runtime, hex};
use crate::config::{DirGrant, Grants, PluginsConfig};
use crate::event::{self, Event, Line};
use crate::metrics::Metrics;

/// Inspects a component: size, hash, compile time, exports, imports (each with the grant it
/// needs, or "always available", or "not grantable") and world. Returns false (after printing
/// why) when it is not a component, imports what no grant allows, or does not implement a world
/// of `outrigger:plugin@0.1.0`; errors only when the file cannot be read.
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
    let width = ins.imports.iter().map(|i| i.len()).max().unwrap_or(0);
    let mut needed = Vec::new();
    for i in &ins.imports {
        let need = Need::of(i);
        let env = if i.starts_with("wasi:cli/environment") {
            " (holds only the grants.env variables)"
        } else {
            ""
        };
        println!("  {i:width$}  {}{env}", need.describe());
        if !needed.contains(&need) {
            needed.push(need);
        }
    }
    let grants: Vec<&str> = needed
        .iter()
        .filter_map(|n| match n {
            Need::Http => Some("http"),
            Need::Dirs => Some("dirs"),
            _ => None,
        })
        .collect();
    if grants.is_empty() {
        println!("grants:  none needed");
    } else {
        println!(
            "grants:  needs {} (plugins.chain[].grants)",
            grants.join(" and ")
        );
    }
    // The most a config could grant: what is still refused can never load.
    let everything = Grants {
        http: vec!["any:1".into()],
        env: Vec::new(),
        dirs: vec![DirGrant {
            host: PathBuf::new(),
            guest: "/".into(),
            read_only: true,
        }],
    };
    if let Err(e) = check_imports(ins.imports.iter().map(String::as_str), &everything) {
        println!("result:  can never be loaded: {e}");
        return Ok(false);
    }
    match link(&runtime, &component, needed.contains(&Need::Http)) {
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

/// Runs `plugins` (in the given order, samplers first) over the events in `events` (NDJSON,
/// native or Weave lines), in batches of [`REPLAY_BATCH`]. Prints the resulting events as
/// native NDJSON on stdout and a summary of what each plugin did on stderr. With `against`,
/// that component runs as the shadow of the last plugin and the comparison of the two is
/// printed too (the events written are the live plugins').
pub async fn replay(
    events: &Path,
    plugins: &[PathBuf],
    against: Option<&Path>,
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
    let last = files.last().map(|(n, _)| n.clone()).unwrap_or_default();
    let set = Arc::new(match against {
        Some(shadow) => host.load_files_with_shadow(cfg, files, shadow),
        None => host.load_files(cfg, files),
    });
    for st in set.status() {
        if st.world == "unknown" {
            anyhow::bail!("plugin {}: {}", st.name, st.last_error.unwrap_or_default());
        }
        if let Some(sh) = &st.shadow
            && sh.status.world == "unknown"
        {
            anyhow::bail!(
                "--against {}: {}",
                sh.status.path.display(),
                sh.status.last_error.clone().unwrap_or_default()
            );
        }
    }
    let shadow = set.shadow_of(&last);
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
            "  {name}: calls={} kept={} dropped={} replaced={} emitted={} bypassed={} failed_batches={} recycled={} errors=[{}]",
            s.calls,
            s.kept,
            s.dropped,
            s.replaced,
            s.emitted,
            s.bypassed,
            s.failed_batches,
            s.recycled,
            errors.join(", ")
        );
    }
    if let (Some(sh), Some(path)) = (&shadow, against) {
        let report = sh.health.shadow.lock().clone();
        eprint!("{}", report.render(&last, &path.display().to_string()));
    }
    for (what, n) in anomalies.lock().iter() {
        eprintln!("  anomaly reported: {what} x{n}");
    }
    Ok(())
}

/// Events per plugin call in `replay`.
pub const REPLAY_BATCH: usize = 1000;
const MAX_LINE: usize = 16 << 20;
