//! `outrigger plugin new NAME --lang rust|python|js|c [--http]`: a plugin project that builds
//! as it is.
//!
//! In: a name, a language, a parent directory and, for Rust, whether the plugin posts with
//! `wasi:http`. Out: `DIR/NAME` with a handler that keeps every event and counts them (with
//! `--http`: that POSTs every payload to the `url` of its `NAME.yml`), a copy of the WIT
//! contract in `wit/`, a build command (`cargo build --release`, or `bash build.sh`) and a
//! README naming its prerequisites (and, with `--http`, the grant it needs). The templates live
//! in `host/templates/<lang>/` (`rust-http/` holds the files `--http` adds or replaces) and are
//! embedded in the binary, so a project is made the same way outside this repository. Runs once
//! and returns; never overwrites.

use std::path::Path;

use anyhow::Context as _;

/// The WIT contract, embedded so that a new project builds outside this repository.
const WIT: &str = include_str!("../../../wit/outrigger.wit");

/// One template file: its path in the project and its text, with `{name}` (the plugin name)
/// and `{crate}` (the name with `_` for `-`) to fill in (in the path too).
type File = (&'static str, &'static str);

macro_rules! template {
    ($lang:literal: $($path:literal),+ $(,)?) => {
        &[$(($path, include_str!(concat!("../../templates/", $lang, "/", $path)))),+]
    };
}

/// The languages `--lang` accepts, with their files and how to build them.
const LANGS: &[(&str, &[File], &str, &str)] = &[
    (
        "rust",
        template!("rust": "Cargo.toml", "rust-toolchain.toml", ".cargo/config.toml", ".gitignore",
            "src/lib.rs", "README.md"),
        "cargo build --release",
        "target/wasm32-wasip2/release/{crate}.wasm",
    ),
    (
        "python",
        template!("python": "app.py", "build.sh", ".gitignore", "README.md"),
        "bash build.sh",
        "{name}.wasm",
    ),
    (
        "js",
        template!("js": "handler.js", "package.json", "package-lock.json", "build.sh",
            ".gitignore", "README.md"),
        "bash build.sh",
        "{name}.wasm",
    ),
    (
        "c",
        template!("c": "handler.c", "build.sh", ".gitignore", "README.md"),
        "bash build.sh",
        "{name}.wasm",
    ),
];

/// `--http` (Rust only): the files that replace the `rust` template's, or join them.
const RUST_HTTP: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust-http/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust-http/src/lib.rs"),
    ),
    (
        "README.md",
        include_str!("../../templates/rust-http/README.md"),
    ),
    (
        "{name}.yml",
        include_str!("../../templates/rust-http/plugin.yml"),
    ),
];

/// The names `--lang` accepts.
pub fn languages() -> impl Iterator<Item = &'static str> {
    LANGS.iter().map(|l| l.0)
}

/// The files of the `lang` template, with `--http`'s in place of or beside them.
fn template(lang: &str, http: bool) -> Option<(Vec<File>, &'static str, &'static str)> {
    let &(_, files, build, output) = LANGS.iter().find(|l| l.0 == lang)?;
    let mut files = files.to_vec();
    if http {
        for &(rel, text) in RUST_HTTP {
            match files.iter_mut().find(|f| f.0 == rel) {
                Some(f) => f.1 = text,
                None => files.push((rel, text)),
            }
        }
    }
    Some((files, build, output))
}

/// Creates `dir/NAME` from the `lang` template (`http`: the Rust template that posts with
/// `wasi:http`). Refuses a name that is not a valid package name in every language, an unknown
/// language, `http` with another language than Rust, and an existing directory.
pub fn new_project(name: &str, lang: &str, dir: &Path, http: bool) -> anyhow::Result<()> {
    if http && lang != "rust" {
        anyhow::bail!("--http: only with --lang rust (a template that posts with wasi:http)");
    }
    let Some((files, build, output)) = template(lang, http) else {
        let known: Vec<_> = languages().collect();
        anyhow::bail!(
            "--lang {lang}: unknown language (one of {})",
            known.join(", ")
        );
    };
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
    let fill = |text: &str| text.replace("{name}", name).replace("{crate}", &crate_name);
    let wit: File = ("wit/outrigger.wit", WIT);
    for &(rel, text) in files.iter().chain([&wit]) {
        let path = root.join(fill(rel));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = if rel.starts_with("wit/") {
            text.to_string()
        } else {
            fill(text)
        };
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if rel.ends_with(".sh") {
            set_executable(&path)?;
        }
    }
    println!("created {}", root.display());
    println!("build:  cd {} && {build}", root.display());
    println!("output: {}", fill(output));
    if http {
        println!(
            "grant:  plugins.chain: [{{name: {name}, grants: {{http: [\"HOST:PORT\"]}}}}] (the host:port of url in {name}.yml)"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_makes_a_project_with_the_wit_and_no_placeholders_left() {
        let cases = languages().map(|l| (l, false)).chain([("rust", true)]);
        for (lang, http) in cases {
            let dir = tempfile::tempdir().unwrap();
            new_project("my-filter", lang, dir.path(), http).unwrap();
            let root = dir.path().join("my-filter");
            let wit = std::fs::read_to_string(root.join("wit/outrigger.wit")).unwrap();
            assert_eq!(wit, WIT, "{lang}");
            let (files, ..) = template(lang, http).unwrap();
            for (rel, _) in files {
                let rel = rel.replace("{name}", "my-filter");
                let text = std::fs::read_to_string(root.join(&rel)).unwrap();
                assert!(
                    !text.contains("{name}") && !text.contains("{crate}"),
                    "{lang}/{rel} still has a placeholder"
                );
            }
            let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
            assert!(readme.starts_with("# my-filter\n"), "{lang}: {readme}");
        }
    }

    #[test]
    fn http_makes_a_rust_project_that_posts_and_says_which_grant_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        new_project("my-hook", "rust", dir.path(), true).unwrap();
        let root = dir.path().join("my-hook");
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap();
        assert!(read("Cargo.toml").contains("wasi = \"0.14\""));
        let lib = read("src/lib.rs");
        assert!(lib.contains("outgoing_handler::handle"), "{lib}");
        assert!(lib.contains("format!(\"my-hook config: {e}\")"), "{lib}");
        assert!(read("my-hook.yml").starts_with("# Where every event"));
        let readme = read("README.md");
        assert!(readme.contains("- name: my-hook\n"), "{readme}");
        assert!(
            readme.contains("grants: {http: [\"127.0.0.1:9000\"]}"),
            "{readme}"
        );
        // The rest of the Rust template is there as it is.
        assert_eq!(read("rust-toolchain.toml"), LANGS[0].1[1].1);
        let err = new_project("x", "python", dir.path(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--http") && err.contains("rust"), "{err}");
    }

    /// The JavaScript project pins its npm packages: `package-lock.json` is written, names the
    /// project, and locks exactly the versions `package.json` asks for, so that `npm ci` (which
    /// `build.sh` runs) accepts it and installs the same packages every time.
    #[test]
    fn the_js_project_ships_a_lockfile_that_matches_its_package_json() {
        let dir = tempfile::tempdir().unwrap();
        new_project("my-filter", "js", dir.path(), false).unwrap();
        let root = dir.path().join("my-filter");
        let read = |rel: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(root.join(rel))
                .unwrap_or_else(|e| panic!("{rel} not written: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
        };
        let package = read("package.json");
        let lock = read("package-lock.json");
        assert_eq!(lock["lockfileVersion"], 3);
        assert_eq!(lock["name"], "my-filter");
        assert_eq!(lock["packages"][""]["name"], "my-filter");
        let wanted = package["devDependencies"].as_object().unwrap();
        assert_eq!(
            lock["packages"][""]["devDependencies"],
            package["devDependencies"]
        );
        for (dep, version) in wanted {
            let locked = &lock["packages"][format!("node_modules/{dep}")];
            assert_eq!(&locked["version"], version, "{dep}");
            assert!(
                locked["integrity"].is_string(),
                "{dep} has no integrity hash"
            );
        }
        let build = std::fs::read_to_string(root.join("build.sh")).unwrap();
        assert!(build.contains("npm ci "), "{build}");
        assert!(!build.contains("npm install"), "{build}");
    }

    #[test]
    fn refuses_unknown_languages_bad_names_and_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let err = new_project("x", "cobol", dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rust, python, js, c"), "{err}");
        let err = new_project("My Filter", "rust", dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lower-case"), "{err}");
        new_project("x", "python", dir.path(), false).unwrap();
        let err = new_project("x", "js", dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }
}
