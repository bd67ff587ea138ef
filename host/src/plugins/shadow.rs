//! Shadow runs: a new version of a plugin tried on live traffic with no effect on it.
//!
//! In: for each batch the live plugin handled, what it answered and what its shadow
//! (`NAME.shadow.wasm` beside `NAME.wasm`) answered on the same events ([`Answer`]s), and how
//! long each took. Out: a [`ShadowReport`] per shadow (batches, events, differing verdicts
//! with a few recent examples, errors, emits, cost per event of each side), shown by
//! `GET /v1/plugins`, counted in `outrigger_plugin_shadow_diffs_total{plugin}`, and printed by
//! `outrigger replay --against`. Nothing here changes an event: the shadow's answers are
//! compared and discarded. The report lives in the shadow's shared health, so it survives
//! reloads while the shadow's file is unchanged.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use serde::Serialize;

use super::bindings;

/// Examples of differing verdicts kept per shadow (the most recent).
pub const MAX_EXAMPLES: usize = 5;
/// Longest event data shown in an example; the rest is cut.
const EXAMPLE_DATA_BYTES: usize = 256;

/// One side's answer for one event, in a form that compares and prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Keep,
    Drop,
    /// A handler's replacement, as the wire event it would become.
    Replace(String),
}

impl Answer {
    pub fn of_replacement(e: &bindings::Event) -> Answer {
        Answer::Replace(describe(e))
    }

    pub fn of_decision(keep: bool) -> Answer {
        if keep { Answer::Keep } else { Answer::Drop }
    }

    fn short(&self) -> String {
        match self {
            Answer::Keep => "keep".into(),
            Answer::Drop => "drop".into(),
            Answer::Replace(e) => format!("replace {e}"),
        }
    }
}

/// A replacement as compact JSON (type, ts, run id, attributes, data) for comparing and
/// showing.
fn describe(e: &bindings::Event) -> String {
    let data: serde_json::Value =
        serde_json::from_str(&e.payload).unwrap_or_else(|_| e.payload.clone().into());
    serde_json::json!({
        "type": e.kind,
        "ts_ns": e.ts_ns,
        "run_id": e.run_id,
        "attributes": e.attributes,
        "data": data,
    })
    .to_string()
}

/// One event on which the shadow answered differently.
#[derive(Clone, Debug, Serialize)]
pub struct Example {
    /// The event's type and data (cut at 256 bytes).
    #[serde(rename = "type")]
    pub kind: String,
    pub data: String,
    pub live: String,
    pub shadow: String,
}

/// What a shadow did next to its live plugin.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShadowReport {
    /// Batches both ran successfully (and so were compared).
    pub batches: u64,
    /// Events in those batches.
    pub events: u64,
    /// Events whose verdicts differed.
    pub differing: u64,
    /// Batches where the emitted events differed in number.
    pub emits_differing: u64,
    pub emitted_live: u64,
    pub emitted_shadow: u64,
    /// Batches the shadow failed (trap, fuel, timeout, bad output…); the live ones went on.
    pub errors: u64,
    /// Batches the live plugin failed (not compared).
    pub live_errors: u64,
    /// Batches not given to the shadow: it was quarantined, or the daemon over its budget.
    pub skipped: u64,
    /// The most recent differing verdicts.
    pub examples: VecDeque<Example>,
    /// Cost per event of each side, in microseconds, over the compared batches.
    pub live_us_per_event: f64,
    pub shadow_us_per_event: f64,
    #[serde(skip)]
    live_ns: u128,
    #[serde(skip)]
    shadow_ns: u128,
}

/// The events a batch showed the plugins: type and data, for examples.
pub struct Shown<'a> {
    pub kind: &'a str,
    pub data: &'a str,
}

impl ShadowReport {
    /// Records one compared batch; returns how many verdicts differed.
    #[allow(clippy::too_many_arguments)]
    pub fn compare(
        &mut self,
        shown: &[Shown<'_>],
        live: &[Answer],
        shadow: &[Answer],
        emitted_live: usize,
        emitted_shadow: usize,
        live_took: Duration,
        shadow_took: Duration,
    ) -> u64 {
        self.batches += 1;
        self.events += shown.len() as u64;
        self.emitted_live += emitted_live as u64;
        self.emitted_shadow += emitted_shadow as u64;
        if emitted_live != emitted_shadow {
            self.emits_differing += 1;
        }
        self.live_ns += live_took.as_nanos();
        self.shadow_ns += shadow_took.as_nanos();
        if self.events > 0 {
            self.live_us_per_event = self.live_ns as f64 / self.events as f64 / 1e3;
            self.shadow_us_per_event = self.shadow_ns as f64 / self.events as f64 / 1e3;
        }
        let mut differing = 0u64;
        for (i, (l, s)) in live.iter().zip(shadow).enumerate() {
            if l == s {
                continue;
            }
            differing += 1;
            if self.examples.len() >= MAX_EXAMPLES {
                self.examples.pop_front();
            }
            let ev = shown.get(i);
            self.examples.push_back(Example {
                kind: ev.map(|e| e.kind.to_string()).unwrap_or_default(),
                data: ev.map(|e| cut(e.data)).unwrap_or_default(),
                live: cut(&l.short()),
                shadow: cut(&s.short()),
            });
        }
        self.differing += differing;
        differing
    }

    /// One paragraph for a terminal (`outrigger replay --against`).
    pub fn render(&self, live: &str, shadow: &str) -> String {
        let mut s = format!(
            "{shadow} against {live}: {} batches, {} events, {} verdicts differ ({:.2} %), \
             emitted {} against {} ({} batches differ), {} errors ({} of {live})\n\
             cost per event: {live} {:.2} µs, {shadow} {:.2} µs\n",
            self.batches,
            self.events,
            self.differing,
            if self.events > 0 {
                self.differing as f64 * 100.0 / self.events as f64
            } else {
                0.0
            },
            self.emitted_shadow,
            self.emitted_live,
            self.emits_differing,
            self.errors,
            self.live_errors,
            self.live_us_per_event,
            self.shadow_us_per_event,
        );
        for e in &self.examples {
            s.push_str(&format!(
                "  {} {}: {live} {}, {shadow} {}\n",
                e.kind, e.data, e.live, e.shadow
            ));
        }
        s
    }
}

fn cut(s: &str) -> String {
    if s.len() <= EXAMPLE_DATA_BYTES {
        return s.to_string();
    }
    let mut end = EXAMPLE_DATA_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Makes the shadow file the live one: `live` (NAME.wasm) is copied to `NAME.wasm.prev`, then
/// `shadow` (NAME.shadow.wasm) renamed over it, so NAME.wasm is never missing; likewise
/// `NAME.shadow.yml` over `NAME.yml` when the shadow has its own config. Returns where the
/// previous version went.
pub fn promote_files(live: &Path, shadow: &Path) -> anyhow::Result<PathBuf> {
    let prev = with_suffix(live, ".prev");
    std::fs::copy(live, &prev)
        .with_context(|| format!("keeping {} as {}", live.display(), prev.display()))?;
    let shadow_yml = shadow.with_extension("yml");
    if shadow_yml.exists() {
        let live_yml = live.with_extension("yml");
        if live_yml.exists() {
            std::fs::copy(&live_yml, with_suffix(&live_yml, ".prev"))
                .with_context(|| format!("keeping {}", live_yml.display()))?;
        }
        std::fs::rename(&shadow_yml, &live_yml).with_context(|| {
            format!("moving {} to {}", shadow_yml.display(), live_yml.display())
        })?;
    }
    std::fs::rename(shadow, live)
        .with_context(|| format!("moving {} to {}", shadow.display(), live.display()))?;
    Ok(prev)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_verdicts_are_counted_with_recent_examples() {
        let mut r = ShadowReport::default();
        let shown: Vec<Shown> = (0..10)
            .map(|_| Shown {
                kind: "log",
                data: "{}",
            })
            .collect();
        let live = vec![Answer::Keep; 10];
        let mut shadow = live.clone();
        for a in shadow.iter_mut().take(7) {
            *a = Answer::Drop;
        }
        let d = r.compare(
            &shown,
            &live,
            &shadow,
            1,
            0,
            Duration::from_micros(10),
            Duration::from_micros(30),
        );
        assert_eq!(d, 7);
        assert_eq!(r.differing, 7);
        assert_eq!(r.examples.len(), MAX_EXAMPLES);
        assert_eq!(r.examples[0].live, "keep");
        assert_eq!(r.examples[0].shadow, "drop");
        assert_eq!(r.emits_differing, 1);
        assert!((r.live_us_per_event - 1.0).abs() < 1e-9);
        assert!((r.shadow_us_per_event - 3.0).abs() < 1e-9);
        assert_eq!(
            r.compare(&shown, &live, &live, 0, 0, Duration::ZERO, Duration::ZERO),
            0
        );
        assert_eq!((r.batches, r.events, r.differing), (2, 20, 7));
        assert!(
            r.render("redact", "redact.shadow")
                .contains("7 verdicts differ")
        );
    }

    #[test]
    fn replacements_compare_by_content() {
        let e = |p: &str| bindings::Event {
            kind: "t".into(),
            ts_ns: 1,
            run_id: None,
            attributes: vec![],
            payload: p.into(),
        };
        let a = Answer::of_replacement(&e(r#"{"a":1}"#));
        let b = Answer::of_replacement(&e(r#"{"a": 1}"#));
        let c = Answer::of_replacement(&e(r#"{"a":2}"#));
        assert_eq!(a, b, "the same JSON, spaced differently");
        assert_ne!(a, c);
        assert_eq!(cut(&"é".repeat(300)).chars().count(), 129);
    }
}
