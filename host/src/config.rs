//! `outrigger.yml`: the typed config, its defaults, environment overrides and validation.
//!
//! In: YAML text (or nothing, for the built-in defaults) and the process environment. Out: a
//! validated [`Config`], or a [`ConfigError`] naming the key path and, where it can be found,
//! the file line. Unknown keys are refused. Durations (`500ms`, `1s`, `2m`) and sizes
//! (`10MiB`, `64KB`) are parsed here. Pure functions; no I/O but reading the file and checking
//! that the directories granted to plugins exist.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::condition::{CONDITION_ERROR_PREFIX, Condition};

/// A config that could not be used, with the key and line that explain why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// Dotted key path, e.g. `sampling.rates.test_events`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".into());
        match (self.path.is_empty(), self.line) {
            (false, Some(l)) => write!(f, "{file}:{l}: `{}`: {}", self.path, self.message),
            (false, None) => write!(f, "{file}: `{}`: {}", self.path, self.message),
            (true, Some(l)) => write!(f, "{file}:{l}: {}", self.message),
            (true, None) => write!(f, "{file}: {}", self.message),
        }
    }
}

/// A duration written as `500ms`, `1s`, `2m`, `1h` (a bare number is seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

impl From<Dur> for String {
    /// In milliseconds when whole, else in the largest unit that keeps it exact (reload compares
    /// configs by their serialized form, so `500us` must not become `0ms`).
    fn from(d: Dur) -> String {
        let ns = d.0.as_nanos();
        if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            format!("{}us", ns / 1_000)
        } else {
            format!("{ns}ns")
        }
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (like 500ms, 1s, 2m)"))?;
        let secs = match unit.trim() {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            u => {
                return Err(format!(
                    "unknown duration unit `{u}` in `{s}` (use ms, s, m or h)"
                ));
            }
        };
        Duration::try_from_secs_f64(secs)
            .map(Dur)
            .map_err(|_| format!("`{s}` is too long a duration"))
    }
}

/// A size written as `10MiB`, `64KB`, `1GiB` (a bare number is bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (like 64KiB, 10MiB)"))?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" | "K" | "k" => 1024.0,
            "MiB" | "M" => 1024.0 * 1024.0,
            "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
            u => {
                return Err(format!(
                    "unknown size unit `{u}` in `{s}` (use B, KiB, MiB, GiB)"
                ));
            }
        };
        Ok(Size((n * mult) as u64))
    }
}

macro_rules! string_or_number {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    S(String),
                    N(f64),
                }
                match Raw::deserialize(d)? {
                    Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
                    Raw::N(n) => n.to_string().parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
string_or_number!(Dur);
string_or_number!(Size);

/// The ingest socket's file mode, written in octal: `"0660"`, `0660`, `660` or `0o660`.
///
/// YAML parsers disagree on an unquoted `0660` (a string, the integer 660, or octal 432), so an
/// integer is read as the mode its digits spell (`660`) or else as the mode's value (`0o660` =
/// 432): the two never both give a mode that keeps the owner's read and write. Bits outside
/// `0777` are refused, and so is a mode without the owner's read and write (the daemon's
/// own clients, `outrigger send` and `bench`, would be locked out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct SocketMode(pub u32);

impl SocketMode {
    fn checked(mode: u32, written: &str) -> Result<SocketMode, String> {
        if mode & !0o777 != 0 {
            return Err(format!(
                "`{written}` has bits outside 0777 (setuid, setgid and sticky bits mean nothing on a socket)"
            ));
        }
        if mode & 0o600 != 0o600 {
            return Err(format!(
                "`{written}` ({mode:04o}) takes read and write from the socket's owner; keep at least 0600"
            ));
        }
        Ok(SocketMode(mode))
    }

    /// An integer from YAML: the mode its decimal digits spell, else its own value.
    fn from_int(n: u64) -> Result<SocketMode, String> {
        let digits = n.to_string();
        let spelled = u32::from_str_radix(&digits, 8)
            .ok()
            .and_then(|m| SocketMode::checked(m, &digits).ok());
        let valued = u32::try_from(n)
            .ok()
            .and_then(|m| SocketMode::checked(m, &digits).ok());
        spelled.or(valued).ok_or_else(|| {
            format!("`{n}` is not a socket mode that keeps the owner's read and write: write it in octal and quoted, like \"0660\"")
        })
    }
}

impl Default for SocketMode {
    fn default() -> Self {
        SocketMode(0o600)
    }
}

impl From<SocketMode> for String {
    fn from(m: SocketMode) -> String {
        format!("{:04o}", m.0)
    }
}

impl FromStr for SocketMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SocketMode, String> {
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("`{s}` is not an octal file mode (like \"0660\")"));
        }
        let mode =
            u32::from_str_radix(digits, 8).map_err(|_| format!("`{s}` has bits outside 0777"))?;
        SocketMode::checked(mode, t)
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SocketMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal file mode like \"0660\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketMode, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SocketMode, E> {
                SocketMode::from_int(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SocketMode, E> {
                let n =
                    u64::try_from(v).map_err(|_| E::custom(format!("`{v}` is not a file mode")))?;
                self.visit_u64(n)
            }
        }
        d.deserialize_any(V)
    }
}

/// The group the ingest socket is given: a name (looked up when the socket is bound) or a gid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SocketGroup {
    Name(String),
    Gid(u32),
}

impl fmt::Display for SocketGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketGroup::Name(n) => f.write_str(n),
            SocketGroup::Gid(g) => write!(f, "gid {g}"),
        }
    }
}

impl<'de> Deserialize<'de> for SocketGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SocketGroup;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group name or a numeric gid")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketGroup, E> {
                let v = v.trim();
                if v.is_empty() {
                    return Err(E::custom("a group name must not be empty"));
                }
                if v.bytes().all(|b| b.is_ascii_digit()) {
                    return v
                        .parse()
                        .map(SocketGroup::Gid)
                        .map_err(|_| E::custom(format!("`{v}` is not a gid")));
                }
                Ok(SocketGroup::Name(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SocketGroup, E> {
                u32::try_from(v)
                    .map(SocketGroup::Gid)
                    .map_err(|_| E::custom(format!("`{v}` is not a gid")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SocketGroup, E> {
                u32::try_from(v)
                    .map(SocketGroup::Gid)
                    .map_err(|_| E::custom(format!("`{v}` is not a gid")))
            }
        }
        d.deserialize_any(V)
    }
}

/// The whole daemon config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kill switch: false accepts events and drops them (counted as `disabled`).
    pub enabled: bool,
    pub ingest: IngestConfig,
    pub queue: QueueConfig,
    pub sampling: SamplingConfig,
    pub plugins: PluginsConfig,
    pub batch: BatchConfig,
    pub sinks: Vec<SinkConfig>,
    pub delivery: DeliveryConfig,
    pub profiling: ProfilingConfig,
    pub control: ControlConfig,
    pub health: HealthConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            ingest: IngestConfig::default(),
            queue: QueueConfig::default(),
            sampling: SamplingConfig::default(),
            plugins: PluginsConfig::default(),
            batch: BatchConfig::default(),
            sinks: vec![SinkConfig::File(FileSinkConfig::default())],
            delivery: DeliveryConfig::default(),
            profiling: ProfilingConfig::default(),
            control: ControlConfig::default(),
            health: HealthConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// `ingest`: the unix socket, HTTP ingest, their limits and access.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Unix socket for NDJSON ingest (mode `socket_mode`, group `socket_group`).
    pub socket: PathBuf,
    /// Who may connect to the socket: `0600` (the daemon's user only) unless widened.
    pub socket_mode: SocketMode,
    /// The socket's group (name or gid), for `socket_mode: "0660"`; `null` keeps the daemon's.
    pub socket_group: Option<SocketGroup>,
    /// `POST /v1/events` listener; `null` disables it.
    pub http: Option<SocketAddr>,
    pub max_line_bytes: Size,
    /// When set, `POST /v1/events` needs `Authorization: Bearer KEY` (env
    /// `OUTRIGGER_INGEST_KEY`); without it `http` must be a loopback address.
    pub api_key: Option<String>,
    /// OTLP receivers (SPEC "OpenTelemetry"); `null` (the default) runs none.
    pub otlp: Option<OtlpIngestConfig>,
}

/// `ingest.otlp`: where OpenTelemetry SDKs export to. `otlp: {}` listens on the standard ports.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpIngestConfig {
    /// OTLP/HTTP (`POST /v1/logs`, `/v1/traces`); `null` disables it.
    pub http: Option<SocketAddr>,
    /// OTLP/gRPC (the logs and trace services); `null` disables it.
    pub grpc: Option<SocketAddr>,
    /// The largest request body, compressed or not (413, or gRPC `RESOURCE_EXHAUSTED`).
    pub max_request_bytes: Size,
}

impl Default for OtlpIngestConfig {
    fn default() -> Self {
        OtlpIngestConfig {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 4318))),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 4317))),
            max_request_bytes: Size(16 << 20),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            socket: PathBuf::from("/tmp/outrigger.sock"),
            socket_mode: SocketMode::default(),
            socket_group: None,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 4390))),
            max_line_bytes: Size(1 << 20),
            api_key: None,
            otlp: None,
        }
    }
}

/// `queue.on_full`: what a full queue does with a new event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    DropOldest,
    DropNewest,
}

/// `queue`: capacity and overflow policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub capacity: usize,
    pub on_full: OnFull,
    /// The write-ahead log (SPEC "Durable queue"); `null` keeps the queue in memory only.
    pub durable: Option<DurableConfig>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 10_000,
            on_full: OnFull::DropOldest,
            durable: None,
        }
    }
}

/// `queue.durable.fsync`: when an appended event reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// A sync before each answer (answers that wait together share one).
    Always,
    /// A sync every `commit_interval` covers every answer waiting for it (group commit).
    Batch,
    /// Written before the answer, synced when the OS decides: survives a crash of the
    /// daemon, not of the machine.
    Never,
}

/// `queue.durable`: the segmented write-ahead log.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DurableConfig {
    pub dir: PathBuf,
    /// Bytes of log kept at most; past it `queue.on_full` applies to new events.
    pub max_bytes: Size,
    pub fsync: Fsync,
    /// A segment file is closed and a new one begun past this size (whole segments are
    /// trimmed). Default: `max_bytes / 16`, between 1 MiB and 64 MiB.
    pub segment_bytes: Option<Size>,
    /// The longest an answer waits for the group commit with `fsync: batch`.
    pub commit_interval: Dur,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            dir: PathBuf::from("./outrigger-data/wal"),
            max_bytes: Size(1 << 30),
            fsync: Fsync::Batch,
            segment_bytes: None,
            commit_interval: Dur(Duration::from_millis(2)),
        }
    }
}

impl DurableConfig {
    /// The segment size in force.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
            .map(|s| s.0)
            .unwrap_or_else(|| (self.max_bytes.0 / 16).clamp(1 << 20, 64 << 20))
            .max(4096)
    }
}

/// `sampling.key`: what a sampling decision hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKey {
    /// A run is kept or dropped whole (hash of `run_id`).
    RunId,
    /// Each event on its own.
    Random,
}

/// `sampling`: default rate, per-type rates, key and adaptive boosts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub default_rate: f64,
    pub rates: BTreeMap<String, f64>,
    pub key: SampleKey,
    pub adaptive: AdaptiveConfig,
    /// Run-level tail sampling (SPEC "Run-level tail sampling").
    pub tail: TailConfig,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            default_rate: 1.0,
            rates: BTreeMap::new(),
            key: SampleKey::RunId,
            adaptive: AdaptiveConfig::default(),
            tail: TailConfig::default(),
        }
    }
}

/// `sampling.tail`: hold each run until it closes, then keep or drop it whole.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    pub enabled: bool,
    /// The event that closes its run.
    pub end_when: Condition,
    /// A run with no event for this long is decided.
    pub idle: Dur,
    /// A run open longer than this is decided.
    pub max_duration: Dur,
    /// Keep policies, in order: the first that matched any event of a run keeps it.
    pub keep: Vec<TailPolicy>,
    /// Runs no policy keeps are kept whole at this rate (by a hash of the run id).
    pub else_rate: f64,
    /// Every open run together, in memory.
    pub max_bytes: Size,
    /// One run (in memory and spilled); a run over it is decided early.
    pub max_run_bytes: Size,
    /// Where the largest open runs go past `max_bytes`; `null` decides early instead.
    pub spill: Option<SpillConfig>,
    /// Decisions remembered for events that arrive after their run was decided.
    pub decisions: usize,
}

/// One `sampling.tail.keep` policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TailPolicy {
    /// Why a run was kept (`outrigger.kept_by`).
    pub name: String,
    pub when: Condition,
}

/// `sampling.tail.spill`: segment files for open runs that do not fit in memory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpillConfig {
    pub dir: PathBuf,
    pub max_bytes: Size,
}

impl Default for SpillConfig {
    fn default() -> Self {
        SpillConfig {
            dir: PathBuf::from("./outrigger-data/tail"),
            max_bytes: Size(1 << 30),
        }
    }
}

/// The default `end_when`: the run, test and session ends the clients send, and a root span
/// (an OTLP span without a parent), which ends its trace.
pub const DEFAULT_END_WHEN: &str = r#"type in ["run_end", "test_end", "test_session_end"] || (type == "otel.span" && !has(data.parent_span_id))"#;
/// The default keep policy's condition: a failed or erroring event (the clients' `status`,
/// OTLP error spans). `has` first, so that events without a `status` are simply not matched
/// rather than counted as condition errors.
pub const DEFAULT_KEEP_FAILED: &str = r#"has(data.status) && data.status in ["failed", "error"]"#;

impl Default for TailConfig {
    fn default() -> Self {
        let compile = |s: &str| Condition::compile(s).expect("the default conditions compile");
        TailConfig {
            enabled: false,
            end_when: compile(DEFAULT_END_WHEN),
            idle: Dur(Duration::from_secs(30)),
            max_duration: Dur(Duration::from_secs(600)),
            keep: vec![TailPolicy {
                name: "failed".into(),
                when: compile(DEFAULT_KEEP_FAILED),
            }],
            else_rate: 0.05,
            max_bytes: Size(64 << 20),
            max_run_bytes: Size(4 << 20),
            spill: Some(SpillConfig::default()),
            decisions: 100_000,
        }
    }
}

/// `sampling.adaptive`: which anomalies boost sampling, by how much, for how long.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    pub enabled: bool,
    /// The sampled rate is multiplied by this (capped at 1.0) while a boost is active.
    pub boost_factor: f64,
    pub boost_duration: Dur,
    /// Event types that count as anomalies on arrival: each one boosts every type.
    pub on: Vec<String>,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: true,
            boost_factor: 5.0,
            boost_duration: Dur(Duration::from_secs(60)),
            on: Vec::new(),
        }
    }
}

/// `plugins.*.on_error`: what a failed plugin call does with its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The failed batch continues unchanged.
    Pass,
    /// The failed batch is dropped (counted as `plugin`).
    Drop,
}

/// `plugins`: the directory, the chain order, defaults and per-plugin settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Every `*.wasm` here is loaded; `NAME.yml` beside it is its config.
    pub dir: PathBuf,
    /// Where precompiled components are cached (keyed by content hash and engine config).
    /// `null` puts it under the OS cache dir; `false`-like empty path disables it.
    pub cache_dir: Option<PathBuf>,
    pub defaults: PluginDefaults,
    /// Optional order and per-plugin overrides; plugins not named follow in name order.
    pub chain: Vec<ChainEntry>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("./plugins"),
            cache_dir: None,
            defaults: PluginDefaults::default(),
            chain: Vec::new(),
        }
    }
}

/// `plugins.defaults`: fuel, memory and time limits every plugin gets unless it sets its own.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginDefaults {
    pub fuel_per_event: u64,
    pub memory_mb: u64,
    /// Wall-clock bound of one call, whatever its length: the floor of the scaled bound.
    pub timeout: Dur,
    /// Wall-clock allowance per event a call is given: a call over N events may run for
    /// `max(timeout, timeout_per_event × N)`. 0 turns the per-event part off.
    pub timeout_per_event: Dur,
    pub on_error: OnError,
    /// Failures in a row before a plugin is quarantined.
    pub quarantine_after: u32,
    /// First quarantine period; doubles on each new quarantine, up to `quarantine_max`.
    pub quarantine_initial: Dur,
    pub quarantine_max: Dur,
}

impl Default for PluginDefaults {
    fn default() -> Self {
        PluginDefaults {
            fuel_per_event: 1_000_000,
            memory_mb: 64,
            timeout: Dur(Duration::from_millis(100)),
            timeout_per_event: Dur(Duration::from_millis(1)),
            on_error: OnError::Pass,
            quarantine_after: 3,
            quarantine_initial: Dur(Duration::from_secs(1)),
            quarantine_max: Dur(Duration::from_secs(300)),
        }
    }
}

/// One `plugins.chain` entry: order and overrides for the plugin named `name`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntry {
    pub name: String,
    /// Only events of these types go to the plugin; others pass by it.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Replaces `NAME.yml` as the plugin's config (passed to `init` as JSON).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Skipped while the profiler reports the daemon over budget.
    #[serde(default)]
    pub optional: Option<bool>,
    #[serde(default)]
    pub fuel_per_event: Option<u64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub timeout_per_event: Option<Dur>,
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// What the plugin may reach beyond its sandbox: none of it without a grant.
    #[serde(default)]
    pub grants: Grants,
}

/// `plugins.chain[].grants`: the network, environment and files one plugin may use. Without
/// grants a plugin has none of them (no sockets of any kind, no variables, no preopens).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Authorities (`host:port`) the plugin may send `wasi:http` requests to; a request to any
    /// other is refused with `HTTP-request-denied`. A non-empty list links `wasi:http`.
    pub http: Vec<String>,
    /// Environment variables the plugin sees, with the daemon's values (absent when unset).
    pub env: Vec<String>,
    /// Host directories preopened for the plugin.
    pub dirs: Vec<DirGrant>,
}

impl Grants {
    /// True when nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.env.is_empty() && self.dirs.is_empty()
    }
}

/// `plugins.chain[].grants.dirs[]`: a host directory preopened at `guest` in the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host (relative paths are from the daemon's working directory).
    pub host: PathBuf,
    /// Where the plugin sees it: an absolute path such as `/data`.
    pub guest: String,
    /// `true` (the default): files can be read, nothing can be written, created or removed.
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

/// A granted HTTP authority: lower-case host (IPv6 in brackets) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for Authority {
    type Err = String;

    /// `host:port` exactly: a DNS name, an IPv4 address or a bracketed IPv6 address, and a port
    /// from 1 to 65535. No scheme, user, path or wildcard.
    fn from_str(s: &str) -> Result<Authority, String> {
        let bad =
            |why: &str| format!("`{s}` is not host:port ({why}; e.g. `hooks.example.com:443`)");
        if s.contains("://") {
            return Err(bad("no scheme"));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("the port is missing"))?;
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        };
        let host = host.to_ascii_lowercase();
        let ok = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            let labels_ok = host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            !host.is_empty() && host.len() <= 253 && labels_ok
        };
        if !ok {
            return Err(bad(
                "the host must be a DNS name, an IPv4 address or an IPv6 address in brackets",
            ));
        }
        Ok(Authority { host, port })
    }
}

/// `batch`: when the batcher cuts (events, bytes, interval).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_bytes: Size,
    pub interval: Dur,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 2000,
            max_bytes: Size(10 << 20),
            interval: Dur(Duration::from_secs(1)),
        }
    }
}

/// One sink, tagged by `type`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    Http(HttpSinkConfig),
    Weave(WeaveSinkConfig),
    Nats(NatsSinkConfig),
    Otlp(OtlpSinkConfig),
}

/// Which events a sink takes (`sinks[].types` and `sinks[].when`, SPEC "Ingest
/// authentication and per-sink routing"). Empty `types` and no `when` take every event.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SinkRoute {
    /// Only events of these types; every type when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Only events for which this condition is true (compiled when the config is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// The key `when` was read from (`sinks[N].when`): the `where` of its errors.
    #[serde(skip)]
    pub site: String,
}

impl SinkRoute {
    /// True when the sink takes every event (nothing to evaluate).
    pub fn is_all(&self) -> bool {
        self.types.is_empty() && self.when.is_none()
    }

    /// Whether `e` goes to the sink. A `when` that errors on `e` refuses it and counts in
    /// `outrigger_condition_errors_total{where="sinks[N].when"}`.
    pub fn admits(&self, e: &crate::event::Event, m: &crate::metrics::Metrics) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| **t == *e.kind) {
            return false;
        }
        match &self.when {
            None => true,
            Some(c) if self.site.is_empty() => c.matches(e, m, "sinks[].when"),
            Some(c) => c.matches(e, m, &self.site),
        }
    }
}

impl SinkConfig {
    /// The sink's routing (`types`, `when`).
    pub fn route(&self) -> &SinkRoute {
        match self {
            SinkConfig::File(c) => &c.route,
            SinkConfig::Stdout(c) => &c.route,
            SinkConfig::Http(c) => &c.route,
            SinkConfig::Weave(c) => &c.route,
            SinkConfig::Nats(c) => &c.route,
            SinkConfig::Otlp(c) => &c.route,
        }
    }

    fn route_mut(&mut self) -> &mut SinkRoute {
        match self {
            SinkConfig::File(c) => &mut c.route,
            SinkConfig::Stdout(c) => &mut c.route,
            SinkConfig::Http(c) => &mut c.route,
            SinkConfig::Weave(c) => &mut c.route,
            SinkConfig::Nats(c) => &mut c.route,
            SinkConfig::Otlp(c) => &mut c.route,
        }
    }
}

impl SinkConfig {
    /// The sink's label in metrics and logs: its `name`, else its type and position.
    pub fn label(&self, index: usize) -> String {
        let (kind, name) = match self {
            SinkConfig::File(c) => ("file", &c.name),
            SinkConfig::Stdout(c) => ("stdout", &c.name),
            SinkConfig::Http(c) => ("http", &c.name),
            SinkConfig::Weave(c) => ("weave", &c.name),
            SinkConfig::Nats(c) => ("nats", &c.name),
            SinkConfig::Otlp(c) => ("otlp", &c.name),
        };
        match name {
            Some(n) => n.clone(),
            None if index == 0 => kind.to_string(),
            None => format!("{kind}{index}"),
        }
    }
}

/// `sinks[]` of `type: file`: NDJSON to a file, with rotation.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub route: SinkRoute,
    #[serde(default = "default_file_path")]
    pub path: PathBuf,
    /// Rotate to `PATH.1`, `PATH.2`, … when the file reaches this size.
    #[serde(default)]
    pub rotate_bytes: Option<Size>,
    /// Rotated files kept (oldest removed).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_file_path() -> PathBuf {
    PathBuf::from("./outrigger-data/events.ndjson")
}

fn default_keep() -> usize {
    5
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            name: None,
            route: SinkRoute::default(),
            path: default_file_path(),
            rotate_bytes: Some(Size(100 << 20)),
            keep: default_keep(),
        }
    }
}

/// `sinks[]` of `type: stdout`: NDJSON to standard output.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub route: SinkRoute,
}

/// The body an `http` sink posts: a JSON array or NDJSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpFormat {
    /// A JSON array of native event objects.
    Json,
    /// Native NDJSON lines.
    Ndjson,
}

/// `sinks[]` of `type: http`: batches posted to a URL.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub route: SinkRoute,
    pub url: String,
    #[serde(default = "default_format")]
    pub format: HttpFormat,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_format() -> HttpFormat {
    HttpFormat::Json
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// `sinks[]` of `type: otlp`: every event as an OTLP log record, OTLP/HTTP protobuf to
/// `{url}/v1/logs`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub route: SinkRoute,
    /// The receiver's base URL (`http://collector:4318`); a URL ending in `/v1/logs` is used
    /// as it is.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_otlp_timeout")]
    pub timeout: Dur,
    /// `gzip` (the default, as the Collector's exporter) or `none`.
    #[serde(default)]
    pub compression: OtlpCompression,
}

/// `sinks[].compression` of the `otlp` sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpCompression {
    #[default]
    Gzip,
    None,
}

fn default_otlp_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `sinks[]` of `type: weave`: call events as Weave `upsert_batch` posts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeaveSinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub route: SinkRoute,
    pub url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

/// `sinks[]` of `type: nats`: events published to NATS subjects, with JetStream
/// acknowledgements (the default) or as core NATS messages (`jetstream: false`, at most once).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub route: SinkRoute,
    /// One server or several, comma-separated (`nats://a:4222,nats://b:4222`); `tls://` for
    /// TLS. User and password may be given in the URL.
    pub url: String,
    /// The subject each event is published to; `{type}` is the event type with the
    /// characters NATS does not allow in a token replaced by `_`.
    #[serde(default = "default_nats_subject")]
    pub subject: String,
    /// Publish to JetStream and wait for every acknowledgement (at least once, deduplicated by
    /// `Nats-Msg-Id`); false: core NATS publish (at most once).
    #[serde(default = "default_true")]
    pub jetstream: bool,
    /// The JetStream stream that takes the subjects.
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// Create the stream when it does not exist (subjects, `replicas`, `duplicate_window`,
    /// `storage`, `max_age`, `max_bytes`); false: a missing stream is an error.
    #[serde(default = "default_true")]
    pub create_stream: bool,
    /// Replicas of a stream the sink creates (1 to 5).
    #[serde(default = "default_one")]
    pub replicas: usize,
    /// A NATS `.creds` file (user JWT and NKey seed).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Messages published and not yet acknowledged, at most.
    #[serde(default = "default_nats_inflight")]
    pub max_inflight: usize,
    /// How long to wait for a connection, an acknowledgement or a JetStream API answer.
    #[serde(default = "default_nats_timeout")]
    pub timeout: Dur,
    /// The deduplication window of a stream the sink creates (`Nats-Msg-Id` is remembered
    /// this long).
    #[serde(default = "default_nats_duplicate_window")]
    pub duplicate_window: Dur,
    /// Storage of a stream the sink creates: `file` or `memory`.
    #[serde(default)]
    pub storage: NatsStorage,
    /// Age limit of a stream the sink creates (null: none).
    #[serde(default)]
    pub max_age: Option<Dur>,
    /// Size limit of a stream the sink creates (null: none); the oldest messages go first.
    #[serde(default)]
    pub max_bytes: Option<Size>,
}

/// `sinks[].storage` of the `nats` sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    #[default]
    File,
    Memory,
}

fn default_true() -> bool {
    true
}

fn default_one() -> usize {
    1
}

fn default_nats_subject() -> String {
    "outrigger.events.{type}".into()
}

fn default_nats_stream() -> String {
    "OUTRIGGER".into()
}

fn default_nats_inflight() -> usize {
    4096
}

fn default_nats_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_nats_duplicate_window() -> Dur {
    Dur(Duration::from_secs(120))
}

/// `delivery`: retry back-off and the spool every sink shares.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub retry: RetryConfig,
    pub spool: SpoolConfig,
}

/// `delivery.retry`: the first and the longest back-off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial: Dur,
    pub max: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Dur(Duration::from_millis(100)),
            max: Dur(Duration::from_secs(30)),
        }
    }
}

/// `delivery.spool`: where a failing sink keeps batches, and how many bytes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: Size,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("./outrigger-data/spool"),
            max_bytes: Size(1 << 30),
        }
    }
}

/// `profiling`: self and watched-pid sampling, and the budgets that degrade sampling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilingConfig {
    pub enabled: bool,
    pub interval: Dur,
    pub watch_pids: Vec<u32>,
    pub budgets: Budgets,
    /// Samples kept in the history ring.
    pub history: usize,
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        ProfilingConfig {
            enabled: true,
            interval: Dur(Duration::from_secs(1)),
            watch_pids: Vec::new(),
            budgets: Budgets::default(),
            history: 600,
        }
    }
}

/// `profiling.budgets`: CPU and memory above which sampling is scaled down.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    pub cpu_percent: f64,
    pub memory_mb: f64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            cpu_percent: 5.0,
            memory_mb: 100.0,
        }
    }
}

/// `control`: the control API listener, its key, limits and views.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Control API listener; `null` disables it.
    pub listen: Option<SocketAddr>,
    pub api_key: Option<String>,
    /// Payload fields replaced by "***" in tail and run views.
    pub redact_fields: Vec<String>,
    /// Requests per second per client before 429.
    pub rate_limit: u32,
    /// Events kept per run for `GET /v1/runs/{id}`, and decided runs remembered.
    pub run_events: usize,
    pub runs: usize,
    /// The bytes all remembered runs (summaries and events) may take together.
    pub run_bytes: Size,
    /// Browser origins (`https://host:port`, or `*`) allowed to call the API and open the
    /// WebSocket tail from another page; none by default (the console is same-origin).
    pub cors: Vec<String>,
    /// The longest a `pause` breakpoint holds a debug connection's answer.
    pub max_pause: Dur,
    /// Debug sessions kept (newest first), and the bytes they may take together.
    pub debug_sessions: usize,
    pub debug_bytes: Size,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            api_key: None,
            redact_fields: Vec::new(),
            rate_limit: 100,
            run_events: 100,
            runs: 1000,
            run_bytes: Size(16 << 20),
            cors: Vec::new(),
            max_pause: Dur(Duration::from_secs(60)),
            debug_sessions: 1000,
            debug_bytes: Size(16 << 20),
        }
    }
}

/// `health`: how often health is judged.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub interval: Dur,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Dur(Duration::from_secs(5)),
        }
    }
}

/// `log.format`: text or JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `log`: format and level.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `outrigger=debug,warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `shutdown`: the grace period for draining at exit.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for the queue to drain and the sinks to flush.
    pub grace: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Dur(Duration::from_secs(10)),
        }
    }
}

/// Where the config comes from: `-c FILE`, `$OUTRIGGER_CONFIG`, `./outrigger.yml`, or none.
pub fn locate(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("OUTRIGGER_CONFIG")
        && !p.is_empty()
    {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("outrigger.yml");
    local.exists().then_some(local)
}

/// Reads, parses, overrides from the environment and validates.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut cfg = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: Some(p.to_path_buf()),
                path: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
            })?;
            parse(&text).map_err(|mut e| {
                e.file = Some(p.to_path_buf());
                e
            })?
        }
        None => Config::default(),
    };
    apply_env(
        &mut cfg,
        |k| std::env::var(k).ok(),
        std::env::vars().map(|(k, _)| k),
    )?;
    validate(&cfg).map_err(|mut e| {
        e.file = path.map(Path::to_path_buf);
        if e.line.is_none()
            && let Some(p) = path
            && let Ok(text) = std::fs::read_to_string(p)
        {
            e.line = line_of(&text, &e.path);
        }
        e
    })?;
    Ok(cfg)
}

/// Parses YAML text into a config (defaults for what is absent), without env or validation.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let mut cfg = serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut path = if path == "." { String::new() } else { path };
        let mut message = strip_location(&inner.to_string());
        let mut line = inner.location().map(|l| l.line());
        // A `when` is read inside a tagged sink, where the path stops at `sinks[N]`.
        if let Some(at) = message.find(CONDITION_ERROR_PREFIX) {
            message.drain(..at);
            if !path.ends_with("when") {
                path.push_str(".when");
            }
            line = line_of(text, &path).or(line);
        }
        ConfigError {
            file: None,
            line: line.or_else(|| line_of(text, &path)),
            path,
            message,
        }
    })?;
    for (i, s) in cfg.sinks.iter_mut().enumerate() {
        s.route_mut().site = format!("sinks[{i}].when");
    }
    Ok(cfg)
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Finds the line (1-based) where a dotted key path (`sinks[1].url`) is written, following
/// indentation and flow mappings. For errors that serde reports without a location.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let significant = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    // Position after the last match, and the indent that bounds the current block.
    let (mut line, mut col, mut block) = (0usize, 0usize, -1i64);
    let mut found = None;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let mut parts = seg.split('[');
        let key = parts.next().unwrap_or("");
        if !key.is_empty() {
            let mut hit = None;
            for (l, raw) in lines.iter().enumerate().skip(line) {
                if l > line && significant(raw) && indent_of(raw) as i64 <= block {
                    break;
                }
                let from = if l == line { col.min(raw.len()) } else { 0 };
                let pat = format!("{key}:");
                let mut search = from;
                while let Some(i) = raw[search..].find(&pat) {
                    let at = search + i;
                    let before = raw[..at].trim_end();
                    if before.is_empty() || before.ends_with(['-', '{', ',']) {
                        hit = Some((l, at));
                        break;
                    }
                    search = at + pat.len();
                }
                if hit.is_some() {
                    break;
                }
            }
            let (l, at) = hit?;
            found = Some(l + 1);
            line = l;
            col = at + key.len() + 1;
            block = at as i64;
        }
        for idx in parts {
            let n: usize = idx.trim_end_matches(']').parse().ok()?;
            // A flow sequence (`key: [a, b]`) written on the key's line: the item is there too.
            let rest = lines.get(line).and_then(|l| l.get(col..)).unwrap_or("");
            if rest.trim_start().starts_with('[') {
                continue;
            }
            let (mut seen, mut hit, mut item_indent) = (0, None, None);
            for (l, raw) in lines.iter().enumerate().skip(line + 1) {
                if !significant(raw) {
                    continue;
                }
                let ind = indent_of(raw) as i64;
                let dash = raw.trim_start().starts_with('-');
                if ind < block || (ind == block && !dash) {
                    break;
                }
                if dash && ind == *item_indent.get_or_insert(ind) {
                    if seen == n {
                        hit = Some((l, ind as usize));
                        break;
                    }
                    seen += 1;
                }
            }
            let (l, ind) = hit?;
            found = Some(l + 1);
            line = l;
            col = ind + 1;
            block = ind as i64;
        }
    }
    found
}

/// Applies the documented `OUTRIGGER_*` environment overrides.
pub fn apply_env(
    cfg: &mut Config,
    get: impl Fn(&str) -> Option<String>,
    keys: impl Iterator<Item = String>,
) -> Result<(), ConfigError> {
    fn bad(var: &str, v: &str, what: &str) -> ConfigError {
        ConfigError {
            file: None,
            path: format!("${var}"),
            line: None,
            message: format!("`{v}` is not {what}"),
        }
    }
    if let Some(v) = get("OUTRIGGER_ENABLED") {
        cfg.enabled = match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(bad("OUTRIGGER_ENABLED", &v, "a boolean")),
        };
    }
    if let Some(v) = get("OUTRIGGER_SOCKET") {
        cfg.ingest.socket = PathBuf::from(v);
    }
    if let Some(v) = get("OUTRIGGER_QUEUE_CAPACITY") {
        cfg.queue.capacity = v
            .parse()
            .map_err(|_| bad("OUTRIGGER_QUEUE_CAPACITY", &v, "a count"))?;
    }
    if let Some(v) = get("OUTRIGGER_CPU_BUDGET") {
        cfg.profiling.budgets.cpu_percent = v
            .parse()
            .map_err(|_| bad("OUTRIGGER_CPU_BUDGET", &v, "a percentage"))?;
    }
    if let Some(v) = get("OUTRIGGER_MEMORY_BUDGET_MB") {
        cfg.profiling.budgets.memory_mb = v
            .parse()
            .map_err(|_| bad("OUTRIGGER_MEMORY_BUDGET_MB", &v, "a number of MB"))?;
    }
    if let Some(v) = get("OUTRIGGER_API_KEY")
        && !v.is_empty()
    {
        cfg.control.api_key = Some(v);
    }
    if let Some(v) = get("OUTRIGGER_INGEST_KEY")
        && !v.is_empty()
    {
        cfg.ingest.api_key = Some(v);
    }
    if let Some(v) = get("OUTRIGGER_LOG") {
        cfg.log.level = v;
    }
    for key in keys {
        if let Some(ty) = key.strip_prefix("OUTRIGGER_SAMPLE_") {
            let v = get(&key).unwrap_or_default();
            let rate: f64 = v
                .parse()
                .map_err(|_| bad(&key, &v, "a rate from 0.0 to 1.0"))?;
            cfg.sampling.rates.insert(ty.to_ascii_lowercase(), rate);
        }
    }
    Ok(())
}

/// Checks values that parse but make no sense.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }
    let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
    if !rate_ok(cfg.sampling.default_rate) {
        return Err(err("sampling.default_rate", "must be between 0.0 and 1.0"));
    }
    for (t, r) in &cfg.sampling.rates {
        if !rate_ok(*r) {
            return Err(err(
                format!("sampling.rates.{t}"),
                "must be between 0.0 and 1.0",
            ));
        }
    }
    if cfg.sampling.adaptive.boost_factor < 1.0 {
        return Err(err(
            "sampling.adaptive.boost_factor",
            "must be at least 1.0",
        ));
    }
    let control = &cfg.control;
    if control.debug_sessions == 0 {
        return Err(err("control.debug_sessions", "must be at least 1"));
    }
    if control.debug_bytes.0 < 4096 {
        return Err(err("control.debug_bytes", "must be at least 4KiB"));
    }
    if control.max_pause.0.is_zero() {
        return Err(err(
            "control.max_pause",
            "must be more than 0 (a pause breakpoint always ends)",
        ));
    }
    for (i, o) in control.cors.iter().enumerate() {
        // As a browser sends it in `Origin`: scheme://host[:port], nothing after.
        let rest = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"));
        let ok = o == "*"
            || rest.is_some_and(|r| {
                !r.is_empty() && !r.contains('/') && !r.contains(char::is_whitespace)
            });
        if !ok {
            return Err(err(
                format!("control.cors[{i}]"),
                format!("`{o}` is not an origin: use scheme://host[:port], or *"),
            ));
        }
    }
    let tail = &cfg.sampling.tail;
    if !rate_ok(tail.else_rate) {
        return Err(err(
            "sampling.tail.else_rate",
            "must be between 0.0 and 1.0",
        ));
    }
    if tail.idle.0.is_zero() {
        return Err(err("sampling.tail.idle", "must be more than 0"));
    }
    if tail.max_duration.0.is_zero() {
        return Err(err("sampling.tail.max_duration", "must be more than 0"));
    }
    if tail.max_bytes.0 < 64 * 1024 {
        return Err(err("sampling.tail.max_bytes", "must be at least 64KiB"));
    }
    if tail.max_run_bytes.0 == 0 || tail.max_run_bytes.0 > tail.max_bytes.0 {
        return Err(err(
            "sampling.tail.max_run_bytes",
            "must be more than 0 and at most sampling.tail.max_bytes",
        ));
    }
    let mut policy_names = std::collections::HashSet::new();
    for (i, p) in tail.keep.iter().enumerate() {
        if p.name.is_empty() || p.name.len() > 64 {
            return Err(err(
                format!("sampling.tail.keep[{i}].name"),
                "must be 1 to 64 bytes",
            ));
        }
        if matches!(p.name.as_str(), "rate" | "forced" | "early" | "shutdown")
            || p.name.contains('/')
        {
            return Err(err(
                format!("sampling.tail.keep[{i}].name"),
                "`rate`, `forced`, `early` and `shutdown` are the tail sampler's own reasons, and `/` marks an early decision: pick another name",
            ));
        }
        if !policy_names.insert(&p.name) {
            return Err(err(
                format!("sampling.tail.keep[{i}].name"),
                format!("`{}` is listed twice", p.name),
            ));
        }
    }
    if cfg.queue.capacity == 0 {
        return Err(err("queue.capacity", "must be at least 1"));
    }
    if let Some(d) = &cfg.queue.durable {
        if d.max_bytes.0 < 1 << 20 {
            return Err(err("queue.durable.max_bytes", "must be at least 1MiB"));
        }
        if d.segment_bytes() > d.max_bytes.0 {
            return Err(err(
                "queue.durable.segment_bytes",
                "must not be larger than max_bytes",
            ));
        }
        if d.commit_interval.0 > Duration::from_secs(1) {
            return Err(err("queue.durable.commit_interval", "must be at most 1s"));
        }
    }
    if cfg.ingest.max_line_bytes.0 < 64 {
        return Err(err("ingest.max_line_bytes", "must be at least 64 bytes"));
    }
    if cfg.batch.max_events == 0 {
        return Err(err("batch.max_events", "must be at least 1"));
    }
    if cfg.batch.interval.0.is_zero() {
        return Err(err("batch.interval", "must be more than 0"));
    }
    if cfg.plugins.defaults.timeout.0.is_zero() {
        return Err(err("plugins.defaults.timeout", "must be more than 0"));
    }
    if cfg.plugins.defaults.memory_mb == 0 {
        return Err(err("plugins.defaults.memory_mb", "must be at least 1"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, c) in cfg.plugins.chain.iter().enumerate() {
        if c.name.is_empty() {
            return Err(err(format!("plugins.chain[{i}].name"), "must not be empty"));
        }
        if !names.insert(&c.name) {
            return Err(err(
                format!("plugins.chain[{i}].name"),
                format!("`{}` is listed twice", c.name),
            ));
        }
        if c.timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(err(
                format!("plugins.chain[{i}].timeout"),
                "must be more than 0",
            ));
        }
        validate_grants(&c.grants, &format!("plugins.chain[{i}].grants"))?;
    }
    if cfg.sinks.is_empty() {
        return Err(err("sinks", "at least one sink is needed"));
    }
    let mut labels = std::collections::HashSet::new();
    for (i, s) in cfg.sinks.iter().enumerate() {
        if !labels.insert(s.label(i)) {
            return Err(err(
                format!("sinks[{i}]"),
                format!("sink name `{}` is used twice", s.label(i)),
            ));
        }
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        match s {
            SinkConfig::Http(h) if !url_ok(&h.url) => {
                return Err(err(
                    format!("sinks[{i}].url"),
                    "must start with http:// or https://",
                ));
            }
            SinkConfig::Otlp(o) if !url_ok(&o.url) => {
                return Err(err(
                    format!("sinks[{i}].url"),
                    "must start with http:// or https:// (OTLP/HTTP; /v1/logs is added)",
                ));
            }
            SinkConfig::Weave(w) if !url_ok(&w.url) => {
                return Err(err(
                    format!("sinks[{i}].url"),
                    "must start with http:// or https://",
                ));
            }
            SinkConfig::Nats(n) => {
                if let Err((key, why)) = crate::sinks::nats::validate(n) {
                    return Err(err(format!("sinks[{i}].{key}"), why));
                }
            }
            _ => {}
        }
    }
    if cfg.delivery.retry.initial.0.is_zero()
        || cfg.delivery.retry.max.0 < cfg.delivery.retry.initial.0
    {
        return Err(err("delivery.retry", "needs 0 < initial <= max"));
    }
    if let Some(addr) = cfg.control.listen
        && !addr.ip().is_loopback()
        && cfg.control.api_key.is_none()
    {
        return Err(err(
            "control.listen",
            format!(
                "{addr} is not loopback: set control.api_key (or OUTRIGGER_API_KEY) to expose the control API"
            ),
        ));
    }
    if cfg.control.api_key.as_deref() == Some("") {
        return Err(err(
            "control.api_key",
            "must not be empty (null or absent leaves the control API open)",
        ));
    }
    if cfg.ingest.api_key.as_deref() == Some("") {
        return Err(err(
            "ingest.api_key",
            "must not be empty (null or absent leaves HTTP ingest open)",
        ));
    }
    if let Some(addr) = cfg.ingest.http
        && !addr.ip().is_loopback()
        && cfg.ingest.api_key.is_none()
    {
        return Err(err(
            "ingest.http",
            format!(
                "{addr} is not loopback: set ingest.api_key (or OUTRIGGER_INGEST_KEY) to accept events from the network"
            ),
        ));
    }
    if let Some(o) = &cfg.ingest.otlp {
        for (key, addr) in [("ingest.otlp.http", o.http), ("ingest.otlp.grpc", o.grpc)] {
            if let Some(addr) = addr
                && !addr.ip().is_loopback()
                && cfg.ingest.api_key.is_none()
            {
                return Err(err(
                    key,
                    format!(
                        "{addr} is not loopback: set ingest.api_key (or OUTRIGGER_INGEST_KEY) to accept OTLP from the network"
                    ),
                ));
            }
        }
        if o.max_request_bytes.0 == 0 {
            return Err(err("ingest.otlp.max_request_bytes", "must be above 0"));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        return Err(err("log.level", format!("not a log filter: {e}")));
    }
    Ok(())
}

/// Checks one plugin's grants: authorities, variable names, and directories that exist at
/// absolute guest paths. `at` is the key path of the `grants` mapping.
fn validate_grants(g: &Grants, at: &str) -> Result<(), ConfigError> {
    let err = |path: String, message: String| ConfigError {
        file: None,
        path,
        line: None,
        message,
    };
    for (j, a) in g.http.iter().enumerate() {
        a.parse::<Authority>()
            .map_err(|m| err(format!("{at}.http[{j}]"), m))?;
    }
    for (j, name) in g.env.iter().enumerate() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(err(
                format!("{at}.env[{j}]"),
                format!("`{name}` is not an environment variable name (non-empty, no `=`)"),
            ));
        }
    }
    let mut guests = std::collections::HashSet::new();
    for (j, d) in g.dirs.iter().enumerate() {
        let guest = Path::new(&d.guest);
        let dotted = guest
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        if !guest.is_absolute() || dotted {
            return Err(err(
                format!("{at}.dirs[{j}].guest"),
                format!(
                    "`{}` must be an absolute path without `..` (where the plugin sees the directory, e.g. /data)",
                    d.guest
                ),
            ));
        }
        if !guests.insert(guest.components().collect::<PathBuf>()) {
            return Err(err(
                format!("{at}.dirs[{j}].guest"),
                format!("`{}` is granted twice", d.guest),
            ));
        }
        match std::fs::metadata(&d.host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(err(
                    format!("{at}.dirs[{j}].host"),
                    format!("{} is not a directory", d.host.display()),
                ));
            }
            Err(e) => {
                return Err(err(
                    format!("{at}.dirs[{j}].host"),
                    format!("{}: {e}", d.host.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert_eq!("10MiB".parse::<Size>().unwrap().0, 10 << 20);
        assert_eq!("64KB".parse::<Size>().unwrap().0, 64_000);
        assert!("5 parsecs".parse::<Dur>().is_err());
        assert!("ten".parse::<Size>().is_err());
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
enabled: true
ingest:
  socket: /tmp/outrigger.sock
  http: 127.0.0.1:4390
  max_line_bytes: 1048576
queue:
  capacity: 10000
  on_full: drop_oldest
sampling:
  default_rate: 1.0
  rates: {test_events: 0.2}
  key: run_id
  adaptive: {enabled: true, boost_factor: 5.0, boost_duration: 60s}
plugins:
  dir: ./plugins
  defaults: {fuel_per_event: 1000000, memory_mb: 64, timeout: 100ms, on_error: pass}
  chain:
    - {name: redact, types: [api_call], config: {fields: [password]}, on_error: drop}
batch: {max_events: 2000, max_bytes: 10MiB, interval: 1s}
sinks:
  - {type: file, path: ./outrigger-data/events.ndjson, rotate_bytes: 100MiB}
  - {type: http, url: "http://127.0.0.1:8080/ingest", format: json, timeout: 30s}
  - {type: weave, url: "http://127.0.0.1:8080"}
  - {type: nats, url: "nats://127.0.0.1:4222", subject: outrigger.events, jetstream: true}
  - {type: stdout}
delivery:
  retry: {initial: 100ms, max: 30s}
  spool: {dir: ./outrigger-data/spool, max_bytes: 1GiB}
profiling: {enabled: true, interval: 1s, watch_pids: [], budgets: {cpu_percent: 5.0, memory_mb: 100}}
control:
  listen: 127.0.0.1:9464
  api_key: null
log: {format: text, level: info}
"#;
        let cfg = parse(text).unwrap();
        validate(&cfg).unwrap();
        assert_eq!(cfg.sampling.rates["test_events"], 0.2);
        assert_eq!(cfg.batch.max_bytes.0, 10 << 20);
        assert_eq!(cfg.sinks.len(), 5);
        assert_eq!(
            cfg.plugins.chain[0].config.as_ref().unwrap()["fields"][0],
            "password"
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let cfg = parse(include_str!("../../examples/outrigger.yml")).unwrap();
        validate(&cfg).unwrap();
        assert_eq!(cfg.plugins.chain.len(), 3);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let e = parse("queue:\n  capacity: 10\n  on_fulll: drop_newest\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("on_fulll"), "{e}");
    }

    #[test]
    fn bad_value_names_path_and_line() {
        let e = parse("batch:\n  interval: soon\n").unwrap_err();
        assert_eq!(e.path, "batch.interval");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("not a duration"), "{e}");
    }

    #[test]
    fn validation_finds_line() {
        let text = "sampling:\n  default_rate: 1.0\n  rates:\n    a: 0.5\n    b: 2.0\n";
        let cfg = parse(text).unwrap();
        let e = validate(&cfg).unwrap_err();
        assert_eq!(e.path, "sampling.rates.b");
        assert_eq!(line_of(text, &e.path), Some(5));
    }

    #[test]
    fn env_overrides() {
        let mut cfg = Config::default();
        let env = [
            ("OUTRIGGER_ENABLED", "false"),
            ("OUTRIGGER_QUEUE_CAPACITY", "7"),
            ("OUTRIGGER_SAMPLE_TEST_EVENTS", "0.25"),
        ];
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        apply_env(&mut cfg, get, env.iter().map(|(k, _)| k.to_string())).unwrap();
        assert!(!cfg.enabled);
        assert_eq!(cfg.queue.capacity, 7);
        assert_eq!(cfg.sampling.rates["test_events"], 0.25);
    }

    #[test]
    fn socket_modes() {
        let mode = |yaml: &str| parse(&format!("ingest: {{socket_mode: {yaml}}}\n"));
        for (yaml, want) in [
            ("\"0660\"", 0o660),
            ("0660", 0o660),
            ("660", 0o660),
            ("0o660", 0o660),
            ("\"0o640\"", 0o640),
            ("432", 0o660),
            ("600", 0o600),
            ("\"0777\"", 0o777),
            ("\"700\"", 0o700),
        ] {
            let cfg = mode(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(cfg.ingest.socket_mode.0, want, "{yaml}");
        }
        assert_eq!(Config::default().ingest.socket_mode.0, 0o600);
        for (yaml, needle) in [
            ("\"4660\"", "outside 0777"),
            ("\"1777\"", "outside 0777"),
            ("4660", "quoted"),
            ("\"0440\"", "keep at least 0600"),
            ("\"0060\"", "keep at least 0600"),
            ("\"0689\"", "not an octal"),
            ("\"rw\"", "not an octal"),
            ("\"\"", "not an octal"),
            ("60", "quoted"),
            ("-1", "not a file mode"),
            ("6.6", "octal file mode"),
        ] {
            let e = mode(yaml).unwrap_err();
            assert_eq!(e.path, "ingest.socket_mode", "{yaml}: {e}");
            assert!(e.message.contains(needle), "{yaml}: {e}");
        }
        let text = serde_yaml::to_string(&mode("\"0660\"").unwrap().ingest).unwrap();
        assert!(text.contains("socket_mode: '0660'"), "{text}");
    }

    #[test]
    fn socket_groups() {
        let group = |yaml: &str| {
            parse(&format!("ingest: {{socket_group: {yaml}}}\n")).map(|c| c.ingest.socket_group)
        };
        assert_eq!(
            group("outrigger").unwrap(),
            Some(SocketGroup::Name("outrigger".into()))
        );
        assert_eq!(group("1000").unwrap(), Some(SocketGroup::Gid(1000)));
        assert_eq!(group("\"1000\"").unwrap(), Some(SocketGroup::Gid(1000)));
        assert_eq!(group("null").unwrap(), None);
        assert_eq!(Config::default().ingest.socket_group, None);
        for bad in ["\"\"", "-5", "99999999999", "[a]"] {
            let e = group(bad).unwrap_err();
            assert_eq!(e.path, "ingest.socket_group", "{bad}: {e}");
        }
    }

    #[test]
    fn non_loopback_ingest_needs_key() {
        let cfg = parse("ingest: {http: 0.0.0.0:4390}\n").unwrap();
        let e = validate(&cfg).unwrap_err();
        assert_eq!(e.path, "ingest.http");
        assert!(e.message.contains("ingest.api_key"), "{e}");
        assert!(e.message.contains("OUTRIGGER_INGEST_KEY"), "{e}");
        let cfg = parse("ingest: {http: 0.0.0.0:4390, api_key: k}\n").unwrap();
        validate(&cfg).unwrap();
        let mut cfg = parse("ingest: {http: \"[::]:4390\"}\n").unwrap();
        let env = |k: &str| (k == "OUTRIGGER_INGEST_KEY").then(|| "k2".to_string());
        apply_env(&mut cfg, env, std::iter::empty()).unwrap();
        assert_eq!(cfg.ingest.api_key.as_deref(), Some("k2"));
        validate(&cfg).unwrap();
        let e = validate(&parse("ingest: {api_key: \"\"}\n").unwrap()).unwrap_err();
        assert_eq!(e.path, "ingest.api_key");
    }

    #[test]
    fn sinks_take_types_and_when() {
        let text = r#"
sinks:
  - {type: file, path: /tmp/x.ndjson, types: [test_end], when: 'data.status == "failed"'}
  - type: weave
    url: http://127.0.0.1:1
    types: [call_start, call_end]
  - type: http
    url: http://127.0.0.1:2
    when: attributes.suite == "e2e"
  - {type: nats, url: "nats://127.0.0.1:4222", subject: s, when: 'ts_ns > 0'}
  - {type: stdout}
"#;
        let cfg = parse(text).unwrap();
        validate(&cfg).unwrap();
        let file = cfg.sinks[0].route();
        assert_eq!(file.types, ["test_end"]);
        assert_eq!(
            file.when.as_ref().unwrap().source(),
            r#"data.status == "failed""#
        );
        assert_eq!(file.site, "sinks[0].when");
        assert!(cfg.sinks[1].route().when.is_none());
        assert_eq!(cfg.sinks[1].route().types.len(), 2);
        assert!(cfg.sinks[2].route().types.is_empty());
        assert!(cfg.sinks[3].route().when.is_some());
        assert!(cfg.sinks[4].route().is_all());
        assert!(!file.is_all());

        let ev = |line: &str| match crate::event::parse_owned(line.as_bytes(), 1 << 20) {
            Ok(crate::event::Line::Event(e)) => e,
            _ => unreachable!(),
        };
        let m = crate::metrics::Metrics::new();
        assert!(file.admits(&ev(r#"{"type":"test_end","data":{"status":"failed"}}"#), &m));
        assert!(!file.admits(&ev(r#"{"type":"test_end","data":{"status":"ok"}}"#), &m));
        assert!(!file.admits(&ev(r#"{"type":"other","data":{"status":"failed"}}"#), &m));
        assert_eq!(m.condition_errors_count("sinks[0].when"), 0);
        assert!(!file.admits(&ev(r#"{"type":"test_end","data":{}}"#), &m));
        assert_eq!(m.condition_errors_count("sinks[0].when"), 1);
        assert!(cfg.sinks[4].route().admits(&ev(r#"{"type":"x"}"#), &m));

        // The routing keys round-trip, and a sink without them writes none.
        let yaml = serde_yaml::to_string(&cfg).unwrap();
        let back = parse(&yaml).unwrap();
        assert_eq!(back.sinks[0].route(), file);
        assert!(!yaml.contains("site"));
    }

    #[test]
    fn a_sink_still_refuses_unknown_keys() {
        let e = parse("sinks:\n  - {type: stdout, typez: [a]}\n").unwrap_err();
        assert!(e.to_string().contains("typez"), "{e}");
    }

    #[test]
    fn a_bad_when_is_refused_with_its_position() {
        let text = "sinks:\n  - type: stdout\n  - type: file\n    path: /tmp/x\n    when: 'type == \"a\" &&& data.x'\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.path, "sinks[1].when", "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("line 1, column 15"), "{e}");
        assert!(e.to_string().contains("sinks[1].when"), "{e}");
        let e = parse("sinks: [{type: stdout, when: 'data.x +'}]\n").unwrap_err();
        assert_eq!(e.path, "sinks[0].when", "{e}");
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn non_loopback_control_needs_key() {
        let cfg = parse("control: {listen: 0.0.0.0:9464}\n").unwrap();
        let e = validate(&cfg).unwrap_err();
        assert_eq!(e.path, "control.listen");
        let cfg = parse("control: {api_key: \"\"}\n").unwrap();
        assert_eq!(validate(&cfg).unwrap_err().path, "control.api_key");
    }

    #[test]
    fn grants_parse_and_default_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "plugins:\n  chain:\n    - name: a\n    - name: b\n      grants:\n        http: [\"Hooks.Example.com:443\", \"127.0.0.1:8080\", \"[::1]:9\"]\n        env: [HOME]\n        dirs:\n          - {{host: \"{}\", guest: /data}}\n          - {{host: \"{}\", guest: /out, read_only: false}}\n",
            dir.path().display(),
            dir.path().display()
        );
        let cfg = parse(&text).unwrap();
        validate(&cfg).unwrap();
        assert!(cfg.plugins.chain[0].grants.is_empty());
        let g = &cfg.plugins.chain[1].grants;
        assert_eq!(g.env, ["HOME"]);
        assert!(g.dirs[0].read_only, "read_only defaults to true");
        assert!(!g.dirs[1].read_only);
        let a: Vec<Authority> = g.http.iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(a[0].to_string(), "hooks.example.com:443");
        assert_eq!(a[2].host, "[::1]");
    }

    #[test]
    fn bad_grants_name_the_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let d = dir.path().display();
        let f = file.display();
        let cases: Vec<(String, &str, &str)> = vec![
            (
                "http: [\"http://x:80\"]".into(),
                "grants.http[0]",
                "no scheme",
            ),
            (
                "http: [\"x\"]".into(),
                "grants.http[0]",
                "the port is missing",
            ),
            (
                "http: [\"a:1\", \"x:0\"]".into(),
                "grants.http[1]",
                "1 to 65535",
            ),
            (
                "http: [\"x:80/path\"]".into(),
                "grants.http[0]",
                "1 to 65535",
            ),
            ("http: [\"*.x:80\"]".into(), "grants.http[0]", "DNS name"),
            ("http: [\"[nope]:80\"]".into(), "grants.http[0]", "IPv6"),
            (
                "env: [\"A=B\"]".into(),
                "grants.env[0]",
                "not an environment variable",
            ),
            (
                format!("dirs: [{{host: \"{d}\", guest: data}}]"),
                "grants.dirs[0].guest",
                "absolute",
            ),
            (
                format!("dirs: [{{host: \"{d}\", guest: /a/../b}}]"),
                "grants.dirs[0].guest",
                "without `..`",
            ),
            (
                format!("dirs: [{{host: \"{d}\", guest: /a}}, {{host: \"{d}\", guest: /a/}}]"),
                "grants.dirs[1].guest",
                "granted twice",
            ),
            (
                format!("dirs: [{{host: \"{d}/missing\", guest: /a}}]"),
                "grants.dirs[0].host",
                "No such file",
            ),
            (
                format!("dirs: [{{host: \"{f}\", guest: /a}}]"),
                "grants.dirs[0].host",
                "not a directory",
            ),
        ];
        for (grants, key, says) in cases {
            let text =
                format!("plugins:\n  chain:\n    - name: p\n      grants:\n        {grants}\n");
            let cfg = parse(&text).unwrap_or_else(|e| panic!("{grants}: {e}"));
            let e = validate(&cfg).unwrap_err();
            assert_eq!(e.path, format!("plugins.chain[0].{key}"), "{grants}: {e}");
            assert!(e.message.contains(says), "{grants}: {e}");
            assert_eq!(line_of(&text, &e.path), Some(5), "{grants}: {}", e.path);
        }
        let e = parse("plugins:\n  chain:\n    - name: p\n      grants: {net: [x]}\n").unwrap_err();
        assert!(e.to_string().contains("net"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse("plugins:\n  chain:\n    - name: p\n      grants: {dirs: [{host: /tmp}]}\n")
            .unwrap_err();
        assert!(e.to_string().contains("guest"), "{e}");
    }

    #[test]
    fn plugin_timeouts_parse_default_and_validate() {
        let d = PluginDefaults::default();
        assert_eq!(d.timeout.0, Duration::from_millis(100));
        assert_eq!(d.timeout_per_event.0, Duration::from_millis(1));
        let text = "plugins:\n  defaults: {timeout: 5ms, timeout_per_event: 250us}\n  chain:\n    - {name: p, timeout_per_event: 0}\n";
        let cfg = parse(text).unwrap();
        validate(&cfg).unwrap();
        assert_eq!(
            cfg.plugins.defaults.timeout_per_event.0,
            Duration::from_micros(250)
        );
        assert_eq!(
            cfg.plugins.chain[0].timeout_per_event,
            Some(Dur(Duration::ZERO))
        );
        // Serialized exactly (reload compares plugin configs by their serialized form).
        assert_eq!(String::from(Dur(Duration::from_micros(250))), "250us");
        assert_eq!(String::from(Dur(Duration::from_millis(5))), "5ms");
        assert_eq!(String::from(Dur(Duration::from_nanos(1500))), "1500ns");
        let e = parse("plugins:\n  defaults:\n    timeout_per_event: soon\n").unwrap_err();
        assert_eq!(e.path, "plugins.defaults.timeout_per_event");
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("plugins:\n  defaults:\n    timeout_per_event: 99999999999999999999999h\n")
            .unwrap_err();
        assert!(e.message.contains("too long"), "{e}");
        let text = "plugins:\n  chain:\n    - name: p\n      timeout: 0ms\n";
        let e = validate(&parse(text).unwrap()).unwrap_err();
        assert_eq!(e.path, "plugins.chain[0].timeout");
        assert_eq!(line_of(text, &e.path), Some(4), "{e}");
    }
}
