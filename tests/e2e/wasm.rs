//! Builds WASM components for the end-to-end tests: the repository's example and fixture
//! plugins (`plugins/build.sh`, once per test binary) and plugin projects outside the
//! repository, made with `outrigger plugin new` against the embedded copy of `wit/`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The repository root.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent")
            .to_path_buf()
    })
}

/// `plugins/dist`, with every example (`NAME.wasm`, `NAME.yml`) and fixture
/// (`fixtures/NAME.wasm`) freshly built. Builds once per test binary.
pub fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        // Built with CARGO_TARGET_DIR set, as many developers have it: build.sh used to copy
        // from plugins/target regardless, fail without stopping, and leave dist/ empty.
        let dist = root().join("plugins/dist");
        let expected = [
            "redact.wasm",
            "error-alert.wasm",
            "drop-debug.wasm",
            "fixtures/misbehave.wasm",
            "fixtures/emitter.wasm",
            "webhook-alert.wasm",
            "fixtures/http-poster.wasm",
            "fixtures/fs-probe.wasm",
        ];
        for f in expected {
            let _ = std::fs::remove_file(dist.join(f));
        }
        let out = Command::new("bash")
            .arg(root().join("plugins/build.sh"))
            .env("RUSTUP_TOOLCHAIN", toolchain())
            .env("CARGO_TARGET_DIR", root().join("target/plugins-wasm"))
            .output()
            .expect("run plugins/build.sh");
        assert!(
            out.status.success(),
            "plugins/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for f in expected {
            assert!(dist.join(f).is_file(), "plugins/build.sh left no dist/{f}");
        }
        dist
    })
}

/// The toolchain `rust-toolchain.toml` names (it has the wasm32-wasip2 target).
pub fn toolchain() -> String {
    let text = std::fs::read_to_string(root().join("rust-toolchain.toml"))
        .expect("read rust-toolchain.toml");
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "channel").then(|| v.trim().trim_matches('"').to_string())
        })
        .expect("rust-toolchain.toml names a channel")
}

/// Copies plugin files from `dist()` into `dir` under new names: `(source, name)` pairs such
/// as `("fixtures/misbehave.wasm", "spin")` become `dir/spin.wasm`. A source `NAME.yml` beside
/// the `.wasm` is copied too.
pub fn install(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("plugins dir");
    for (src, name) in files {
        let from = dist().join(src);
        std::fs::copy(&from, dir.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        let yml = from.with_extension("yml");
        if yml.is_file() {
            std::fs::copy(&yml, dir.join(format!("{name}.yml"))).expect("copy yml");
        }
    }
}

/// Creates a plugin project outside the repository with `outrigger plugin new NAME`
/// (replacing `src/lib.rs` with `lib_rs` if given), builds it with cargo, and returns the
/// component. `parent` must be outside the repository. Builds are serialised; the cargo target
/// dir is shared under the repository's `target/` so repeated runs are incremental.
pub fn build_outside(parent: &Path, name: &str, lib_rs: Option<&str>) -> PathBuf {
    build_project(parent, name, &[], lib_rs)
}

/// As [`build_outside`], for the template `outrigger plugin new NAME --lang rust --http`
/// (a handler that POSTs through `wasi:http`; `parent/NAME/NAME.yml` is its config).
pub fn build_outside_http(parent: &Path, name: &str) -> PathBuf {
    build_project(parent, name, &["--http"], None)
}

fn build_project(parent: &Path, name: &str, flags: &[&str], lib_rs: Option<&str>) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        !parent.starts_with(root()),
        "{} is inside the repository",
        parent.display()
    );
    let out = Command::new(crate::harness::BIN)
        .args(["plugin", "new", name, "--lang", "rust"])
        .args(flags)
        .arg("--dir")
        .arg(parent)
        .output()
        .expect("run outrigger plugin new");
    assert!(
        out.status.success(),
        "plugin new failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = parent.join(name);
    if let Some(src) = lib_rs {
        std::fs::write(project.join("src/lib.rs"), src).expect("write lib.rs");
    }
    // Same dependency versions as the repository's plugins: no surprise upgrades in tests.
    std::fs::copy(
        root().join("plugins/Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .expect("copy Cargo.lock");
    let out = Command::new("cargo")
        .args(["build", "--release"])
        .current_dir(&project)
        .env("RUSTUP_TOOLCHAIN", toolchain())
        .env("CARGO_TARGET_DIR", root().join("target/outside-plugins"))
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building {name} outside the repository failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = root().join(format!(
        "target/outside-plugins/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ));
    let dest = parent.join(format!("{name}.wasm"));
    std::fs::copy(&wasm, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", wasm.display()));
    dest
}
