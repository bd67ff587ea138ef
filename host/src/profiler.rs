//! The profiler: the daemon's own CPU, memory and threads, the watched processes, and budgets.
//!
//! In: `profiling` from the config (interval, `watch_pids`, budgets, history length) and the
//! pids given with `outrigger run --watch-pid`. Every `interval` it reads `/proc` through
//! `sysinfo`, sets the `process_*` and `watched_*` gauges and appends a sample to a bounded
//! [`ProfileHistory`], which answers summaries over a window for `GET /v1/stats` and health.
//! Budgets: when the average of the last few samples is over `cpu_percent` or `memory_mb`, the
//! native sampler's rates are scaled down ([`Sampler::set_degrade`]) and plugins marked
//! `optional` are skipped (the pipeline's `over_budget` flag); health reports it and it is
//! logged. Back under the budget (with some margin, so that it does not flap) everything is
//! restored. The task ends on the shutdown token.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Budgets, ProfilingConfig};
use crate::metrics::Metrics;
use crate::sampler::Sampler;

/// How many recent samples are averaged before a budget is judged: one spike does not degrade.
pub const BUDGET_SAMPLES: usize = 5;
/// Back under budget means under this share of it, so that a value hovering at the budget
/// does not switch the degrade on and off every interval.
pub const RECOVER_SHARE: f64 = 0.9;
/// The sampling factor while over budget lies between these (proportional to how far over).
pub const DEGRADE_MIN: f64 = 0.1;
pub const DEGRADE_MAX: f64 = 0.5;

/// One process at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    pub pid: u32,
    /// Percent of one core (200 = two cores busy).
    pub cpu_percent: f64,
    /// Resident memory.
    pub memory_bytes: u64,
    pub threads: Option<u64>,
}

/// Everything measured at one tick.
#[derive(Clone, Debug)]
pub struct ProfileSample {
    pub at: Instant,
    pub own: ProcSample,
    /// The watched processes that were alive at this tick.
    pub watched: Vec<ProcSample>,
}

/// The budget verdict in force.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BudgetState {
    /// Why the daemon is over budget; `None` while within it.
    pub over: Option<String>,
    /// The factor applied to sampling rates (1.0 = none).
    pub degrade_factor: f64,
    /// The averages the verdict was based on.
    pub avg_cpu_percent: f64,
    pub avg_memory_mb: f64,
}

/// Judges the averages against the budgets. `was_over` lowers the thresholds to
/// [`RECOVER_SHARE`] of the budget (hysteresis). A budget of 0 or less is no budget.
/// Returns the reason and the degrade factor when over.
pub fn assess(
    avg_cpu_percent: f64,
    avg_memory_mb: f64,
    budgets: &Budgets,
    was_over: bool,
) -> Option<(String, f64)> {
    let share = if was_over { RECOVER_SHARE } else { 1.0 };
    let mut reasons = Vec::new();
    let mut ratio = f64::INFINITY;
    if budgets.cpu_percent > 0.0 && avg_cpu_percent > budgets.cpu_percent * share {
        reasons.push(format!(
            "CPU {avg_cpu_percent:.1}% over the budget of {}%",
            budgets.cpu_percent
        ));
        ratio = ratio.min(budgets.cpu_percent / avg_cpu_percent);
    }
    if budgets.memory_mb > 0.0 && avg_memory_mb > budgets.memory_mb * share {
        reasons.push(format!(
            "memory {avg_memory_mb:.1} MB over the budget of {} MB",
            budgets.memory_mb
        ));
        ratio = ratio.min(budgets.memory_mb / avg_memory_mb);
    }
    if reasons.is_empty() {
        return None;
    }
    Some((reasons.join("; "), ratio.clamp(DEGRADE_MIN, DEGRADE_MAX)))
}

/// Minimum, average, maximum and latest of a series.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stat {
    pub avg: f64,
    pub max: f64,
    pub last: f64,
}

/// Resident memory over a window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MemoryStat {
    pub last: u64,
    pub min: u64,
    pub max: u64,
    /// Last minus first sample in the window (negative when memory was released).
    pub growth: i64,
    /// `growth` scaled to one minute.
    pub growth_per_minute: f64,
}

/// One process over a window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessSummary {
    pub samples: usize,
    pub cpu_percent: Stat,
    pub memory_bytes: MemoryStat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
    /// For watched processes: present at the latest tick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alive: Option<bool>,
}

/// What `GET /v1/stats?window=…` reports under `profile`.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileSummary {
    pub enabled: bool,
    pub window_seconds: f64,
    pub interval_seconds: f64,
    pub samples: usize,
    #[serde(rename = "self")]
    pub own: ProcessSummary,
    /// By pid.
    pub watched: BTreeMap<u32, ProcessSummary>,
    pub budget: BudgetReport,
}

/// The daemon's resource use judged against `profiling.budgets`.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    pub cpu_percent: f64,
    pub memory_mb: f64,
    #[serde(flatten)]
    pub state: BudgetState,
}

/// Summarises the samples of one process (`pick` finds it in a sample).
fn summarise<'a>(
    samples: impl Iterator<Item = (&'a Instant, &'a ProcSample)>,
) -> Option<ProcessSummary> {
    let mut n = 0usize;
    let (mut sum, mut max, mut last) = (0.0, 0.0f64, 0.0);
    let (mut first_mem, mut last_mem, mut min_mem, mut max_mem) = (0u64, 0u64, u64::MAX, 0u64);
    let (mut first_at, mut last_at) = (None, None);
    let mut threads = None;
    for (at, s) in samples {
        if n == 0 {
            first_mem = s.memory_bytes;
            first_at = Some(*at);
        }
        n += 1;
        sum += s.cpu_percent;
        max = max.max(s.cpu_percent);
        last = s.cpu_percent;
        last_mem = s.memory_bytes;
        min_mem = min_mem.min(s.memory_bytes);
        max_mem = max_mem.max(s.memory_bytes);
        last_at = Some(*at);
        threads = s.threads;
    }
    if n == 0 {
        return None;
    }
    let growth = last_mem as i64 - first_mem as i64;
    let span = match (first_at, last_at) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Some(ProcessSummary {
        samples: n,
        cpu_percent: Stat {
            avg: sum / n as f64,
            max,
            last,
        },
        memory_bytes: MemoryStat {
            last: last_mem,
            min: min_mem,
            max: max_mem,
            growth,
            growth_per_minute: if span > 0.0 {
                growth as f64 * 60.0 / span
            } else {
                0.0
            },
        },
        threads,
        alive: None,
    })
}

struct Ring {
    samples: VecDeque<ProfileSample>,
    capacity: usize,
    config: ProfilingConfig,
    /// Every pid watched now (config and command line).
    watching: Vec<u32>,
    budget: BudgetState,
}

/// The profiler's bounded history and budget verdict, shared with the control API and health.
pub struct ProfileHistory {
    ring: Mutex<Ring>,
}

impl ProfileHistory {
    pub fn new(config: &ProfilingConfig) -> ProfileHistory {
        ProfileHistory {
            ring: Mutex::new(Ring {
                samples: VecDeque::new(),
                capacity: config.history.max(1),
                config: config.clone(),
                watching: Vec::new(),
                budget: BudgetState {
                    degrade_factor: 1.0,
                    ..BudgetState::default()
                },
            }),
        }
    }

    fn push(&self, sample: ProfileSample) {
        let mut r = self.ring.lock();
        while r.samples.len() >= r.capacity {
            r.samples.pop_front();
        }
        r.samples.push_back(sample);
    }

    /// Averages of the daemon's own CPU and memory (MB) over the last `n` samples; `None`
    /// until there are `n`.
    fn recent_average(&self, n: usize) -> Option<(f64, f64)> {
        let r = self.ring.lock();
        if n == 0 || r.samples.len() < n {
            return None;
        }
        let recent = r.samples.iter().rev().take(n);
        let (cpu, mem) = recent.fold((0.0, 0.0), |(c, m), s| {
            (c + s.own.cpu_percent, m + s.own.memory_bytes as f64)
        });
        Some((cpu / n as f64, mem / n as f64 / (1024.0 * 1024.0)))
    }

    /// The budget verdict in force.
    pub fn budget(&self) -> BudgetState {
        self.ring.lock().budget.clone()
    }

    /// The latest sample, if any.
    pub fn latest(&self) -> Option<ProfileSample> {
        self.ring.lock().samples.back().cloned()
    }

    pub fn enabled(&self) -> bool {
        self.ring.lock().config.enabled
    }

    /// Summary of the samples taken in the last `window`.
    pub fn summary(&self, window: Duration) -> ProfileSummary {
        let r = self.ring.lock();
        let now = Instant::now();
        let start = now.checked_sub(window);
        let in_window: Vec<&ProfileSample> = r
            .samples
            .iter()
            .filter(|s| start.is_none_or(|t| s.at >= t))
            .collect();
        let own = summarise(in_window.iter().map(|s| (&s.at, &s.own))).unwrap_or_default();
        let latest = r.samples.back();
        let mut watched = BTreeMap::new();
        for pid in &r.watching {
            let mut sum = summarise(
                in_window
                    .iter()
                    .filter_map(|s| s.watched.iter().find(|w| w.pid == *pid).map(|w| (&s.at, w))),
            )
            .unwrap_or_default();
            sum.alive = Some(latest.is_some_and(|l| l.watched.iter().any(|w| w.pid == *pid)));
            sum.threads = None;
            watched.insert(*pid, sum);
        }
        ProfileSummary {
            enabled: r.config.enabled,
            window_seconds: window.as_secs_f64(),
            interval_seconds: r.config.interval.0.as_secs_f64(),
            samples: in_window.len(),
            own,
            watched,
            budget: BudgetReport {
                cpu_percent: r.config.budgets.cpu_percent,
                memory_mb: r.config.budgets.memory_mb,
                state: r.budget.clone(),
            },
        }
    }
}

/// The profiler task's inputs.
pub struct Profiler {
    pub config: ProfilingConfig,
    /// Pids from `outrigger run --watch-pid`, watched in addition to `config.watch_pids`.
    pub extra_pids: Vec<u32>,
    pub metrics: Arc<Metrics>,
    pub sampler: Arc<Sampler>,
    /// The pipeline worker's flag: optional plugins are skipped while it is set.
    pub over_budget: Arc<AtomicBool>,
    pub history: Arc<ProfileHistory>,
}

/// A running profiler: accepts a new `profiling` section, and ends on the shutdown token.
pub struct ProfilerHandle {
    config: watch::Sender<ProfilingConfig>,
    extra: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProfilerHandle {
    /// Applies a reloaded `profiling` section (interval, watched pids, budgets, history) from
    /// the next tick on. The history keeps its samples.
    pub fn reconfigure(&self, config: ProfilingConfig) {
        self.config.send_replace(config);
    }

    /// Watches one more process from the next tick on, whatever the config says (`outrigger
    /// exec`'s child); a reload keeps it.
    pub fn watch_pid(&self, pid: u32) {
        {
            let mut extra = self.extra.lock();
            if !extra.contains(&pid) {
                extra.push(pid);
            }
        }
        self.config.send_modify(|_| {});
    }

    /// A handle that applies new settings later (for the reloader), apart from `join`.
    pub fn reconfigurer(&self) -> watch::Sender<ProfilingConfig> {
        self.config.clone()
    }

    /// Waits for the task to end (after the shutdown token is cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

impl Profiler {
    /// Starts the sampling task.
    pub fn spawn(self, stop: CancellationToken) -> ProfilerHandle {
        let (tx, rx) = watch::channel(self.config.clone());
        let extra = Arc::new(Mutex::new(self.extra_pids.clone()));
        let task = tokio::spawn(self.run(rx, extra.clone(), stop));
        ProfilerHandle {
            config: tx,
            extra,
            task,
        }
    }

    async fn run(
        self,
        mut config: watch::Receiver<ProfilingConfig>,
        extra: Arc<Mutex<Vec<u32>>>,
        stop: CancellationToken,
    ) {
        let own = match sysinfo::get_current_pid() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = e, "profiler unavailable on this platform");
                return;
            }
        };
        let mut sys = System::new();
        let mut cfg = config.borrow_and_update().clone();
        let mut watching = self.watch_list(&cfg, &extra.lock());
        let mut gone: Vec<u32> = Vec::new();
        self.apply_config(&cfg, &watching);
        let mut tick = tokio::time::interval(cfg.interval.0.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = config.changed() => {
                    if changed.is_err() {
                        // The handle is gone; keep the last config until shutdown.
                        stop.cancelled().await;
                        break;
                    }
                    let next = config.borrow_and_update().clone();
                    if next.interval.0 != cfg.interval.0 {
                        tick = tokio::time::interval(next.interval.0.max(Duration::from_millis(10)));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    let next_watching = self.watch_list(&next, &extra.lock());
                    for pid in watching.iter().filter(|p| !next_watching.contains(p)) {
                        self.forget(*pid);
                    }
                    if !next.enabled && cfg.enabled {
                        self.restore();
                    }
                    cfg = next;
                    watching = next_watching;
                    self.apply_config(&cfg, &watching);
                    tracing::info!(enabled = cfg.enabled, watched = watching.len(), "profiling settings changed");
                }
                _ = tick.tick() => {
                    if cfg.enabled {
                        self.tick(&mut sys, own, &watching, &mut gone, &cfg.budgets);
                    }
                }
            }
        }
        tracing::debug!("profiler stopped");
    }

    /// Config pids then command-line (and `exec`) pids, without duplicates.
    fn watch_list(&self, cfg: &ProfilingConfig, extra: &[u32]) -> Vec<u32> {
        let mut v: Vec<u32> = Vec::new();
        for p in cfg.watch_pids.iter().chain(extra) {
            if !v.contains(p) {
                v.push(*p);
            }
        }
        v
    }

    fn apply_config(&self, cfg: &ProfilingConfig, watching: &[u32]) {
        let mut r = self.history.ring.lock();
        r.capacity = cfg.history.max(1);
        while r.samples.len() > r.capacity {
            r.samples.pop_front();
        }
        r.config = cfg.clone();
        r.watching = watching.to_vec();
    }

    /// Removes a pid's series (it is no longer watched, or it is gone).
    fn forget(&self, pid: u32) {
        let label = pid.to_string();
        let _ = self
            .metrics
            .watched_cpu_percent
            .remove_label_values(&[&label]);
        let _ = self
            .metrics
            .watched_memory_bytes
            .remove_label_values(&[&label]);
    }

    /// Lifts any degrade (profiling turned off).
    fn restore(&self) {
        self.sampler.set_degrade(1.0);
        self.over_budget.store(false, Ordering::Relaxed);
        let mut r = self.history.ring.lock();
        if r.budget.over.take().is_some() {
            tracing::info!("profiling disabled: budget degrade lifted");
        }
        r.budget.degrade_factor = 1.0;
    }

    fn tick(
        &self,
        sys: &mut System,
        own: Pid,
        watching: &[u32],
        gone: &mut Vec<u32>,
        budgets: &Budgets,
    ) {
        let mut pids: Vec<Pid> = Vec::with_capacity(1 + watching.len());
        pids.push(own);
        // Our own pid, if watched too, is read once (a second refresh would spoil its CPU).
        pids.extend(
            watching
                .iter()
                .map(|p| Pid::from_u32(*p))
                .filter(|p| *p != own),
        );
        // Tasks only for our own thread count; a watched process's threads are not reported.
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids[..1]),
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .with_tasks(),
        );
        if pids.len() > 1 {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&pids[1..]),
                true,
                ProcessRefreshKind::nothing()
                    .with_cpu()
                    .with_memory()
                    .without_tasks(),
            );
        }
        let read = |pid: Pid| {
            sys.process(pid).map(|p| ProcSample {
                pid: pid.as_u32(),
                cpu_percent: p.cpu_usage() as f64,
                memory_bytes: p.memory(),
                threads: p.tasks().map(|t| t.len() as u64),
            })
        };
        let Some(me) = read(own) else {
            tracing::warn!("profiler cannot read its own process");
            return;
        };
        let m = &self.metrics;
        m.process_cpu_percent.set(me.cpu_percent);
        m.process_memory_bytes.set(me.memory_bytes as i64);
        if let Some(t) = me.threads {
            m.process_threads.set(t as i64);
        }
        let mut watched = Vec::with_capacity(watching.len());
        for pid in watching {
            match read(Pid::from_u32(*pid)) {
                Some(s) => {
                    let label = pid.to_string();
                    m.watched_cpu_percent
                        .with_label_values(&[&label])
                        .set(s.cpu_percent);
                    m.watched_memory_bytes
                        .with_label_values(&[&label])
                        .set(s.memory_bytes as i64);
                    watched.push(s);
                    if let Some(i) = gone.iter().position(|g| g == pid) {
                        gone.swap_remove(i);
                        tracing::info!(pid, "watched process is back");
                    }
                }
                None if !gone.contains(pid) => {
                    gone.push(*pid);
                    self.forget(*pid);
                    tracing::warn!(pid, "watched process not found (exited, or no such pid)");
                }
                None => {}
            }
        }
        self.history.push(ProfileSample {
            at: Instant::now(),
            own: me,
            watched,
        });
        self.judge(budgets);
    }

    /// Applies the budget verdict over the last [`BUDGET_SAMPLES`] samples.
    fn judge(&self, budgets: &Budgets) {
        let Some((cpu, mem)) = self.history.recent_average(BUDGET_SAMPLES) else {
            return;
        };
        let was_over = self.over_budget.load(Ordering::Relaxed);
        let verdict = assess(cpu, mem, budgets, was_over);
        let factor = verdict.as_ref().map_or(1.0, |(_, f)| *f);
        let mut r = self.history.ring.lock();
        let prev_factor = r.budget.degrade_factor;
        r.budget.avg_cpu_percent = cpu;
        r.budget.avg_memory_mb = mem;
        r.budget.degrade_factor = factor;
        match verdict {
            Some((reason, factor)) => {
                if !was_over {
                    tracing::warn!(
                        cpu_percent = format_args!("{cpu:.1}"),
                        memory_mb = format_args!("{mem:.1}"),
                        degrade = format_args!("{factor:.2}"),
                        %reason,
                        "over resource budget: sampling scaled down, optional plugins skipped"
                    );
                } else if (factor - prev_factor).abs() > 0.05 {
                    tracing::debug!(degrade = factor, %reason, "still over budget");
                }
                r.budget.over = Some(reason);
                self.sampler.set_degrade(factor);
                self.over_budget.store(true, Ordering::Relaxed);
            }
            None => {
                if was_over {
                    tracing::info!(
                        cpu_percent = format_args!("{cpu:.1}"),
                        memory_mb = format_args!("{mem:.1}"),
                        "back within resource budget: sampling and optional plugins restored"
                    );
                }
                r.budget.over = None;
                self.sampler.set_degrade(1.0);
                self.over_budget.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn budgets(cpu: f64, mem: f64) -> Budgets {
        Budgets {
            cpu_percent: cpu,
            memory_mb: mem,
        }
    }

    #[test]
    fn assess_over_under_and_hysteresis() {
        let b = budgets(10.0, 100.0);
        assert_eq!(assess(5.0, 50.0, &b, false), None);
        let (reason, f) = assess(40.0, 50.0, &b, false).unwrap();
        assert!(reason.contains("CPU 40.0%"), "{reason}");
        assert_eq!(f, 0.25, "proportional: 10 / 40");
        let (reason, f) = assess(5.0, 1000.0, &b, false).unwrap();
        assert!(reason.contains("memory"), "{reason}");
        assert_eq!(f, DEGRADE_MIN, "clamped");
        let (_, f) = assess(10.5, 50.0, &b, false).unwrap();
        assert_eq!(f, DEGRADE_MAX, "barely over still halves");
        // Between 90% and 100% of the budget: stays over once over, not over otherwise.
        assert!(assess(9.5, 50.0, &b, true).is_some());
        assert!(assess(9.5, 50.0, &b, false).is_none());
        assert!(assess(8.0, 50.0, &b, true).is_none());
        // 0 = no budget.
        assert!(assess(1e6, 1e6, &budgets(0.0, 0.0), false).is_none());
    }

    fn sample(at: Instant, cpu: f64, mem: u64, watched: &[(u32, f64, u64)]) -> ProfileSample {
        ProfileSample {
            at,
            own: ProcSample {
                pid: 1,
                cpu_percent: cpu,
                memory_bytes: mem,
                threads: Some(4),
            },
            watched: watched
                .iter()
                .map(|(pid, c, m)| ProcSample {
                    pid: *pid,
                    cpu_percent: *c,
                    memory_bytes: *m,
                    threads: None,
                })
                .collect(),
        }
    }

    #[test]
    fn history_is_bounded_and_summarises_a_window() {
        let cfg = ProfilingConfig {
            history: 3,
            interval: Dur(Duration::from_secs(1)),
            ..ProfilingConfig::default()
        };
        let h = ProfileHistory::new(&cfg);
        h.ring.lock().watching = vec![42, 43];
        let t0 = Instant::now() - Duration::from_secs(100);
        h.push(sample(t0, 99.0, 1, &[]));
        h.push(sample(
            t0 + Duration::from_secs(90),
            10.0,
            1000,
            &[(42, 50.0, 10)],
        ));
        h.push(sample(
            t0 + Duration::from_secs(95),
            20.0,
            1500,
            &[(42, 70.0, 30)],
        ));
        h.push(sample(t0 + Duration::from_secs(99), 30.0, 3000, &[]));
        assert_eq!(h.ring.lock().samples.len(), 3, "oldest evicted");

        let s = h.summary(Duration::from_secs(60));
        assert_eq!(s.samples, 3);
        assert_eq!(s.own.cpu_percent.avg, 20.0);
        assert_eq!(s.own.cpu_percent.max, 30.0);
        assert_eq!(s.own.cpu_percent.last, 30.0);
        assert_eq!(s.own.memory_bytes.growth, 2000);
        assert_eq!(s.own.memory_bytes.max, 3000);
        assert_eq!(s.own.threads, Some(4));
        let w = &s.watched[&42];
        assert_eq!(w.samples, 2);
        assert_eq!(w.cpu_percent.avg, 60.0);
        assert_eq!(w.memory_bytes.growth, 20);
        assert_eq!(w.alive, Some(false), "absent at the latest tick");
        assert_eq!(s.watched[&43].samples, 0);

        // A short window sees only the latest sample.
        let s = h.summary(Duration::from_millis(1500));
        assert_eq!(s.samples, 1);
        assert_eq!(s.own.cpu_percent.avg, 30.0);
        assert_eq!(h.recent_average(3).map(|(c, _)| c), Some(20.0));
        assert_eq!(h.recent_average(4), None);
    }

    #[tokio::test]
    async fn budget_degrades_then_recovers() {
        let metrics = Arc::new(Metrics::new());
        let sampler = Arc::new(Sampler::new(Default::default(), metrics.clone()));
        let cfg = ProfilingConfig::default();
        let history = Arc::new(ProfileHistory::new(&cfg));
        let p = Profiler {
            config: cfg,
            extra_pids: vec![],
            metrics,
            sampler,
            over_budget: Arc::new(AtomicBool::new(false)),
            history: history.clone(),
        };
        let b = budgets(10.0, 0.0);
        let now = Instant::now();
        // One spike among quiet samples does not degrade.
        for cpu in [1.0, 1.0, 40.0, 1.0, 1.0] {
            history.push(sample(now, cpu, 0, &[]));
            p.judge(&b);
        }
        assert!(!p.over_budget.load(Ordering::Relaxed));
        for _ in 0..BUDGET_SAMPLES {
            history.push(sample(now, 50.0, 0, &[]));
            p.judge(&b);
        }
        assert!(p.over_budget.load(Ordering::Relaxed));
        let st = history.budget();
        assert!(st.over.as_deref().is_some_and(|r| r.contains("CPU")));
        assert_eq!(st.degrade_factor, 0.2);
        for _ in 0..BUDGET_SAMPLES {
            history.push(sample(now, 2.0, 0, &[]));
            p.judge(&b);
        }
        assert!(!p.over_budget.load(Ordering::Relaxed));
        assert_eq!(history.budget().over, None);
        assert_eq!(history.budget().degrade_factor, 1.0);
    }

    #[tokio::test]
    async fn reads_its_own_process() {
        let metrics = Arc::new(Metrics::new());
        let sampler = Arc::new(Sampler::new(Default::default(), metrics.clone()));
        let cfg = ProfilingConfig::default();
        let history = Arc::new(ProfileHistory::new(&cfg));
        let p = Profiler {
            config: cfg,
            extra_pids: vec![std::process::id()],
            metrics: metrics.clone(),
            sampler,
            over_budget: Arc::new(AtomicBool::new(false)),
            history: history.clone(),
        };
        let mut sys = System::new();
        let own = sysinfo::get_current_pid().unwrap();
        let watching = vec![std::process::id(), u32::MAX - 1];
        let mut gone = Vec::new();
        p.tick(&mut sys, own, &watching, &mut gone, &budgets(0.0, 0.0));
        let s = history.latest().unwrap();
        assert!(s.own.memory_bytes > 0);
        assert!(s.own.threads.unwrap_or(0) >= 1);
        assert_eq!(s.watched.len(), 1, "the missing pid is skipped");
        assert_eq!(gone, vec![u32::MAX - 1]);
        assert!(metrics.process_memory_bytes.get() > 0);
    }
}
