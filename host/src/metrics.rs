//! The daemon's Prometheus metrics (every name in SPEC "Metrics", prefixed `outrigger_`).
//!
//! One [`Metrics`] is built at start and shared (`Arc`) by every stage; stages count whole
//! batches, never per event under a lock. `render` produces the text exposition for
//! `GET /metrics`. Nothing here runs on its own.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why an accepted event did not reach a sink (`events_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    QueueFull,
    SampledOut,
    Plugin,
    Invalid,
    Disabled,
    Sink,
    /// Routed to no sink (every sink's `types`/`when` refused it).
    Unrouted,
    /// A sink cannot represent the event (the Weave sink takes only calls).
    Unsupported,
    /// Events of a kept run that the tail sampler had spilled and could not read back.
    Spill,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::QueueFull,
        DropReason::SampledOut,
        DropReason::Plugin,
        DropReason::Invalid,
        DropReason::Disabled,
        DropReason::Sink,
        DropReason::Unrouted,
        DropReason::Unsupported,
        DropReason::Spill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::SampledOut => "sampled_out",
            DropReason::Plugin => "plugin",
            DropReason::Invalid => "invalid",
            DropReason::Disabled => "disabled",
            DropReason::Sink => "sink",
            DropReason::Unrouted => "unrouted",
            DropReason::Unsupported => "unsupported",
            DropReason::Spill => "spill",
        }
    }
}

/// Every metric the daemon exports.
pub struct Metrics {
    pub registry: Registry,
    pub events_received: IntCounterVec,
    events_dropped: [IntCounter; DropReason::ALL.len()],
    pub events_delivered: IntCounterVec,
    pub queue_depth: IntGauge,
    pub queue_capacity: IntGauge,
    pub process_cpu_percent: Gauge,
    pub process_memory_bytes: IntGauge,
    pub process_threads: IntGauge,
    pub watched_cpu_percent: GaugeVec,
    pub watched_memory_bytes: IntGaugeVec,
    pub processing_latency: Histogram,
    pub plugin_calls: IntCounterVec,
    pub plugin_errors: IntCounterVec,
    pub plugin_fuel_consumed: IntCounterVec,
    pub plugin_call_duration: HistogramVec,
    pub plugin_recycled: IntCounterVec,
    /// `plugin_shadow_diffs_total{plugin}`: events on which NAME's shadow answered otherwise.
    pub plugin_shadow_diffs: IntCounterVec,
    /// Batches that timed out and were run again in halves, by result: passed, failed.
    pub plugin_split_retries: IntCounterVec,
    pub plugin_quarantined: IntGaugeVec,
    pub plugin_counter: IntCounterVec,
    pub plugin_gauge: GaugeVec,
    /// `wasi:http` requests of plugins granted `http`, by result: ok, denied, error, timeout.
    pub plugin_http_requests: IntCounterVec,
    pub sampling_rate: GaugeVec,
    pub sampling_boost_active: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub sink_batches: IntCounterVec,
    pub spool_bytes: IntGaugeVec,
    /// `nats_publishes_total{sink, result}`: messages the `nats` sink published, by result:
    /// `acked` (stored by the stream), `duplicate` (the stream had it already: a resend after
    /// a lost acknowledgement), `unacked` (no acknowledgement; sent again later), `dropped`
    /// (larger than the server takes), `sent` (core NATS, no acknowledgement).
    pub nats_publishes: IntCounterVec,
    /// `condition_errors_total{where}`: conditions that errored on an event (counted false).
    /// `where` is the config key of the condition, so the label set is bounded by the config.
    pub condition_errors: IntCounterVec,
    /// Runs the tail sampler holds open, their bytes in memory and on disk.
    pub tail_open_runs: IntGauge,
    pub tail_buffered_bytes: IntGauge,
    pub tail_spilled_bytes: IntGauge,
    /// `tail_decisions_total{result, by}`: `by` is a policy name (bounded by the config),
    /// `rate`, `early`, `shutdown` or `forced`.
    pub tail_decisions: IntCounterVec,
    /// From a run's closing event to the run handed on to the plugins.
    pub tail_decision_latency: Histogram,
    /// Spill writes and reads that failed, by operation.
    pub tail_spill_errors: IntCounterVec,
    /// Events written to the tail's spill (each counted once per write).
    pub tail_spilled_events: IntCounter,
    /// Write-ahead log (`queue.durable`): events read back from it on start and queued again.
    pub wal_replayed: IntCounter,
    /// Records appended to the log.
    pub wal_appended: IntCounter,
    /// Bytes in the log's segment files, and how many segments.
    pub wal_bytes: IntGauge,
    pub wal_segments: IntGauge,
    /// One write and sync of a group of appends (`fsync: always` or `batch`).
    pub wal_fsync_seconds: Histogram,
    /// Records found damaged or cut short on start (and those after them in the same
    /// segment), set aside in a `*.corrupt` file; and their bytes.
    pub wal_corrupt_records: IntCounter,
    pub wal_corrupt_bytes: IntCounter,
    /// Records whose segment was deleted before every sink confirmed them, to make room
    /// (`on_full: drop_oldest` with the log at `max_bytes`): no longer crash-safe.
    pub wal_evicted: IntCounter,
    /// Log writes, syncs and trims that failed, by operation.
    pub wal_errors: IntCounterVec,
    /// `breakpoint_hits_total{action}`: `capture` or `pause`.
    pub breakpoint_hits: IntCounterVec,
    /// Debug sessions kept, their bytes, and the connections a `pause` holds now.
    pub debug_sessions: IntGauge,
    pub debug_session_bytes: IntGauge,
    pub debug_paused: IntGauge,
    /// `live_tail_dropped_total{transport}`: events a slow live-tail subscriber (`sse`, `ws`)
    /// was not given because its buffer was full.
    pub live_tail_dropped: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("outrigger")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let dropped = IntCounterVec::new(
            opts(
                "events_dropped_total",
                "Accepted events that reached no sink, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let events_dropped = DropReason::ALL.map(|r| dropped.with_label_values(&[r.as_str()]));
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0,
        ];
        let m = Metrics {
            events_received: IntCounterVec::new(
                opts("events_received_total", "Events accepted at ingest"),
                &["ingest"],
            )
            .expect("valid metric"),
            events_dropped,
            events_delivered: IntCounterVec::new(
                opts("events_delivered_total", "Events written by a sink"),
                &["sink"],
            )
            .expect("valid metric"),
            queue_depth: IntGauge::with_opts(opts("queue_depth", "Events waiting in the queue"))
                .expect("valid metric"),
            queue_capacity: IntGauge::with_opts(opts("queue_capacity", "Queue capacity in events"))
                .expect("valid metric"),
            process_cpu_percent: Gauge::with_opts(opts(
                "process_cpu_percent",
                "The daemon's own CPU use, percent of one core",
            ))
            .expect("valid metric"),
            process_memory_bytes: IntGauge::with_opts(opts(
                "process_memory_bytes",
                "The daemon's resident memory",
            ))
            .expect("valid metric"),
            process_threads: IntGauge::with_opts(opts("process_threads", "The daemon's threads"))
                .expect("valid metric"),
            watched_cpu_percent: GaugeVec::new(
                opts("watched_cpu_percent", "CPU use of a watched process"),
                &["pid"],
            )
            .expect("valid metric"),
            watched_memory_bytes: IntGaugeVec::new(
                opts(
                    "watched_memory_bytes",
                    "Resident memory of a watched process",
                ),
                &["pid"],
            )
            .expect("valid metric"),
            processing_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "processing_latency_seconds",
                    "Time from ingest to delivery by a sink",
                )
                .namespace("outrigger")
                .buckets(latency_buckets),
            )
            .expect("valid metric"),
            plugin_calls: IntCounterVec::new(
                opts("plugin_calls_total", "Batch calls into a plugin"),
                &["plugin"],
            )
            .expect("valid metric"),
            plugin_errors: IntCounterVec::new(
                opts("plugin_errors_total", "Failed plugin calls, by kind"),
                &["plugin", "kind"],
            )
            .expect("valid metric"),
            plugin_fuel_consumed: IntCounterVec::new(
                opts("plugin_fuel_consumed_total", "Fuel consumed by a plugin"),
                &["plugin"],
            )
            .expect("valid metric"),
            plugin_call_duration: HistogramVec::new(
                HistogramOpts::new(
                    "plugin_call_duration_seconds",
                    "Wall time of one batch call",
                )
                .namespace("outrigger")
                .buckets(vec![
                    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 1.0,
                ]),
                &["plugin"],
            )
            .expect("valid metric"),
            plugin_recycled: IntCounterVec::new(
                opts(
                    "plugin_recycled_total",
                    "Plugin instances replaced between batches because their memory grew",
                ),
                &["plugin"],
            )
            .expect("valid metric"),
            plugin_shadow_diffs: IntCounterVec::new(
                opts(
                    "plugin_shadow_diffs_total",
                    "Events on which a plugin's shadow answered differently from the plugin",
                ),
                &["plugin"],
            )
            .expect("valid metric"),
            plugin_split_retries: IntCounterVec::new(
                opts(
                    "plugin_split_retries_total",
                    "Plugin batches that timed out and were run again in halves, by result",
                ),
                &["plugin", "result"],
            )
            .expect("valid metric"),
            plugin_quarantined: IntGaugeVec::new(
                opts("plugin_quarantined", "1 while a plugin is quarantined"),
                &["plugin"],
            )
            .expect("valid metric"),
            plugin_counter: IntCounterVec::new(
                opts("plugin_counter_total", "A counter a plugin added to"),
                &["plugin", "name"],
            )
            .expect("valid metric"),
            plugin_gauge: GaugeVec::new(
                opts("plugin_gauge", "A gauge a plugin set"),
                &["plugin", "name"],
            )
            .expect("valid metric"),
            plugin_http_requests: IntCounterVec::new(
                opts(
                    "plugin_http_requests_total",
                    "HTTP requests plugins sent through wasi:http, by result (ok, denied, error, timeout)",
                ),
                &["plugin", "result"],
            )
            .expect("valid metric"),
            sampling_rate: GaugeVec::new(
                opts("sampling_rate", "Configured sampling rate per event type"),
                &["type"],
            )
            .expect("valid metric"),
            sampling_boost_active: IntGaugeVec::new(
                opts(
                    "sampling_boost_active",
                    "1 while adaptive boost is active for a type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            reloads: IntCounterVec::new(
                opts("reloads_total", "Config and plugin reloads"),
                &["target", "result"],
            )
            .expect("valid metric"),
            sink_batches: IntCounterVec::new(
                opts("sink_batches_total", "Batch deliveries by sink and result"),
                &["sink", "result"],
            )
            .expect("valid metric"),
            spool_bytes: IntGaugeVec::new(
                opts("spool_bytes", "Bytes waiting in a sink's spool"),
                &["sink"],
            )
            .expect("valid metric"),
            nats_publishes: IntCounterVec::new(
                opts(
                    "nats_publishes_total",
                    "Messages the nats sink published, by sink and result",
                ),
                &["sink", "result"],
            )
            .expect("valid metric"),
            condition_errors: IntCounterVec::new(
                opts(
                    "condition_errors_total",
                    "Condition evaluations that failed on an event (taken as false)",
                ),
                &["where"],
            )
            .expect("valid metric"),
            tail_open_runs: IntGauge::with_opts(opts(
                "tail_open_runs",
                "Runs the tail sampler holds until they close",
            ))
            .expect("valid metric"),
            tail_buffered_bytes: IntGauge::with_opts(opts(
                "tail_buffered_bytes",
                "Memory the open runs take (events and bookkeeping)",
            ))
            .expect("valid metric"),
            tail_spilled_bytes: IntGauge::with_opts(opts(
                "tail_spilled_bytes",
                "Bytes of open runs spilled to sampling.tail.spill.dir",
            ))
            .expect("valid metric"),
            tail_decisions: IntCounterVec::new(
                opts(
                    "tail_decisions_total",
                    "Runs the tail sampler decided, by result and reason",
                ),
                &["result", "by"],
            )
            .expect("valid metric"),
            tail_decision_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "tail_decision_latency_seconds",
                    "Time from a run's closing event to its release to the plugins",
                )
                .namespace("outrigger")
                .buckets(vec![
                    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 1.0,
                ]),
            )
            .expect("valid metric"),
            tail_spill_errors: IntCounterVec::new(
                opts(
                    "tail_spill_errors_total",
                    "Tail spill writes or reads that failed",
                ),
                &["op"],
            )
            .expect("valid metric"),
            tail_spilled_events: IntCounter::with_opts(opts(
                "tail_spilled_events_total",
                "Events of open runs written to the tail's spill",
            ))
            .expect("valid metric"),
            wal_replayed: IntCounter::with_opts(opts(
                "wal_replayed_total",
                "Events read back from the write-ahead log on start and delivered again",
            ))
            .expect("valid metric"),
            wal_appended: IntCounter::with_opts(opts(
                "wal_appended_total",
                "Events appended to the write-ahead log",
            ))
            .expect("valid metric"),
            wal_bytes: IntGauge::with_opts(opts(
                "wal_bytes",
                "Bytes in the write-ahead log's segment files",
            ))
            .expect("valid metric"),
            wal_segments: IntGauge::with_opts(opts(
                "wal_segments",
                "Segment files of the write-ahead log",
            ))
            .expect("valid metric"),
            wal_fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "wal_fsync_seconds",
                    "One write and sync of a group of write-ahead log appends",
                )
                .namespace("outrigger")
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ]),
            )
            .expect("valid metric"),
            wal_corrupt_records: IntCounter::with_opts(opts(
                "wal_corrupt_records_total",
                "Write-ahead log records found damaged or cut short on start, set aside",
            ))
            .expect("valid metric"),
            wal_corrupt_bytes: IntCounter::with_opts(opts(
                "wal_corrupt_bytes_total",
                "Bytes of damaged write-ahead log segments set aside on start",
            ))
            .expect("valid metric"),
            wal_evicted: IntCounter::with_opts(opts(
                "wal_evicted_total",
                "Write-ahead log records deleted before delivery to make room (drop_oldest)",
            ))
            .expect("valid metric"),
            wal_errors: IntCounterVec::new(
                opts(
                    "wal_errors_total",
                    "Write-ahead log writes, syncs or trims that failed",
                ),
                &["op"],
            )
            .expect("valid metric"),
            breakpoint_hits: IntCounterVec::new(
                opts(
                    "breakpoint_hits_total",
                    "Events that hit a breakpoint, by the breakpoint's action",
                ),
                &["action"],
            )
            .expect("valid metric"),
            debug_sessions: IntGauge::with_opts(opts(
                "debug_sessions",
                "Debug sessions kept (control.debug_sessions)",
            ))
            .expect("valid metric"),
            debug_session_bytes: IntGauge::with_opts(opts(
                "debug_session_bytes",
                "Bytes the kept debug sessions take (control.debug_bytes)",
            ))
            .expect("valid metric"),
            debug_paused: IntGauge::with_opts(opts(
                "debug_paused_connections",
                "Debug connections whose answer a pause breakpoint holds now",
            ))
            .expect("valid metric"),
            live_tail_dropped: IntCounterVec::new(
                opts(
                    "live_tail_dropped_total",
                    "Events a slow live-tail subscriber missed (its buffer was full), by transport",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            registry,
        };
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.events_received.clone()),
            Box::new(dropped),
            Box::new(m.events_delivered.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.queue_capacity.clone()),
            Box::new(m.process_cpu_percent.clone()),
            Box::new(m.process_memory_bytes.clone()),
            Box::new(m.process_threads.clone()),
            Box::new(m.watched_cpu_percent.clone()),
            Box::new(m.watched_memory_bytes.clone()),
            Box::new(m.processing_latency.clone()),
            Box::new(m.plugin_calls.clone()),
            Box::new(m.plugin_errors.clone()),
            Box::new(m.plugin_fuel_consumed.clone()),
            Box::new(m.plugin_call_duration.clone()),
            Box::new(m.plugin_recycled.clone()),
            Box::new(m.plugin_shadow_diffs.clone()),
            Box::new(m.plugin_split_retries.clone()),
            Box::new(m.plugin_quarantined.clone()),
            Box::new(m.plugin_counter.clone()),
            Box::new(m.plugin_gauge.clone()),
            Box::new(m.plugin_http_requests.clone()),
            Box::new(m.sampling_rate.clone()),
            Box::new(m.sampling_boost_active.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.sink_batches.clone()),
            Box::new(m.spool_bytes.clone()),
            Box::new(m.nats_publishes.clone()),
            Box::new(m.condition_errors.clone()),
            Box::new(m.tail_open_runs.clone()),
            Box::new(m.tail_buffered_bytes.clone()),
            Box::new(m.tail_spilled_bytes.clone()),
            Box::new(m.tail_decisions.clone()),
            Box::new(m.tail_decision_latency.clone()),
            Box::new(m.tail_spill_errors.clone()),
            Box::new(m.tail_spilled_events.clone()),
            Box::new(m.wal_replayed.clone()),
            Box::new(m.wal_appended.clone()),
            Box::new(m.wal_bytes.clone()),
            Box::new(m.wal_segments.clone()),
            Box::new(m.wal_fsync_seconds.clone()),
            Box::new(m.wal_corrupt_records.clone()),
            Box::new(m.wal_corrupt_bytes.clone()),
            Box::new(m.wal_evicted.clone()),
            Box::new(m.wal_errors.clone()),
            Box::new(m.breakpoint_hits.clone()),
            Box::new(m.debug_sessions.clone()),
            Box::new(m.debug_session_bytes.clone()),
            Box::new(m.debug_paused.clone()),
            Box::new(m.live_tail_dropped.clone()),
        ];
        for c in all {
            r.register(c).expect("metric names are unique");
        }
        m
    }

    /// Counts `n` events dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.events_dropped[reason as usize].inc_by(n);
        }
    }

    /// Total dropped for `reason` so far.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.events_dropped[reason as usize].get()
    }

    /// Counts one condition that errored at `site` (the condition's config key).
    pub fn condition_error(&self, site: &str) {
        self.condition_errors.with_label_values(&[site]).inc();
    }

    /// Condition errors counted at `site` so far.
    pub fn condition_errors_count(&self, site: &str) -> u64 {
        self.condition_errors.with_label_values(&[site]).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_name_is_exported() {
        let m = Metrics::new();
        m.events_received.with_label_values(&["socket"]).inc();
        m.dropped(DropReason::QueueFull, 3);
        m.processing_latency.observe(0.001);
        let text = m.render();
        assert!(text.contains("outrigger_events_received_total{ingest=\"socket\"} 1"));
        assert!(text.contains("outrigger_events_dropped_total{reason=\"queue_full\"} 3"));
        assert!(text.contains("outrigger_events_dropped_total{reason=\"sink\"} 0"));
        assert!(text.contains("outrigger_events_dropped_total{reason=\"unrouted\"} 0"));
        assert!(text.contains("outrigger_events_dropped_total{reason=\"unsupported\"} 0"));
        assert!(text.contains("outrigger_processing_latency_seconds_bucket"));
        assert!(text.contains("outrigger_queue_capacity"));
        assert_eq!(m.dropped_count(DropReason::QueueFull), 3);
    }
}
