//! The native sampler: keeps or drops events by per-type rate, before any plugin runs.
//!
//! In: a batch of events (from the pipeline worker) and anomaly reports (plugins'
//! `report-anomaly`, `POST /v1/anomaly`, events whose type is in `sampling.adaptive.on`).
//! Out: the batch minus the dropped events (counted as `sampled_out`). With `key: run_id` the
//! decision is a hash of the run id against the rate, so a run is kept or dropped whole and the
//! same run gets the same decision after a restart. An anomaly multiplies the rate of its type
//! (`*` = every type) by `boost_factor` for `boost_duration`. Holds no task of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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

struct State {
    cfg: SamplingConfig,
    /// Boost end per type; `*` boosts every type.
    boosts: HashMap<String, (Instant, String)>,
    /// Rates scaled down while the daemon is over its resource budget (1.0 = none).
    degrade: f64,
}

pub struct Sampler {
    state: RwLock<State>,
    rng: AtomicU64,
    metrics: Arc<Metrics>,
}

/// FNV-1a: fixed, so the same run id gives the same decision in every process.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
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
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Sampler {
    pub fn new(cfg: SamplingConfig, metrics: Arc<Metrics>) -> Sampler {
        let seed = crate::event::now_ns() | 1;
        let s = Sampler {
            state: RwLock::new(State {
                cfg,
                boosts: HashMap::new(),
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

    /// Boosts the sampling of `kind` (`*` for every type) for `boost_duration`.
    pub fn report_anomaly(&self, kind: &str, reason: &str) {
        let mut st = self.state.write();
        if !st.cfg.adaptive.enabled {
            return;
        }
        let until = Instant::now() + st.cfg.adaptive.boost_duration.0;
        st.boosts
            .insert(kind.to_string(), (until, reason.to_string()));
        self.metrics
            .sampling_boost_active
            .with_label_values(&[kind])
            .set(1);
        tracing::info!(kind, reason, "anomaly reported: sampling boosted");
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

    /// Keeps the sampled events of a batch, in order, and counts the rest.
    pub fn apply(&self, events: &mut Vec<Event>) {
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
        let factor = c.adaptive.boost_factor;
        let before = events.len();
        let mut last: Option<(*const u8, usize, f64)> = None;
        events.retain(|e| {
            // Consecutive events of one type are common: reuse the rate lookup.
            let rate = match last {
                Some((p, l, r)) if p == e.kind.as_ptr() && l == e.kind.len() => r,
                _ => {
                    let mut r = c.rates.get(&*e.kind).copied().unwrap_or(c.default_rate);
                    if global_boost || st.boosts.get(&*e.kind).is_some_and(|(u, _)| *u > now) {
                        r = (r * factor).min(1.0);
                    }
                    r *= st.degrade;
                    last = Some((e.kind.as_ptr(), e.kind.len(), r));
                    r
                }
            };
            if rate >= 1.0 {
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

#[cfg(test)]
mod tests {
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
            s.apply(&mut batch);
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
            s2.apply(&mut b);
            assert_eq!(b.len(), 1);
        }
    }

    #[test]
    fn per_type_rates_and_counting() {
        let s = sampler("default_rate: 1.0\nrates: {noisy: 0.0}\nkey: random\n");
        let mut batch = vec![ev("noisy", None), ev("keep", None), ev("noisy", None)];
        s.apply(&mut batch);
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
        s.apply(&mut batch);
        assert_eq!(batch.len(), 1000, "0.2 x 5 = 1.0 keeps all");
        assert_eq!(s.boosts().len(), 1);
    }

    #[test]
    fn adaptive_on_types_trigger_global_boost() {
        let s = sampler(
            "default_rate: 0.2\nkey: random\nadaptive: {boost_factor: 5.0, on: [test_failed]}\n",
        );
        let mut batch = vec![ev("test_failed", None)];
        s.apply(&mut batch);
        assert_eq!(s.boosts()[0].kind, "*");
        let mut batch: Vec<Event> = (0..100).map(|_| ev("other", None)).collect();
        s.apply(&mut batch);
        assert_eq!(batch.len(), 100);
    }
}
