//! The durable queue (`queue.durable`): a segmented write-ahead log in front of the queue.
//!
//! In: admitted batches from every ingest path ([`Wal::append`], called by
//! [`crate::ingest::Admission::admit`]); on start, the segment files in `dir`; while running,
//! how far the sinks have got ([`FloorSource`]). Out: events in the [`Queue`] (replayed ones
//! first, then new ones), and for each append an answer once its records are in the log: after
//! the write and, with `fsync: always` or `batch`, the sync that covers it. The caller answers
//! the client only then, so an answered event survives `kill -9`.
//!
//! **Appending.** A batch is encoded outside any lock ([`segment::encode`]); then, under one
//! lock, the queue numbers and takes it ([`Queue::push_seq`]) and its records, sealed with those
//! sequence numbers, are copied to the pending buffer. The record's sequence is the event's
//! place in the queue, and it continues across restarts. One committer thread takes the whole
//! pending buffer at a time, writes it to the current segment and syncs it (group commit): with
//! `batch` at most one sync every `commit_interval` (the first after a quiet spell goes at
//! once), with `always` one after another as fast as the disk allows (appends that arrive
//! during a sync share the next one), with `never` no sync. Every append waiting on that
//! round is then answered. A failed write or sync answers the appends of that round with an
//! error (their events are queued all the same and may still be delivered) and starts a new
//! segment. Segments roll at `segment_bytes`.
//!
//! **Trim rule.** An event is done for the log once it is delivered, dropped and counted
//! (sampled out, by a plugin, by the tail's decision, refused by a sink), or written to a
//! sink's on-disk spool (which outlives a crash and is delivered first on the next start). The
//! pipeline measures, between steps, the oldest event the tail stage still holds (in memory or
//! spilled: the spill does not outlive a restart) and caps every batch's `floor` by it and by
//! what it has taken from the queue; each sink publishes the `floor` of the last batch it
//! delivered or spooled. The log's floor is the least of the running sinks' floors, and never
//! goes back. A segment whose records are all below the floor is deleted, whole; the floor and
//! each sink's cursor are written to `dir/cursor` (write and rename), so a restart skips what
//! was done. Records above the floor in a partly done segment are replayed: at least once.
//!
//! **Start.** Every segment is read in order ([`scan_segment`]); each record at or above the
//! cursor is parsed (its native line carries the event's id) and queued again, waiting for room
//! rather than dropping, before any listener is bound; counted `wal_replayed_total`. A segment
//! whose tail is cut short or damaged keeps its valid prefix (replayed); the rest is moved to
//! `NAME.corrupt` beside it, counted (`wal_corrupt_records_total`: the damaged record and the
//! intact ones a resync finds after it, which are not replayed; `wal_corrupt_bytes_total`) and
//! logged with the offset and the reason. Later segments are read as usual. New records go to a
//! new segment.
//!
//! **Full.** Past `max_bytes` (segments and pending appends), `queue.on_full` applies to new
//! events: `drop_newest` refuses them with an answer that says so (counted `queue_full`);
//! `drop_oldest` accepts them and deletes the oldest segments, confirmed or not, until the log
//! fits again: their events are still delivered if they are in the pipeline, but no longer
//! survive a crash (counted `wal_evicted_total`, logged). The current segment is never deleted.
//!
//! **Stop.** [`Wal::close`], after the pipeline and sinks have drained: the committer writes
//! what is pending, trims to the final floor and writes the cursor, then its thread ends.
//! `fsync`, `max_bytes`, `segment_bytes` and `commit_interval` reload live; `dir` and turning the log on or off
//! need a restart (a reload keeps the running log and says so).

pub mod segment;

pub use segment::{Problem, ProblemKind, Record, Scan};

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::{DurableConfig, Fsync, OnFull};
use crate::event::{self, Event, Line};
use crate::metrics::{DropReason, Metrics};
use crate::queue::Queue;

/// How far the sinks have got: the log's floor and each sink's cursor (label, sequence).
/// `None` before any sink has confirmed anything.
pub type FloorSource = Arc<dyn Fn() -> Option<(u64, Vec<(String, u64)>)> + Send + Sync>;

/// How often the committer looks at the floor to trim, at most.
const TRIM_EVERY: Duration = Duration::from_millis(50);
/// Events queued per step of a replay.
const REPLAY_CHUNK: usize = 1024;
/// Payload bytes a resync may checksum while counting what a damaged tail held.
const RESYNC_BUDGET: usize = 64 << 20;

/// What a segment file holds, as the replay on start reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// The records of the valid prefix, where it ends, and the first problem after it.
    pub scan: Scan,
    /// Bytes after the valid prefix: what the replay moves aside to `NAME.corrupt`.
    pub set_aside_bytes: usize,
    /// Intact records a resync finds in those bytes (not replayed; a lower bound when the
    /// damaged tail is larger than the resync's budget).
    pub intact_after: usize,
}

/// Reads the bytes of one segment file: every intact record of its valid prefix, where that
/// prefix ends, and what lies beyond it. The replay on start reads every segment with this
/// function, and it never panics, whatever the bytes (the `wal` fuzz target calls it).
pub fn scan_segment(bytes: &[u8]) -> SegmentScan {
    let scan = segment::scan(bytes);
    let set_aside_bytes = bytes.len() - scan.valid_len;
    let intact_after = match scan.problem {
        Some(p) if set_aside_bytes > 0 => segment::resync_count(bytes, p.at, RESYNC_BUDGET),
        _ => 0,
    };
    SegmentScan {
        scan,
        set_aside_bytes,
        intact_after,
    }
}

/// What an append came to.
#[derive(Debug, Default)]
pub struct Appended {
    /// How many of the batch's last events were refused (the log or the queue full).
    pub refused: usize,
    /// Why they were refused, for the answer.
    pub reason: Option<&'static str>,
    /// The log could not be written: the answer for every accepted event says so.
    pub error: Option<String>,
}

/// The answer for events refused because the log is at `max_bytes`.
pub const FULL: &str =
    "queue full: the write-ahead log is at queue.durable.max_bytes; event dropped";

/// Settings that reload live.
#[derive(Clone, Copy, Debug)]
struct Settings {
    fsync: Fsync,
    max_bytes: u64,
    segment_bytes: u64,
    commit_interval: Duration,
    on_full: OnFull,
}

impl Settings {
    fn of(cfg: &DurableConfig, on_full: OnFull) -> Settings {
        Settings {
            fsync: cfg.fsync,
            max_bytes: cfg.max_bytes.0,
            segment_bytes: cfg.segment_bytes(),
            commit_interval: cfg.commit_interval.0,
            on_full,
        }
    }
}

/// Appends not yet written, in order.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Bytes ever appended (the position an append waits for).
    end: u64,
    /// The highest sequence in `buf`.
    max_seq: Option<u64>,
    records: u64,
}

/// What the committer has made durable (by its mode): every append up to `pos`.
#[derive(Clone, Default)]
struct Committed {
    pos: u64,
    /// The latest failed rounds: `[from, to)` positions and why.
    failed: Arc<VecDeque<(u64, u64, Arc<str>)>>,
}

/// What `/v1/status` and health show of the log.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WalStatus {
    pub dir: String,
    pub fsync: &'static str,
    pub segments: usize,
    pub bytes: u64,
    pub max_bytes: u64,
    /// Everything before this sequence is done (the cursor).
    pub floor: u64,
    /// Each sink's cursor at the last trim.
    pub sinks: BTreeMap<String, u64>,
    /// Events replayed on start.
    pub replayed: u64,
    /// Files set aside on start (`*.corrupt`).
    pub set_aside: Vec<String>,
    pub last_error: Option<String>,
}

/// State shared by appenders and the committer.
struct Shared {
    dir: PathBuf,
    pending: Mutex<Pending>,
    /// Pending data, a reload, or close.
    wake: Notify,
    committed: watch::Sender<Committed>,
    settings: Mutex<Settings>,
    /// Bytes in segments plus pending appends, for `max_bytes`.
    bytes: AtomicU64,
    /// Over `max_bytes` with `drop_oldest`: the committer should delete old segments.
    evict: AtomicBool,
    closing: AtomicBool,
    metrics: Arc<Metrics>,
    floor_source: Mutex<Option<FloorSource>>,
    status: Mutex<WalStatus>,
}

/// A handle on the running log.
pub struct Wal {
    shared: Arc<Shared>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    records: u64,
    max_seq: Option<u64>,
}

fn fsync_name(f: Fsync) -> &'static str {
    match f {
        Fsync::Always => "always",
        Fsync::Batch => "batch",
        Fsync::Never => "never",
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn segment_id(p: &Path) -> Option<u64> {
    p.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()
}

/// `dir/cursor`: the floor and each sink's cursor.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Cursor {
    floor: u64,
    #[serde(default)]
    sinks: BTreeMap<String, u64>,
}

fn read_cursor(dir: &Path) -> Cursor {
    let path = dir.join("cursor");
    match fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable write-ahead log cursor: replaying every record (at least once)");
                Cursor::default()
            }
        },
        Err(_) => Cursor::default(),
    }
}

fn write_cursor(dir: &Path, c: &Cursor) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let body = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    fs::write(&tmp, body)?;
    fs::rename(&tmp, dir.join("cursor"))
}

/// Moves `bytes[valid..]` of a damaged segment aside to `NAME.corrupt` and cuts the segment
/// to its valid prefix (a segment with no valid prefix is renamed whole). Returns the path.
fn set_aside(path: &Path, bytes: &[u8], valid: usize) -> std::io::Result<PathBuf> {
    let mut aside = path.with_extension("wal.corrupt");
    let mut n = 1;
    while aside.exists() {
        aside = path.with_extension(format!("wal.corrupt.{n}"));
        n += 1;
    }
    if valid == 0 {
        fs::rename(path, &aside)?;
        return Ok(aside);
    }
    let mut f = File::create(&aside)?;
    f.write_all(&bytes[valid..])?;
    f.sync_data()?;
    let seg = fs::OpenOptions::new().write(true).open(path)?;
    seg.set_len(valid as u64)?;
    seg.sync_data()?;
    Ok(aside)
}

impl Wal {
    /// Opens the log in `cfg.dir`, replays every record at or above its cursor into `queue`
    /// (waiting for room; the pipeline must be running), sets aside damaged tails, and starts
    /// the committer on a thread of its own.
    pub async fn open(
        cfg: &DurableConfig,
        on_full: OnFull,
        queue: &Queue,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Wal>> {
        let (wal, c) = Wal::open_parts(cfg, on_full, queue, metrics).await?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let handle = std::thread::Builder::new()
            .name("outrigger-wal".into())
            .spawn(move || rt.block_on(c.run()))?;
        *wal.committer.lock() = Some(handle);
        Ok(wal)
    }

    /// [`Wal::open`] without starting the committer (tests run it on their own runtime).
    async fn open_parts(
        cfg: &DurableConfig,
        on_full: OnFull,
        queue: &Queue,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Arc<Wal>, Committer)> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create queue.durable.dir {}", dir.display()))?;
        let _ = fs::remove_file(dir.join("cursor.tmp"));
        let cursor = read_cursor(&dir);
        let mut paths: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .with_context(|| format!("cannot read queue.durable.dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| segment_id(&p).map(|id| (id, p)))
            .collect();
        paths.sort();
        let mut segments = VecDeque::new();
        let mut status = WalStatus {
            dir: dir.display().to_string(),
            floor: cursor.floor,
            sinks: cursor.sinks.clone(),
            ..WalStatus::default()
        };
        let mut max_seq: Option<u64> = None;
        let mut replayed = 0u64;
        for (id, path) in &paths {
            let bytes = fs::read(path).with_context(|| {
                format!("cannot read write-ahead log segment {}", path.display())
            })?;
            let SegmentScan {
                scan,
                set_aside_bytes: rest,
                intact_after: after,
            } = scan_segment(&bytes);
            if let Some(p) = scan.problem {
                let lost = if rest > 0 { 1 + after as u64 } else { 0 };
                metrics.wal_corrupt_records.inc_by(lost);
                metrics.wal_corrupt_bytes.inc_by(rest as u64);
                match set_aside(path, &bytes, scan.valid_len) {
                    Ok(aside) => {
                        tracing::warn!(
                            segment = %path.display(),
                            offset = p.at,
                            problem = p.kind.as_str(),
                            kept_records = scan.records.len(),
                            set_aside_bytes = rest,
                            intact_records_after = after,
                            moved_to = %aside.display(),
                            "write-ahead log segment damaged: its valid prefix is replayed, the rest is set aside"
                        );
                        status.set_aside.push(aside.display().to_string());
                    }
                    Err(e) => {
                        metrics.wal_errors.with_label_values(&["set_aside"]).inc();
                        tracing::error!(segment = %path.display(), error = %e, "cannot set aside the damaged tail of a write-ahead log segment; replaying its valid prefix");
                    }
                }
                if scan.valid_len == 0 {
                    continue;
                }
            }
            let mut batch = Vec::with_capacity(REPLAY_CHUNK);
            let now = std::time::Instant::now();
            let mut seg_max = None;
            for r in &scan.records {
                seg_max = Some(r.seq);
                if r.seq < cursor.floor {
                    continue;
                }
                match event::parse_owned(&bytes[r.payload.clone()], usize::MAX) {
                    Ok(Line::Event(mut e)) => {
                        e.seq = r.seq;
                        e.received = now;
                        batch.push(e);
                    }
                    _ => {
                        metrics.wal_corrupt_records.inc();
                        tracing::warn!(segment = %path.display(), seq = r.seq, "a write-ahead log record is not an event; skipped");
                    }
                }
                if batch.len() >= REPLAY_CHUNK {
                    replayed += batch.len() as u64;
                    metrics.wal_replayed.inc_by(batch.len() as u64);
                    queue.push_replayed(std::mem::take(&mut batch)).await;
                }
            }
            replayed += batch.len() as u64;
            metrics.wal_replayed.inc_by(batch.len() as u64);
            queue.push_replayed(batch).await;
            max_seq = max_seq.max(seg_max);
            segments.push_back(Segment {
                id: *id,
                path: path.clone(),
                bytes: scan.valid_len as u64,
                records: scan.records.len() as u64,
                max_seq: seg_max,
            });
        }
        let next_seq = cursor.floor.max(max_seq.map_or(0, |m| m + 1));
        queue.start_at(next_seq);
        if replayed > 0 || !status.set_aside.is_empty() {
            tracing::info!(
                events = replayed,
                segments = segments.len(),
                from_seq = cursor.floor,
                set_aside = status.set_aside.len(),
                "write-ahead log replayed: these events go first"
            );
        }
        status.replayed = replayed;
        let settings = Settings::of(cfg, on_full);
        let bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            committed: watch::Sender::new(Committed::default()),
            settings: Mutex::new(settings),
            bytes: AtomicU64::new(bytes),
            evict: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            metrics: metrics.clone(),
            floor_source: Mutex::new(None),
            status: Mutex::new(status),
        });
        let next_id = segments.back().map_or(1, |s| s.id + 1);
        let mut c = Committer::new(shared.clone(), segments, next_id, cursor.floor)?;
        c.publish();
        let wal = Arc::new(Wal {
            shared,
            committer: Mutex::new(None),
        });
        Ok((wal, c))
    }

    /// Where the log's floor comes from (the sinks' progress); until set, nothing is trimmed.
    pub fn set_floor_source(&self, f: FloorSource) {
        *self.shared.floor_source.lock() = Some(f);
    }

    /// New live settings (a reload); `dir` is not among them.
    pub fn reconfigure(&self, cfg: &DurableConfig, on_full: OnFull) {
        let s = Settings::of(cfg, on_full);
        *self.shared.settings.lock() = s;
        {
            // Shown at once: the committer republishes only at its next trim.
            let mut st = self.shared.status.lock();
            st.fsync = fsync_name(s.fsync);
            st.max_bytes = s.max_bytes;
        }
        self.shared.wake.notify_one();
    }

    /// The log as `/v1/status` shows it.
    pub fn status(&self) -> WalStatus {
        self.shared.status.lock().clone()
    }

    /// Queues `events` (numbered by `queue`) and appends their records; resolves once they
    /// are written and, by `fsync`, synced. See the module docs for `max_bytes`.
    pub async fn append(&self, queue: &Queue, mut events: Vec<Event>) -> Appended {
        let n = events.len();
        if n == 0 {
            return Appended::default();
        }
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.encoded_len() + 16).sum());
        let starts = segment::encode(&events, &mut buf);
        let s = *self.shared.settings.lock();
        let m = &self.shared.metrics;
        let (ticket, refused_log, pushed) = {
            let mut p = self.shared.pending.lock();
            // The log's bytes are counted under this lock, so concurrent appends cannot
            // overshoot `max_bytes` together.
            let used = self.shared.bytes.load(Ordering::Acquire);
            let room = s.max_bytes.saturating_sub(used) as usize;
            let mut take = n;
            if buf.len() > room {
                match s.on_full {
                    OnFull::DropNewest => {
                        take = starts.partition_point(|&st| st <= room).saturating_sub(1);
                    }
                    OnFull::DropOldest => {
                        self.shared.evict.store(true, Ordering::Release);
                        self.shared.wake.notify_one();
                    }
                }
            }
            let refused_log = n - take;
            events.truncate(take);
            let pushed = queue.push_seq(events);
            let from = pushed.skipped.min(take);
            let to = take - pushed.refused;
            if from >= to {
                (None, refused_log, pushed)
            } else {
                for (i, start) in starts.iter().enumerate().take(to).skip(from) {
                    segment::seal(&mut buf, *start, pushed.first + i as u64);
                }
                let bytes = &buf[starts[from]..starts[to]];
                p.buf.extend_from_slice(bytes);
                p.end += bytes.len() as u64;
                p.max_seq = Some(pushed.first + to as u64 - 1);
                p.records += (to - from) as u64;
                self.shared
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::AcqRel);
                (Some(p.end), refused_log, pushed)
            }
        };
        if refused_log > 0 {
            m.dropped(DropReason::QueueFull, refused_log as u64);
        }
        let mut out = Appended {
            refused: refused_log + pushed.refused,
            reason: (refused_log > 0).then_some(FULL),
            error: None,
        };
        let Some(ticket) = ticket else {
            return out;
        };
        self.shared.wake.notify_one();
        let mut rx = self.shared.committed.subscribe();
        let c = match rx.wait_for(|c| c.pos >= ticket).await {
            Ok(c) => c.clone(),
            Err(_) => {
                out.error = Some("write-ahead log closed".into());
                return out;
            }
        };
        if let Some((_, _, why)) = c
            .failed
            .iter()
            .find(|(from, to, _)| *from < ticket && ticket <= *to)
        {
            out.error = Some(format!("write-ahead log write failed: {why}"));
        }
        out
    }

    /// Writes what is pending, trims to the final floor, writes the cursor and stops the
    /// committer (after the pipeline and the sinks have drained).
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let handle = self.committer.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The committer: owns the segment files.
struct Committer {
    shared: Arc<Shared>,
    segments: VecDeque<Segment>,
    /// The current segment's file (the back of `segments`), opened on the first write.
    file: Option<File>,
    next_id: u64,
    floor: u64,
    cursors: BTreeMap<String, u64>,
    last_sync: Option<Instant>,
    last_trim: Instant,
    failures: VecDeque<(u64, u64, Arc<str>)>,
}

impl Committer {
    fn new(
        shared: Arc<Shared>,
        segments: VecDeque<Segment>,
        next_id: u64,
        floor: u64,
    ) -> std::io::Result<Committer> {
        let mut c = Committer {
            shared,
            segments,
            file: None,
            next_id,
            floor,
            cursors: BTreeMap::new(),
            last_sync: None,
            last_trim: Instant::now(),
            failures: VecDeque::new(),
        };
        c.roll()?;
        Ok(c)
    }

    /// Starts a new segment (the magic written and synced).
    fn roll(&mut self) -> std::io::Result<()> {
        let id = self.next_id;
        let path = segment_path(&self.shared.dir, id);
        let mut f = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        f.write_all(segment::MAGIC)?;
        if self.shared.settings.lock().fsync != Fsync::Never {
            f.sync_all()?;
            if let Ok(d) = File::open(&self.shared.dir) {
                let _ = d.sync_all(); // the new name, too
            }
        }
        self.next_id += 1;
        self.segments.push_back(Segment {
            id,
            path,
            bytes: segment::MAGIC.len() as u64,
            records: 0,
            max_seq: None,
        });
        self.shared
            .bytes
            .fetch_add(segment::MAGIC.len() as u64, Ordering::AcqRel);
        self.file = Some(f);
        Ok(())
    }

    async fn run(mut self) {
        loop {
            let has_data = !self.shared.pending.lock().buf.is_empty();
            let closing = self.shared.closing.load(Ordering::Acquire);
            if !has_data {
                if closing {
                    break;
                }
                let tick = self.last_trim + TRIM_EVERY;
                tokio::select! {
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(tick) => {}
                }
                self.maintain(false);
                continue;
            }
            let s = *self.shared.settings.lock();
            if s.fsync == Fsync::Batch
                && !closing
                && let Some(last) = self.last_sync
            {
                // Group commit: at most one sync per interval; what arrives meanwhile joins.
                tokio::time::sleep_until(last + s.commit_interval).await;
            }
            self.commit(s);
            self.maintain(false);
        }
        self.maintain(true);
        tracing::debug!("write-ahead log closed");
    }

    /// Writes (and syncs, by mode) everything pending, then answers its appends.
    fn commit(&mut self, s: Settings) {
        let (buf, end, max_seq, records) = {
            let mut p = self.shared.pending.lock();
            let buf = std::mem::take(&mut p.buf);
            let records = std::mem::take(&mut p.records);
            (buf, p.end, p.max_seq.take(), records)
        };
        let from = end - buf.len() as u64;
        let started = std::time::Instant::now();
        let result = self.write(&buf, s);
        match result {
            Ok(()) => {
                if s.fsync != Fsync::Never {
                    self.shared
                        .metrics
                        .wal_fsync_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                self.shared.metrics.wal_appended.inc_by(records);
                if let Some(seg) = self.segments.back_mut() {
                    seg.bytes += buf.len() as u64;
                    seg.records += records;
                    seg.max_seq = seg.max_seq.max(max_seq);
                }
            }
            Err((op, e)) => {
                self.shared
                    .metrics
                    .wal_errors
                    .with_label_values(&[op])
                    .inc();
                tracing::error!(op, error = %e, bytes = buf.len(), "write-ahead log write failed: those answers say so; a new segment is started");
                self.shared.status.lock().last_error = Some(format!("{op}: {e}"));
                // The failed bytes may be in the segment, whole or in part: it keeps its
                // records (counted as they were written, so it is trimmed like the others)
                // and the next write goes to a new one.
                if let Some(seg) = self.segments.back_mut() {
                    seg.max_seq = seg.max_seq.max(max_seq);
                }
                self.file = None;
                self.failures
                    .push_back((from, end, Arc::from(e.to_string())));
                while self.failures.len() > 64 {
                    self.failures.pop_front();
                }
            }
        }
        self.last_sync = Some(Instant::now());
        let failed = Arc::new(self.failures.clone());
        self.shared
            .committed
            .send_replace(Committed { pos: end, failed });
        // The buffer's capacity is reused by the next appends.
        let mut p = self.shared.pending.lock();
        if p.buf.is_empty() && p.buf.capacity() < buf.capacity() {
            let mut buf = buf;
            buf.clear();
            p.buf = buf;
        }
    }

    fn write(&mut self, buf: &[u8], s: Settings) -> Result<(), (&'static str, std::io::Error)> {
        let full = self
            .segments
            .back()
            .is_some_and(|seg| seg.bytes >= s.segment_bytes && seg.records > 0);
        if self.file.is_none() || full {
            self.roll().map_err(|e| ("roll", e))?;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(("roll", std::io::Error::other("no segment open")));
        };
        f.write_all(buf).map_err(|e| ("write", e))?;
        if s.fsync != Fsync::Never {
            f.sync_data().map_err(|e| ("fsync", e))?;
        }
        Ok(())
    }

    /// Trims to the floor (at most every [`TRIM_EVERY`], or now when `force`), evicts past
    /// `max_bytes` when asked, and publishes the gauges and status.
    fn maintain(&mut self, force: bool) {
        let evict = self.shared.evict.swap(false, Ordering::AcqRel);
        if !force && !evict && self.last_trim.elapsed() < TRIM_EVERY {
            return;
        }
        self.last_trim = Instant::now();
        let source = self.shared.floor_source.lock().clone();
        let mut moved = false;
        if let Some((floor, cursors)) = source.and_then(|f| f()) {
            if floor > self.floor {
                self.floor = floor;
                moved = true;
            }
            let cursors: BTreeMap<String, u64> = cursors.into_iter().collect();
            if cursors != self.cursors {
                self.cursors = cursors;
                moved = true;
            }
        }
        // Whole segments below the floor go; never the current one.
        while self.segments.len() > 1 && self.segments[0].max_seq.is_none_or(|m| m < self.floor) {
            if let Some(seg) = self.segments.pop_front() {
                self.remove(seg);
            }
        }
        if evict {
            self.evict();
            moved = true;
        }
        if moved || force {
            let c = Cursor {
                floor: self.floor,
                sinks: self.cursors.clone(),
            };
            if let Err(e) = write_cursor(&self.shared.dir, &c) {
                self.shared
                    .metrics
                    .wal_errors
                    .with_label_values(&["cursor"])
                    .inc();
                tracing::warn!(error = %e, "cannot write the write-ahead log cursor; a restart replays more (at least once)");
            }
        }
        self.publish();
    }

    /// `drop_oldest` past `max_bytes`: deletes the oldest segments until the log fits.
    fn evict(&mut self) {
        let s = *self.shared.settings.lock();
        let pending = self.shared.pending.lock().buf.len() as u64;
        let on_disk = |c: &Committer| c.segments.iter().map(|s| s.bytes).sum::<u64>();
        if on_disk(self) + pending > s.max_bytes
            && self.segments.len() == 1
            && self.segments[0].records > 0
        {
            // Only the current segment is left: start another so that it can go.
            if let Err(e) = self.roll() {
                tracing::error!(error = %e, "cannot start a write-ahead log segment");
                return;
            }
        }
        let mut evicted = 0u64;
        while on_disk(self) + pending > s.max_bytes && self.segments.len() > 1 {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            evicted += seg.records;
            if let Some(m) = seg.max_seq {
                self.floor = self.floor.max(m + 1);
            }
            self.remove(seg);
        }
        if evicted > 0 {
            self.shared.metrics.wal_evicted.inc_by(evicted);
            tracing::warn!(
                records = evicted,
                max_bytes = s.max_bytes,
                "write-ahead log full (on_full: drop_oldest): oldest segments deleted before delivery; those events no longer survive a crash"
            );
        }
    }

    fn remove(&mut self, seg: Segment) {
        self.shared.bytes.fetch_sub(seg.bytes, Ordering::AcqRel);
        if let Err(e) = fs::remove_file(&seg.path) {
            self.shared
                .metrics
                .wal_errors
                .with_label_values(&["trim"])
                .inc();
            tracing::warn!(segment = %seg.path.display(), error = %e, "cannot delete a trimmed write-ahead log segment");
        }
    }

    fn publish(&mut self) {
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let m = &self.shared.metrics;
        m.wal_bytes.set(bytes as i64);
        m.wal_segments.set(self.segments.len() as i64);
        let s = *self.shared.settings.lock();
        let mut st = self.shared.status.lock();
        st.fsync = fsync_name(s.fsync);
        st.segments = self.segments.len();
        st.bytes = bytes;
        st.max_bytes = s.max_bytes;
        st.floor = self.floor;
        st.sinks = self.cursors.clone();
    }
}

#[cfg(test)]
mod tests;
