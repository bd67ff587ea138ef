//! The same `redact` handler in Rust, Python, JavaScript and C gives byte-identical output:
//! offline (`outrigger replay`) and in a running daemon, on a corpus of awkward payloads
//! (`data/redact-corpus.ndjson`: nesting, unicode and escapes, numbers of every shape, lone
//! surrogates, nesting at serde_json's depth limit). And `outrigger plugin new --lang L` makes
//! a project that builds as it is, for every language.
//!
//! Every component here is built from source by the test: `plugins/<lang>/redact/build.sh`
//! (componentize-py, componentize-js, clang + wit-bindgen + wasm-tools; `.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::harness::{BIN, Daemon};
use crate::wasm;

/// The languages besides Rust: (directory under `plugins/`, suffix of the built component).
const OTHERS: [(&str, &str); 3] = [("python", "py"), ("js", "js"), ("c", "c")];

/// Runs a build script and fails with its output.
fn run_build(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `redact` component for `lang` ("rust", or one of [`OTHERS`]), built once per test binary.
fn redact(lang: &str) -> PathBuf {
    if lang == "rust" {
        return wasm::dist().join("redact.wasm");
    }
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let (dir, suffix) = OTHERS
        .iter()
        .find(|(d, _)| *d == lang)
        .expect("a known language");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|l| l == lang) {
        let script = wasm::root().join(format!("plugins/{dir}/redact/build.sh"));
        run_build(
            &format!("plugins/{dir}/redact/build.sh"),
            Command::new("bash").arg(script),
        );
        built.push(lang.to_string());
    }
    wasm::root().join(format!("plugins/dist/lang/redact-{suffix}.wasm"))
}

fn corpus() -> PathBuf {
    wasm::root().join("tests/e2e/data/redact-corpus.ndjson")
}

/// The plugin limits for every language: the JavaScript engine is an interpreter that spends
/// 0.2 M fuel per call and up to 4.4 M per event of this corpus (deep nesting), over the
/// default 1 M per event.
const LIMITS: &str = "defaults: {fuel_per_event: 10000000, timeout: 5s}";

/// A plugins cache shared by the tests here, so each component is compiled once.
fn cache() -> &'static Path {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// `outrigger replay` of the corpus through `plugin`: the resulting events and the summary.
fn replay(plugin: &Path) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outrigger.yml");
    std::fs::write(
        &config,
        format!(
            "plugins: {{cache_dir: \"{}\", {LIMITS}}}\n",
            cache().display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("replay")
        .arg(corpus())
        .arg("--plugin")
        .arg(plugin)
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run outrigger replay");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[test]
fn rust_redact_keeps_everything_but_the_fields() {
    let (out, summary) = replay(&redact("rust"));
    let lines: Vec<&str> = out.lines().collect();
    let input = std::fs::read_to_string(corpus()).unwrap();
    assert_eq!(lines.len(), input.lines().count(), "{summary}");
    assert!(
        summary.contains("replaced=16") && summary.contains("errors=[]"),
        "{summary}"
    );
    // Numbers exactly as written, keys sorted, only top-level fields.
    assert!(out.contains(r#""big":12345678901234567890"#), "{out}");
    assert!(out.contains(r#""i":123456789012345678901234"#), "{out}");
    assert!(out.contains(r#""g":-0,"#) && out.contains(r#""p":12345678901234567.0,"#));
    assert!(
        out.contains(r#""r":1e+2,"#),
        "exponents are spelled e+: {out}"
    );
    assert!(out.contains(r#""inner":{"password":"stays"}"#), "{out}");
    assert!(
        lines[0]
            .ends_with(r#""data":{"n":1,"password":"***","user":"ann","z":{"a":[1,2.5],"b":1}}}"#),
        "{}",
        lines[0]
    );
    // A lone surrogate and nesting past 127 are refused by serde_json: kept untouched.
    assert!(out.contains(r#"{"password":"\ud800"}"#), "{out}");
    let deep = lines
        .iter()
        .filter(|l| l.contains("[[[["))
        .collect::<Vec<_>>();
    assert_eq!(deep.len(), 3);
    assert!(deep[1].contains(r#""password":"***""#) && deep[2].contains(r#""password":1"#));
}

#[test]
fn every_language_replays_the_corpus_byte_for_byte_like_rust() {
    let (rust, _) = replay(&redact("rust"));
    for (lang, _) in OTHERS {
        let (out, summary) = replay(&redact(lang));
        assert!(summary.contains("errors=[]"), "{lang}: {summary}");
        if out != rust {
            let diff: Vec<String> = rust
                .lines()
                .zip(out.lines())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| format!("line {}:\n  rust: {a}\n  {lang}: {b}", i + 1))
                .collect();
            panic!("{lang} redact differs from Rust:\n{}", diff.join("\n"));
        }
    }
}

/// Runs the corpus through a daemon whose only plugin is `plugin` (with `redact.yml`'s
/// config), and returns the file sink's text.
async fn through_daemon(name: &str, plugin: &Path) -> String {
    let mut d = Daemon::spawn(&format!(
        "plugins: {{cache_dir: \"{}\", {LIMITS}}}",
        cache().display()
    ));
    std::fs::copy(plugin, d.path(&format!("plugins/{name}.wasm"))).unwrap();
    std::fs::write(
        d.path(&format!("plugins/{name}.yml")),
        "fields: [password, token]\n",
    )
    .unwrap();
    d.wait_ready().await;
    let loaded = crate::harness::eventually(Duration::from_secs(120), async || {
        d.get_json("/v1/plugins").await["plugins"][0]["world"] == "handler"
    })
    .await;
    assert!(loaded, "{name}: {}", d.get_json("/v1/plugins").await);
    let input = std::fs::read_to_string(corpus()).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    let answers = d.send(&lines).await;
    assert!(
        answers.iter().all(|a| a == r#"{"success":true}"#),
        "{name}: {answers:?}"
    );
    // 18 fields in 16 events; the plugin reports them through `host.counter-add`.
    let redacted = d
        .wait_metric("outrigger_plugin_counter_total", r#"name="redacted""#, 18.0)
        .await;
    assert_eq!(redacted, 18.0, "{name}");
    let errors = d.metric("outrigger_plugin_errors_total", "").await;
    assert_eq!(errors, 0.0, "{name}: {}", d.log_text());
    assert!(d.stop().success(), "{name}: {}", d.log_text());
    without_ids(&std::fs::read_to_string(d.path("out/events.ndjson")).unwrap())
}

/// The output with each line's `"id"` taken out (ids differ between daemons; replay, which
/// accepts nothing, gives none), checking on the way that every line had a distinct one.
fn without_ids(out: &str) -> String {
    let mut ids = std::collections::HashSet::new();
    let mut text = String::new();
    for line in out.lines() {
        let at = line.find(r#","id":""#).expect("every event has an id") + 1;
        let end = at + r#""id":""#.len() + 32 + 1;
        assert!(
            ids.insert(line[at..end].to_string()),
            "duplicate id in {line}"
        );
        text.push_str(&line[..at - 1]);
        text.push_str(&line[end..]);
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_gives_the_same_output_in_the_daemon() {
    let rust = through_daemon("redact", &redact("rust")).await;
    let (replayed, _) = replay(&redact("rust"));
    assert_eq!(rust, replayed, "the daemon writes what replay prints");
    for (lang, suffix) in OTHERS {
        let out = through_daemon(&format!("redact-{suffix}"), &redact(lang)).await;
        assert_eq!(out, rust, "{lang} in the daemon differs from Rust");
    }
}

/// `outrigger plugin new NAME --lang L`, then the project's own build command, outside the
/// repository; the component runs in `replay` and counts the events it saw.
#[test]
fn plugin_new_makes_projects_that_build_in_every_language() {
    let parent = tempfile::tempdir().unwrap();
    for (lang, _) in OTHERS {
        let name = format!("hello-{lang}");
        run_build(
            "outrigger plugin new",
            Command::new(BIN)
                .args(["plugin", "new", &name, "--lang", lang, "--dir"])
                .arg(parent.path()),
        );
        let project = parent.path().join(&name);
        let lock = (lang == "js").then(|| {
            std::fs::read(project.join("package-lock.json"))
                .expect("the js template writes package-lock.json")
        });
        run_build(
            &format!("{lang} template build.sh"),
            Command::new("bash").arg(project.join("build.sh")),
        );
        if let Some(lock) = lock {
            js_installed_what_the_lockfile_pins(&project, &lock);
        }
        let wasm = project.join(format!("{name}.wasm"));
        let (out, summary) = replay(&wasm);
        let n = std::fs::read_to_string(corpus()).unwrap().lines().count();
        assert_eq!(out.lines().count(), n, "{lang}: {summary}");
        assert!(
            summary.contains(&format!("{name}: calls=1 kept={n} dropped=0 replaced=0")),
            "{lang}: {summary}"
        );
    }
}

/// The JavaScript template's build ran `npm ci`: the lockfile is as `plugin new` wrote it (npm
/// re-resolving would rewrite it), and every package npm installed (its record in
/// `node_modules/.package-lock.json`) is at the version the lockfile pins.
fn js_installed_what_the_lockfile_pins(project: &Path, lock: &[u8]) {
    let after = std::fs::read(project.join("package-lock.json")).unwrap();
    assert!(after == lock, "the js build changed package-lock.json");
    let read = |path: PathBuf| -> serde_json::Value {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    };
    let pinned = read(project.join("package-lock.json"));
    let installed = read(project.join("node_modules/.package-lock.json"));
    let installed = installed["packages"].as_object().unwrap();
    assert!(
        installed.contains_key("node_modules/@bytecodealliance/componentize-js"),
        "componentize-js not installed"
    );
    for (path, package) in installed {
        assert_eq!(
            package["version"], pinned["packages"][path]["version"],
            "{path}: installed version differs from package-lock.json"
        );
    }
}
