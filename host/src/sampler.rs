//! The native sampler: keeps or drops events by per-type rate, before any plugin runs.
//!
//! In: a batch of events (from the pipeline worker) and anomaly reports (plugins'
//! `report-anomaly`, `POST /v1/anomaly`, events whose type is in `sampling.adaptive.on`).
//! Out: the batch minus the dropped events (counted as `sampled_out`). With `key: run_id` the
//! decision is a hash of the run id against the rate, so a run is kept or dropped whole and the
//! same run gets the same decision after a restart. An anomaly multiplies the rate of its type
//! (`*` = every type) by `boost_factor` for `boost_duration`; a boost is logged when it starts,
//! not each time a report extends it. At most [`MAX_ANOMALY_TYPES`] distinct anomaly types get a
//! boost and a `sampling_boost_active` series of their own; later ones share [`OTHER_TYPE`],
//! whose boost covers every event type without one of its own. Holds no task of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::{SampleKey, SamplingConfig};
use crate::event::Event;
use crate::metrics::{DropReason, Metrics};

/// Rates as seen and changed through `GET|PUT /v1/sampling`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Rates {
    pub default_rate: f64,
    #[serde(default)]
    pub rates: std::collections::BTreeMap<String, f64>,
}

/// A boost in force, for `/v1/sampling` and `/v1/stats`.
#[derive(Clone, Debug, Serialize)]
pub struct BoostInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub remaining_ms: u64,
}

/// Distinct anomaly types that get a boost and a metric series of their own.
pub const MAX_ANOMALY_TYPES: usize = 256;
/// The anomaly type that every type past [`MAX_ANOMALY_TYPES`] is folded into.
pub const OTHER_TYPE: &str = "_other";

struct State {
    cfg: SamplingConfig,
    /// Boost end per type; `*` boosts every type, `_other` every type not in `anomaly_types`.
    boosts: HashMap<String, (Instant, String)>,
    /// The anomaly types seen so far, up to [`MAX_ANOMALY_TYPES`] (never `*` or `_other`).
    anomaly_types: HashSet<String>,
    /// Whether folding into `_other` has been logged.
    folded: bool,
    /// Rates scaled down while the daemon is over its resource budget (1.0 = none).
    degrade: f64,
}

/// The native sampler: per-type rates, the sampling key, and anomaly boosts.
pub struct Sampler {
    state: RwLock<State>,
    rng: AtomicU64,
    metrics: Arc<Metrics>,
}

/// FNV-1a: fixed, so the same run id gives the same decision in every process.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

/// [`fnv1a`] of `prefix` followed by `bytes`, without joining them.
pub(crate) fn fnv1a_prefixed(prefix: u8, bytes: &[u8]) -> u64 {
    fnv1a_from(
        (0xcbf2_9ce4_8422_2325u64 ^ prefix as u64).wrapping_mul(0x0100_0000_01b3),
        bytes,
    )
}

fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalise (splitmix64) so that similar ids spread over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Maps a hash to [0, 1).
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Sampler {
    pub fn new(cfg: SamplingConfig, metrics: Arc<Metrics>) -> Sampler {
        let seed = crate::event::now_ns() | 1;
        let s = Sampler {
            state: RwLock::new(State {
                cfg,
                boosts: HashMap::new(),
                anomaly_types: HashSet::new(),
                folded: false,
                degrade: 1.0,
            }),
            rng: AtomicU64::new(seed),
            metrics,
        };
        s.publish_rates();
        s
    }

    /// Applies a reloaded `sampling` section; active boosts stay.
    pub fn reconfigure(&self, cfg: SamplingConfig) {
        self.state.write().cfg = cfg;
        self.publish_rates();
    }

    /// The configured rates.
    pub fn rates(&self) -> Rates {
        let st = self.state.read();
        Rates {
            default_rate: st.cfg.default_rate,
            rates: st.cfg.rates.clone(),
        }
    }

    /// Merges rates (`PUT /v1/sampling`): a given default replaces it, given types are set.
    pub fn merge_rates(
        &self,
        default_rate: Option<f64>,
        rates: &std::collections::BTreeMap<String, f64>,
    ) {
        {
            let mut st = self.state.write();
            if let Some(d) = default_rate {
                st.cfg.default_rate = d;
            }
            for (k, v) in rates {
                st.cfg.rates.insert(k.clone(), *v);
            }
        }
        self.publish_rates();
    }

    /// Scales every rate by `factor` (1.0 = normal), for the profiler's degrade path.
    pub fn set_degrade(&self, factor: f64) {
        self.state.write().degrade = factor.clamp(0.0, 1.0);
    }

    fn publish_rates(&self) {
        let st = self.state.read();
        self.metrics
            .sampling_rate
            .with_label_values(&["_default"])
            .set(st.cfg.default_rate);
        for (t, r) in &st.cfg.rates {
            self.metrics.sampling_rate.with_label_values(&[t]).set(*r);
        }
    }

    /// Boosts the sampling of `kind` (`*` for every type) for `boost_duration`, from now.
    pub fn report_anomaly(&self, kind: &str, reason: &str) {
        let mut st = self.state.write();
        if !st.cfg.adaptive.enabled {
            return;
        }
        let key = st.anomaly_key(kind);
        let now = Instant::now();
        let duration = st.cfg.adaptive.boost_duration.0;
        let started = st.boosts.get(key).is_none_or(|(until, _)| *until <= now);
        st.boosts
            .insert(key.to_string(), (now + duration, reason.to_string()));
        if started {
            self.metrics
                .sampling_boost_active
                .with_label_values(&[key])
                .set(1);
            tracing::info!(kind = key, reason, duration = ?duration, "sampling boost started");
        } else {
            tracing::debug!(kind = key, reason, "sampling boost extended");
        }
    }

    /// Boosts in force; clears expired ones and their gauges.
    pub fn boosts(&self) -> Vec<BoostInfo> {
        let now = Instant::now();
        let mut st = self.state.write();
        st.boosts.retain(|k, (until, _)| {
            let live = *until > now;
            if !live {
                self.metrics
                    .sampling_boost_active
                    .with_label_values(&[k])
                    .set(0);
            }
            live
        });
        st.boosts
            .iter()
            .map(|(k, (until, reason))| BoostInfo {
                kind: k.clone(),
                reason: reason.clone(),
                remaining_ms: until.saturating_duration_since(now).as_millis() as u64,
            })
            .collect()
    }

    /// Keeps the sampled events of a batch, in order, and counts the rest. With `spare_runs`
    /// (tail sampling on) events with a run id are left for the tail sampler to decide.
    pub fn apply(&self, events: &mut Vec<Event>, spare_runs: bool) {
        let triggers = {
            let st = self.state.read();
            let c = &st.cfg;
            if c.adaptive.enabled && !c.adaptive.on.is_empty() {
                events
                    .iter()
                    .find(|e| c.adaptive.on.iter().any(|t| **t == *e.kind))
                    .map(|e| e.kind.to_string())
            } else {
                None
            }
        };
        if let Some(kind) = triggers {
            self.report_anomaly("*", &format!("event of type {kind}"));
        }
        let st = self.state.read();
        let c = &st.cfg;
        let all_kept =
            st.degrade >= 1.0 && c.default_rate >= 1.0 && c.rates.values().all(|r| *r >= 1.0);
        if all_kept {
            return;
        }
        let now = Instant::now();
        let global_boost = st.boosts.get("*").is_some_and(|(u, _)| *u > now);
        let other_boost = st.boosts.get(OTHER_TYPE).is_some_and(|(u, _)| *u > now);
        let factor = c.adaptive.boost_factor;
        let before = events.len();
        let mut last: Option<(*const u8, usize, f64)> = None;
        events.retain(|e| {
            // Consecutive events of one type are common: reuse the rate lookup.
            let rate = match last {
                Some((p, l, r)) if p == e.kind.as_ptr() && l == e.kind.len() => r,
                _ => {
                    let mut r = c.rates.get(&*e.kind).copied().unwrap_or(c.default_rate);
                    let own = st.boosts.get(&*e.kind).is_some_and(|(u, _)| *u > now);
                    let folded = other_boost && !st.anomaly_types.contains(&*e.kind);
                    if global_boost || own || folded {
                        r = (r * factor).min(1.0);
                    }
                    r *= st.degrade;
                    last = Some((e.kind.as_ptr(), e.kind.len(), r));
                    r
                }
            };
            if rate >= 1.0 || (spare_runs && e.run_id.is_some()) {
                return true;
            }
            if rate <= 0.0 {
                return false;
            }
            let u = match (c.key, &e.run_id) {
                (SampleKey::RunId, Some(run)) => unit(fnv1a(run.as_bytes())),
                _ => unit(fnv1a(
                    &self
                        .rng
                        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                        .to_le_bytes(),
                )),
            };
            u < rate
        });
        drop(st);
        self.metrics
            .dropped(DropReason::SampledOut, (before - events.len()) as u64);
    }
}

impl State {
    /// The key `kind` is boosted under: itself while there is room, else `_other`.
    fn anomaly_key<'a>(&mut self, kind: &'a str) -> &'a str {
        if kind == "*" || kind == OTHER_TYPE || self.anomaly_types.contains(kind) {
            return kind;
        }
        if self.anomaly_types.len() < MAX_ANOMALY_TYPES {
            self.anomaly_types.insert(kind.to_string());
            return kind;
        }
        if !self.folded {
            self.folded = true;
            tracing::warn!(
                kind,
                max = MAX_ANOMALY_TYPES,
                "too many distinct anomaly types: this one and every later new one share the `_other` boost and metric series"
            );
        }
        OTHER_TYPE
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_prefixed_hash_is_the_hash_of_the_joined_bytes() {
        assert_eq!(fnv1a_prefixed(0x5a, b"run-1"), fnv1a(b"\x5arun-1"));
        assert_eq!(fnv1a_prefixed(0, b""), fnv1a(&[0]));
    }
    use super::*;
    use crate::event::{Line, parse_owned};

    fn ev(kind: &str, run: Option<&str>) -> Event {
        let line = match run {
            Some(r) => format!(r#"{{"type":"{kind}","run_id":"{r}"}}"#),
            None => format!(r#"{{"type":"{kind}"}}"#),
        };
        match parse_owned(line.as_bytes(), 1024) {
            Ok(Line::Event(e)) => e,
            _ => unreachable!(),
        }
    }

    fn sampler(yaml: &str) -> Sampler {
        let cfg: SamplingConfig = serde_yaml::from_str(yaml).unwrap();
        Sampler::new(cfg, Arc::new(Metrics::new()))
    }

    #[test]
    fn runs_are_kept_or_dropped_whole_and_stably() {
        let s = sampler("default_rate: 0.5\nkey: run_id\n");
        let mut kept_runs = std::collections::HashSet::new();
        let mut dropped_runs = std::collections::HashSet::new();
        for run in 0..200 {
            let id = format!("run_{run}");
            let mut batch: Vec<Event> = (0..10).map(|_| ev("t", Some(&id))).collect();
            s.apply(&mut batch, false);
            match batch.len() {
                10 => kept_runs.insert(id),
                0 => dropped_runs.insert(id),
                n => panic!("run split: {n} of 10 kept"),
            };
        }
        assert!(
            kept_runs.len() > 60 && dropped_runs.len() > 60,
            "{} kept",
            kept_runs.len()
        );
        // A new sampler (a restart) decides the same.
        let s2 = sampler("default_rate: 0.5\nkey: run_id\n");
        for id in &kept_runs {
            let mut b = vec![ev("t", Some(id))];
            s2.apply(&mut b, false);
            assert_eq!(b.len(), 1);
        }
    }

    #[test]
    fn per_type_rates_and_counting() {
        let s = sampler("default_rate: 1.0\nrates: {noisy: 0.0}\nkey: random\n");
        let mut batch = vec![ev("noisy", None), ev("keep", None), ev("noisy", None)];
        s.apply(&mut batch, false);
        assert_eq!(batch.len(), 1);
        assert_eq!(&*batch[0].kind, "keep");
        assert_eq!(s.metrics.dropped_count(DropReason::SampledOut), 2);
    }

    #[test]
    fn anomaly_boosts_rate() {
        let s = sampler(
            "default_rate: 0.2\nkey: random\nadaptive: {boost_factor: 5.0, boost_duration: 60s}\n",
        );
        s.report_anomaly("t", "error");
        let mut batch: Vec<Event> = (0..1000).map(|_| ev("t", None)).collect();
        s.apply(&mut batch, false);
        assert_eq!(batch.len(), 1000, "0.2 x 5 = 1.0 keeps all");
        assert_eq!(s.boosts().len(), 1);
    }

    #[test]
    fn adaptive_on_types_trigger_global_boost() {
        let s = sampler(
            "default_rate: 0.2\nkey: random\nadaptive: {boost_factor: 5.0, on: [test_failed]}\n",
        );
        let mut batch = vec![ev("test_failed", None)];
        s.apply(&mut batch, false);
        assert_eq!(s.boosts()[0].kind, "*");
        let mut batch: Vec<Event> = (0..100).map(|_| ev("other", None)).collect();
        s.apply(&mut batch, false);
        assert_eq!(batch.len(), 100);
    }

    /// Records what is logged on this thread while it lives (the tests run on one thread).
    /// One global subscriber writes into a per-thread buffer: a scoped (`set_default`)
    /// subscriber races with tracing's per-callsite interest cache when other tests run in
    /// parallel, and then misses lines now and then.
    struct LogCapture;

    thread_local! {
        static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
    }

    struct Sink;

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURED.with(|c| {
                if let Some(buf) = c.borrow_mut().as_mut() {
                    buf.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl LogCapture {
        fn start() -> LogCapture {
            static INIT: std::sync::Once = std::sync::Once::new();
            INIT.call_once(|| {
                let sub = tracing_subscriber::fmt()
                    .with_writer(|| Sink)
                    .with_ansi(false)
                    .with_max_level(tracing::Level::DEBUG)
                    .finish();
                // Only these tests set one; if something else had, their counts would say so.
                let _ = tracing::subscriber::set_global_default(sub);
            });
            CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
            LogCapture
        }

        /// Logged lines that contain `needle`.
        fn count(&self, needle: &str) -> usize {
            CAPTURED.with(|c| {
                let text =
                    String::from_utf8_lossy(c.borrow().as_deref().unwrap_or(&[])).into_owned();
                text.lines().filter(|l| l.contains(needle)).count()
            })
        }
    }

    impl Drop for LogCapture {
        fn drop(&mut self) {
            CAPTURED.with(|c| *c.borrow_mut() = None);
        }
    }

    /// How many of 1000 events of type `kind` are kept (default rate 0.2, boost factor 5: all
    /// while boosted, about 200 otherwise).
    fn kept_of_1000(s: &Sampler, kind: &str) -> usize {
        let mut batch: Vec<Event> = (0..1000).map(|_| ev(kind, None)).collect();
        s.apply(&mut batch, false);
        batch.len()
    }

    #[tokio::test(start_paused = true)]
    async fn a_boost_is_logged_when_it_starts_not_when_extended() {
        let log = LogCapture::start();
        let s = sampler(
            "default_rate: 0.2\nkey: random\nadaptive: {boost_factor: 5.0, boost_duration: 10s, on: [test_failed]}\n",
        );
        for _ in 0..5 {
            let mut batch = vec![ev("test_failed", None), ev("other", None)];
            s.apply(&mut batch, false);
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
        }
        assert_eq!(
            log.count("sampling boost started"),
            1,
            "one start for five batches"
        );
        assert_eq!(log.count("sampling boost extended"), 4);
        // Each trigger extended the boost: 10 s after the last one it is still on at 9 s.
        tokio::time::advance(std::time::Duration::from_secs(8)).await;
        assert_eq!(kept_of_1000(&s, "other"), 1000);
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        assert!(kept_of_1000(&s, "other") < 400, "the boost ended");
        assert!(s.boosts().is_empty());
        let mut batch = vec![ev("test_failed", None)];
        s.apply(&mut batch, false);
        assert_eq!(
            log.count("sampling boost started"),
            2,
            "a new boost after the end"
        );

        // Reports through the API or a plugin follow the same rule.
        s.report_anomaly("t", "error");
        s.report_anomaly("t", "error");
        assert_eq!(log.count("sampling boost started"), 3);
    }

    #[test]
    fn anomaly_types_are_capped_and_the_rest_share_other() {
        let log = LogCapture::start();
        let s = sampler(
            "default_rate: 0.2\nkey: random\nadaptive: {boost_factor: 5.0, boost_duration: 60s}\n",
        );
        let n = MAX_ANOMALY_TYPES + 44;
        for i in 0..n {
            s.report_anomaly(&format!("kind_{i}"), "error");
        }
        s.report_anomaly("*", "global");
        let boosts = s.boosts();
        assert_eq!(
            boosts.len(),
            MAX_ANOMALY_TYPES + 2,
            "256 types, _other and *"
        );
        assert!(boosts.iter().any(|b| b.kind == OTHER_TYPE));
        let text = s.metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("outrigger_sampling_boost_active{"))
            .count();
        assert_eq!(series, MAX_ANOMALY_TYPES + 2, "bounded metric series");
        assert!(text.contains("outrigger_sampling_boost_active{type=\"_other\"} 1"));
        assert!(!text.contains(&format!("type=\"kind_{}\"", MAX_ANOMALY_TYPES)));
        assert_eq!(log.count("too many distinct anomaly types"), 1, "said once");
        assert_eq!(log.count("WARN"), 1);
        // A type seen before the cap keeps its own boost; a folded one is boosted via `_other`.
        s.report_anomaly("kind_0", "again");
        assert_eq!(s.boosts().len(), MAX_ANOMALY_TYPES + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_other_boost_covers_types_past_the_cap_only() {
        let s = sampler(
            "default_rate: 0.2\nkey: random\nadaptive: {boost_factor: 5.0, boost_duration: 60s}\n",
        );
        for i in 0..MAX_ANOMALY_TYPES {
            s.report_anomaly(&format!("kind_{i}"), "old");
        }
        assert_eq!(kept_of_1000(&s, "kind_0"), 1000);
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert!(kept_of_1000(&s, "kind_0") < 400, "the old boosts ended");
        assert!(kept_of_1000(&s, "late_kind") < 400);
        s.report_anomaly("late_kind", "error");
        assert_eq!(s.boosts()[0].kind, OTHER_TYPE);
        assert_eq!(
            kept_of_1000(&s, "late_kind"),
            1000,
            "boosted through _other"
        );
        assert_eq!(
            kept_of_1000(&s, "never_reported"),
            1000,
            "so is every untracked type"
        );
        assert!(
            kept_of_1000(&s, "kind_0") < 400,
            "a tracked type only by its own boost"
        );
    }
}
