//! The config loader: any text is a config or a [`ConfigError`] naming a key, never a panic;
//! environment overrides (taken from the text's last line) and validation run on what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrigger::config::{apply_env, line_of, parse, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A last line `NAME=VALUE` becomes the environment the overrides read.
    let (yaml, env) = match text.rsplit_once('\n') {
        Some((y, e)) if e.contains('=') => (y, Some(e)),
        _ => (text, None),
    };
    let mut cfg = match parse(yaml) {
        Ok(c) => c,
        Err(e) => {
            let _ = line_of(yaml, &e.path);
            let _ = e.to_string();
            return;
        }
    };
    let env: Vec<(String, String)> = env
        .and_then(|e| e.split_once('='))
        .map(|(k, v)| vec![(k.to_string(), v.to_string())])
        .unwrap_or_default();
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Err(e) = apply_env(&mut cfg, lookup, env.iter().map(|(k, _)| k.clone())) {
        let _ = e.to_string();
        return;
    }
    if let Err(e) = validate(&cfg) {
        let _ = line_of(yaml, &e.path);
        let _ = e.to_string();
    }
});
