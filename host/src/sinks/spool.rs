//! A sink's spool: batches that could not be delivered, kept on disk in order.
//!
//! In: batches a failing sink could not deliver (and, while anything is spooled, every later
//! batch, so that order holds). Out: the oldest batch again, for the next attempt, and its
//! removal once delivered. One file per batch under `{delivery.spool.dir}/{sink}/`, named by
//! sequence so a restart finds them in order and replays them first. Over `max_bytes` the oldest
//! files are dropped and counted as `sink`. `spool_bytes{sink}` follows the size. Holds no task.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Batch;
use crate::event::{self, Line};
use crate::metrics::{DropReason, Metrics};

struct Entry {
    path: PathBuf,
    bytes: u64,
    events: usize,
    upto: u64,
    floor: u64,
}

/// One sink's on-disk spool of batches waiting for a retry.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next: u64,
    label: String,
    metrics: Arc<Metrics>,
}

/// `{seq:020}-{upto}-{events}.ndjson`
fn parse_name(p: &Path) -> Option<(u64, u64, usize)> {
    let stem = p.file_name()?.to_str()?.strip_suffix(".ndjson")?;
    let mut it = stem.split('-');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

impl Spool {
    /// Opens (creating) the sink's spool directory and picks up what an earlier run left.
    pub fn open(
        root: &Path,
        label: &str,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Spool> {
        let dir = root.join(label);
        fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            match parse_name(&path) {
                Some((seq, _, events)) => {
                    let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    // Sequence numbers of this run restart at 0: spooled batches count as done.
                    found.push((
                        seq,
                        Entry {
                            path,
                            bytes,
                            events,
                            upto: 0,
                            floor: 0,
                        },
                    ));
                }
                None if path.extension().is_some_and(|e| e == "tmp") => {
                    let _ = fs::remove_file(&path); // a write cut short by a crash
                }
                None => {}
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        let next = found.last().map_or(0, |(s, _)| s + 1);
        let bytes = found.iter().map(|(_, e)| e.bytes).sum();
        let events: usize = found.iter().map(|(_, e)| e.events).sum();
        if events > 0 {
            tracing::info!(
                sink = label,
                events,
                bytes,
                "spool from an earlier run: delivering it first"
            );
        }
        let s = Spool {
            dir,
            max_bytes,
            entries: found.into_iter().map(|(_, e)| e).collect(),
            bytes,
            next,
            label: label.to_string(),
            metrics,
        };
        s.publish();
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn events(&self) -> usize {
        self.entries.iter().map(|e| e.events).sum()
    }

    fn publish(&self) {
        self.metrics
            .spool_bytes
            .with_label_values(&[&self.label])
            .set(self.bytes as i64);
    }

    /// Writes a batch at the back (atomically: a temp file renamed into place).
    pub fn push(&mut self, batch: &Batch) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.events.iter().map(|e| e.encoded_len()).sum());
        for e in &batch.events {
            e.write_native(&mut buf);
        }
        let name = format!(
            "{:020}-{}-{}.ndjson",
            self.next,
            batch.upto,
            batch.events.len()
        );
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)?;
        self.next += 1;
        self.bytes += buf.len() as u64;
        self.entries.push_back(Entry {
            path,
            bytes: buf.len() as u64,
            events: batch.events.len(),
            upto: batch.upto,
            floor: batch.floor,
        });
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                tracing::error!(sink = %self.label, events = old.events, "spool over max_bytes: oldest batch dropped");
                self.metrics.dropped(DropReason::Sink, old.events as u64);
                self.remove(old);
            }
        }
        self.publish();
        Ok(())
    }

    /// The oldest batch, read back. A file that cannot be read is dropped and counted.
    pub fn front(&mut self) -> Option<Batch> {
        loop {
            let e = self.entries.front()?;
            match fs::read(&e.path) {
                Ok(data) => {
                    let buf = Bytes::from(data);
                    let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    let now = Instant::now();
                    let mut events = Vec::with_capacity(e.events);
                    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        if let Ok(Line::Event(mut ev)) = event::parse_line(&buf, line, usize::MAX) {
                            ev.received = now;
                            events.push(ev);
                        }
                    }
                    return Some(Batch {
                        events,
                        upto: e.upto,
                        floor: e.floor,
                    });
                }
                Err(err) => {
                    tracing::error!(sink = %self.label, path = %e.path.display(), error = %err, "unreadable spool file dropped");
                    self.metrics.dropped(DropReason::Sink, e.events as u64);
                    if let Some(e) = self.entries.pop_front() {
                        self.remove(e);
                    }
                }
            }
        }
    }

    /// Removes the oldest batch (delivered, or refused for good).
    pub fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.remove(e);
        }
        self.publish();
    }

    fn remove(&mut self, e: Entry) {
        self.bytes = self.bytes.saturating_sub(e.bytes);
        if let Err(err) = fs::remove_file(&e.path) {
            tracing::warn!(path = %e.path.display(), error = %err, "could not remove spool file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_owned;

    fn batch(range: std::ops::Range<u64>) -> Batch {
        let events = range
            .clone()
            .map(
                |i| match parse_owned(format!(r#"{{"type":"t","data":{i}}}"#).as_bytes(), 1024) {
                    Ok(Line::Event(e)) => e,
                    _ => unreachable!(),
                },
            )
            .collect();
        Batch {
            events,
            upto: range.end,
            floor: range.end,
        }
    }

    #[test]
    fn keeps_order_survives_reopen_and_caps_size() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let mut s = Spool::open(dir.path(), "http", 1 << 20, m.clone()).unwrap();
        s.push(&batch(0..3)).unwrap();
        s.push(&batch(3..5)).unwrap();
        let first = s.front().unwrap();
        assert_eq!(
            first
                .events
                .iter()
                .map(|e| e.data_str())
                .collect::<Vec<_>>(),
            ["0", "1", "2"]
        );
        s.pop_front();
        drop(s);
        let mut s = Spool::open(dir.path(), "http", 1 << 20, m.clone()).unwrap();
        assert_eq!(s.events(), 2);
        assert_eq!(s.front().unwrap().events[0].data_str(), "3");

        let mut small = Spool::open(dir.path(), "tiny", 100, m.clone()).unwrap();
        small.push(&batch(0..3)).unwrap();
        small.push(&batch(3..6)).unwrap();
        assert_eq!(small.events(), 3, "oldest dropped to stay under max_bytes");
        assert_eq!(m.dropped_count(DropReason::Sink), 3);
    }
}
