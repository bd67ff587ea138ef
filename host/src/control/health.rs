//! Health: each stage judged healthy, degraded or unhealthy, with the reason and the numbers.
//!
//! In: the shared metrics, queue, plugin status and the profiler's history and budget verdict,
//! sampled every `health.interval` (and on demand) against the previous sample so rates cover a
//! window. Out: a [`HealthReport`] whose overall status is the worst component's, and the
//! profile summary for `/v1/stats`. Runs as one ticker task that ends on the shutdown token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{DropReason, Metrics};
use crate::pipeline::Routing;
use crate::plugins::PluginState;
use crate::profiler::ProfileHistory;
use crate::queue::Queue;
use crate::reload::ReloadStatus;

/// A stage's or the daemon's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// The health of one stage, with the reason when it is not healthy.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    pub status: Status,
    pub reason: String,
    #[serde(flatten)]
    pub numbers: BTreeMap<&'static str, serde_json::Value>,
}

/// The answer of `/v1/health`: the overall status and each stage's.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub components: BTreeMap<&'static str, Component>,
}

/// Counter values at one instant, to turn totals into rates.
#[derive(Clone, Copy, Default)]
struct Sample {
    received: u64,
    dropped_queue: u64,
    dropped_sink: u64,
    sink_retries: u64,
    sink_ok: u64,
}

/// Judges health from the metrics every `health.interval`.
pub struct HealthMonitor {
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    routing: watch::Receiver<Routing>,
    /// The sample at the start of the current window, and the one before it.
    window: Mutex<(Instant, Sample, Sample)>,
    /// The profiler's history and budget verdict.
    profile: Arc<ProfileHistory>,
    reload: Arc<Mutex<ReloadStatus>>,
    tail: Option<crate::tail::Tail>,
}

/// Health of the tail sampler is degraded for this long after it decided a run early.
const TAIL_EARLY_DEGRADES_FOR: std::time::Duration = std::time::Duration::from_secs(60);

fn c(
    pairs: &[(&'static str, serde_json::Value)],
    status: Status,
    reason: impl Into<String>,
) -> Component {
    Component {
        status,
        reason: reason.into(),
        numbers: pairs.iter().cloned().collect(),
    }
}

impl HealthMonitor {
    pub fn new(
        metrics: Arc<Metrics>,
        queue: Arc<Queue>,
        routing: watch::Receiver<Routing>,
        profile: Arc<ProfileHistory>,
        reload: Arc<Mutex<ReloadStatus>>,
        tail: Option<crate::tail::Tail>,
    ) -> HealthMonitor {
        let s = Sample::default();
        HealthMonitor {
            metrics,
            queue,
            routing,
            window: Mutex::new((Instant::now(), s, s)),
            profile,
            reload,
            tail,
        }
    }

    fn sample(&self) -> Sample {
        let m = &self.metrics;
        // By label name: a series' labels come sorted by name, not in declaration order.
        let sum = |v: &prometheus::IntCounterVec, label: &str, want: &str| -> u64 {
            use prometheus::core::Collector;
            v.collect()
                .iter()
                .flat_map(|f| f.get_metric().iter())
                .filter(|mm| {
                    want.is_empty()
                        || mm
                            .get_label()
                            .iter()
                            .any(|l| l.name() == label && l.value() == want)
                })
                .map(|mm| mm.get_counter().get_value() as u64)
                .sum()
        };
        Sample {
            received: sum(&m.events_received, "ingest", ""),
            dropped_queue: m.dropped_count(DropReason::QueueFull),
            dropped_sink: m.dropped_count(DropReason::Sink),
            sink_retries: sum(&m.sink_batches, "result", "retry"),
            sink_ok: sum(&m.sink_batches, "result", "ok"),
        }
    }

    /// Starts a new window (called every `health.interval`).
    pub fn tick(&self) {
        let now = self.sample();
        let mut w = self.window.lock();
        *w = (Instant::now(), now, w.1);
    }

    /// Judges every component over the last full window (and what came since).
    pub fn check(&self) -> HealthReport {
        let now = self.sample();
        let (_, _, base) = *self.window.lock();
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let received = d(now.received, base.received);
        let mut components = BTreeMap::new();

        // Ingest and queue: drops for a full queue.
        let qdrop = d(now.dropped_queue, base.dropped_queue);
        let drop_rate = if received > 0 {
            qdrop as f64 / received as f64
        } else {
            0.0
        };
        let (status, reason) = if drop_rate > 0.10 {
            (
                Status::Unhealthy,
                format!("{:.1}% of events dropped: queue full", drop_rate * 100.0),
            )
        } else if qdrop > 0 {
            (
                Status::Degraded,
                format!("{qdrop} events dropped: queue full"),
            )
        } else {
            (Status::Healthy, "accepting".to_string())
        };
        components.insert(
            "ingest",
            c(
                &[
                    ("received", received.into()),
                    ("drop_rate", drop_rate.into()),
                ],
                status,
                reason,
            ),
        );
        let depth = self.queue.len();
        let cap = self.queue.capacity().max(1);
        let fill = depth as f64 / cap as f64;
        let (status, reason) = if fill >= 0.9 {
            (Status::Degraded, format!("queue {:.0}% full", fill * 100.0))
        } else {
            (Status::Healthy, "flowing".to_string())
        };
        components.insert(
            "queue",
            c(
                &[
                    ("depth", depth.into()),
                    ("capacity", cap.into()),
                    ("fill", fill.into()),
                ],
                status,
                reason,
            ),
        );
        let budget = self.profile.budget();
        let (status, reason) = if budget.over.is_some() && budget.degrade_factor < 1.0 {
            (
                Status::Degraded,
                format!(
                    "rates scaled by {:.2}: over resource budget",
                    budget.degrade_factor
                ),
            )
        } else {
            (Status::Healthy, "deciding".to_string())
        };
        components.insert(
            "sampler",
            c(
                &[("degrade_factor", budget.degrade_factor.into())],
                status,
                reason,
            ),
        );

        // Sinks: retries mean a sink is failing now; drops mean data was lost.
        let retries = d(now.sink_retries, base.sink_retries);
        let ok = d(now.sink_ok, base.sink_ok);
        let lost = d(now.dropped_sink, base.dropped_sink);
        let (status, reason) = if lost > 0 {
            (Status::Unhealthy, format!("{lost} events lost by sinks"))
        } else if retries > 0 && ok == 0 {
            (
                Status::Unhealthy,
                format!("{retries} failed deliveries and none succeeded"),
            )
        } else if retries > 0 {
            (Status::Degraded, format!("{retries} deliveries retried"))
        } else {
            (Status::Healthy, "delivering".to_string())
        };
        components.insert(
            "sinks",
            c(
                &[
                    ("failures", retries.into()),
                    ("batches_ok", ok.into()),
                    ("lost", lost.into()),
                ],
                status,
                reason,
            ),
        );

        // Plugins: quarantined ones are bypassed.
        let set = self.routing.borrow().plugins.clone();
        let status_list = set.status();
        let named = |state: PluginState| -> Vec<String> {
            status_list
                .iter()
                .filter(|p| p.state == state)
                .map(|p| p.name.clone())
                .collect()
        };
        let quarantined = named(PluginState::Quarantined);
        let mut unloaded = named(PluginState::Failed);
        unloaded.extend(named(PluginState::KeptPrevious));
        let (status, reason) = if !quarantined.is_empty() {
            (
                Status::Degraded,
                format!("quarantined: {}", quarantined.join(", ")),
            )
        } else if !unloaded.is_empty() {
            (
                Status::Degraded,
                format!(
                    "not loaded, or kept at the previous version: {} (see /v1/plugins)",
                    unloaded.join(", ")
                ),
            )
        } else {
            (Status::Healthy, format!("{} loaded", set.len()))
        };
        components.insert(
            "plugins",
            c(
                &[
                    ("loaded", status_list.len().into()),
                    ("quarantined", quarantined.len().into()),
                ],
                status,
                reason,
            ),
        );

        components.insert("profiler", self.profiler_component(budget));

        // Tail sampling: degraded while runs are decided early (memory and spill full).
        if let Some(t) = self.tail.as_ref().filter(|t| t.enabled()) {
            let s = t.stats();
            let numbers = [
                ("open_runs", s["open_runs"].clone()),
                ("buffered_bytes", s["buffered_bytes"].clone()),
                ("spilled_bytes", s["spilled_bytes"].clone()),
            ];
            let (status, reason) = if t.decided_early_within(TAIL_EARLY_DEGRADES_FOR) {
                (
                    Status::Degraded,
                    "runs are being decided early: sampling.tail.max_bytes and the spill are full",
                )
            } else {
                (Status::Healthy, "runs decided when they close")
            };
            components.insert("tail", c(&numbers, status, reason));
        }

        // Reload: the last refused config or plugin set, until a reload succeeds.
        let r = self.reload.lock().clone();
        let restart: serde_json::Value = r.restart_needed.clone().into();
        let (status, reason) = match &r.last_error {
            Some(e) => (Status::Degraded, format!("last reload refused: {e}")),
            None => (Status::Healthy, "config and plugins as loaded".to_string()),
        };
        components.insert("reload", c(&[("restart_needed", restart)], status, reason));

        let status = components
            .values()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Healthy);
        HealthReport { status, components }
    }

    /// The profiler's view: over budget is degraded (with the reason), the numbers are the
    /// latest sample and the averages the budget was judged on.
    fn profiler_component(&self, budget: crate::profiler::BudgetState) -> Component {
        if !self.profile.enabled() {
            return c(&[], Status::Healthy, "profiling disabled");
        }
        let mut numbers: Vec<(&'static str, serde_json::Value)> = vec![
            ("avg_cpu_percent", budget.avg_cpu_percent.into()),
            ("avg_memory_mb", budget.avg_memory_mb.into()),
            ("degrade_factor", budget.degrade_factor.into()),
        ];
        if let Some(s) = self.profile.latest() {
            numbers.push(("cpu_percent", s.own.cpu_percent.into()));
            numbers.push(("memory_bytes", s.own.memory_bytes.into()));
            if let Some(t) = s.own.threads {
                numbers.push(("threads", t.into()));
            }
            numbers.push(("watched", s.watched.len().into()));
        }
        match budget.over {
            Some(r) => c(&numbers, Status::Degraded, r),
            None => c(&numbers, Status::Healthy, "within budget"),
        }
    }

    /// The profiler's summary over `window`, for `/v1/stats`.
    pub fn profile_summary(&self, window: std::time::Duration) -> serde_json::Value {
        serde_json::to_value(self.profile.summary(window)).unwrap_or(serde_json::Value::Null)
    }
}
