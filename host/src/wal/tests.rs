//! Unit tests of the write-ahead log: append and read back, roll, trim, cursor, group commit
//! (under paused time), full log, and damaged segments on start.

use super::*;
use crate::config::{Dur, Size};
use crate::event::parse_owned;

fn ev(i: usize) -> Event {
    let line = format!(
        r#"{{"type":"t","data":{{"n":{i},"pad":"{}"}}}}"#,
        "x".repeat(40)
    );
    match parse_owned(line.as_bytes(), 1 << 20) {
        Ok(Line::Event(mut e)) => {
            e.id = 1000 + i as u128;
            e
        }
        _ => unreachable!(),
    }
}

fn cfg(dir: &Path, fsync: Fsync) -> DurableConfig {
    DurableConfig {
        dir: dir.to_path_buf(),
        max_bytes: Size(64 << 20),
        fsync,
        segment_bytes: Some(Size(4096)),
        commit_interval: Dur(Duration::from_millis(5)),
    }
}

struct Rig {
    wal: Arc<Wal>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    committer: tokio::task::JoinHandle<()>,
}

/// Opens the log with its committer on the test's runtime (so paused time applies to it).
async fn open(c: &DurableConfig, on_full: OnFull) -> Rig {
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(100_000, on_full, metrics.clone()));
    let (wal, committer) = Wal::open_parts(c, on_full, &queue, metrics.clone())
        .await
        .unwrap();
    Rig {
        wal,
        queue,
        metrics,
        committer: tokio::spawn(committer.run()),
    }
}

impl Rig {
    async fn close(self) -> (Arc<Queue>, Arc<Metrics>) {
        self.wal.close().await;
        self.committer.await.unwrap();
        (self.queue, self.metrics)
    }

    /// Everything queued so far: (data, id, seq).
    fn drain(&self) -> Vec<(String, u128, u64)> {
        let mut out = Vec::new();
        while let Some(c) = self.queue.try_pop(usize::MAX) {
            out.extend(
                c.events
                    .into_iter()
                    .map(|e| (e.data_str().to_string(), e.id, e.seq)),
            );
        }
        out
    }
}

fn syncs(m: &Metrics) -> u64 {
    m.wal_fsync_seconds.get_sample_count()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| segment_id(p).is_some())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn appended_events_are_replayed_with_their_ids_and_the_sequence_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Batch);
    let r = open(&c, OnFull::DropOldest).await;
    for i in 0..3 {
        let a = r.wal.append(&r.queue, vec![ev(2 * i), ev(2 * i + 1)]).await;
        assert_eq!(a.refused, 0);
        assert!(a.error.is_none());
    }
    let first = r.drain();
    assert_eq!(first.len(), 6);
    r.close().await;

    let r = open(&c, OnFull::DropOldest).await;
    let again = r.drain();
    assert_eq!(again, first, "same data, ids and sequence numbers");
    assert_eq!(r.metrics.wal_replayed.get(), 6);
    // New events continue the sequence.
    r.wal.append(&r.queue, vec![ev(6)]).await;
    assert_eq!(r.drain()[0].2, 6);
    r.close().await;
}

#[tokio::test]
async fn segments_roll_and_are_trimmed_below_the_floor_which_persists() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Never);
    let r = open(&c, OnFull::DropOldest).await;
    for i in 0..200 {
        r.wal.append(&r.queue, vec![ev(i)]).await;
    }
    r.drain();
    let before = segments(dir.path()).len();
    assert!(before > 3, "4 KiB segments roll: {before}");
    let floor = Arc::new(AtomicU64::new(0));
    let f = floor.clone();
    r.wal.set_floor_source(Arc::new(move || {
        Some((f.load(Ordering::Relaxed), vec![("file".to_string(), 150)]))
    }));
    floor.store(150, Ordering::Relaxed);
    tokio::time::sleep(TRIM_EVERY * 3).await;
    let after = segments(dir.path()).len();
    assert!(after < before, "{after} < {before}");
    let st = r.wal.status();
    assert_eq!(st.floor, 150);
    assert_eq!(st.sinks["file"], 150);
    r.close().await;

    // A restart replays only what is at or above the cursor.
    let r = open(&c, OnFull::DropOldest).await;
    let back = r.drain();
    assert_eq!(back.len(), 50);
    assert_eq!(back[0].2, 150);
    assert_eq!(r.metrics.wal_replayed.get(), 50);
    r.close().await;
}

#[tokio::test(start_paused = true)]
async fn batch_mode_shares_one_sync_between_the_answers_of_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Batch);
    let r = open(&c, OnFull::DropOldest).await;
    // After a quiet spell the first append is synced at once.
    let t0 = Instant::now();
    r.wal.append(&r.queue, vec![ev(0)]).await;
    assert_eq!(syncs(&r.metrics), 1);
    assert!(t0.elapsed() < Duration::from_millis(1));
    // Twenty appends at once: they wait for the interval and share the next sync.
    let t1 = Instant::now();
    let mut waiting = Vec::new();
    for i in 1..=20 {
        let (w, q) = (r.wal.clone(), r.queue.clone());
        waiting.push(tokio::spawn(async move { w.append(&q, vec![ev(i)]).await }));
    }
    for w in waiting {
        assert!(w.await.unwrap().error.is_none());
    }
    assert_eq!(syncs(&r.metrics), 2);
    let waited = t1.elapsed();
    assert!(
        waited >= Duration::from_millis(4) && waited <= Duration::from_millis(6),
        "{waited:?}"
    );
    assert_eq!(r.metrics.wal_appended.get(), 21);
    r.close().await;
}

#[tokio::test(start_paused = true)]
async fn always_mode_syncs_before_each_answer_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Always);
    let r = open(&c, OnFull::DropOldest).await;
    let t0 = Instant::now();
    for i in 0..5 {
        r.wal.append(&r.queue, vec![ev(i)]).await;
        assert_eq!(syncs(&r.metrics), i as u64 + 1);
    }
    assert!(t0.elapsed() < Duration::from_millis(1), "no group wait");
    // Never: written, not synced.
    r.close().await;
    let dir = tempfile::tempdir().unwrap();
    let r = open(&cfg(dir.path(), Fsync::Never), OnFull::DropOldest).await;
    r.wal.append(&r.queue, vec![ev(0)]).await;
    assert_eq!(syncs(&r.metrics), 0);
    assert_eq!(r.metrics.wal_appended.get(), 1);
    r.close().await;
}

#[tokio::test]
async fn a_full_log_refuses_new_events_with_drop_newest_and_evicts_with_drop_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), Fsync::Never);
    c.max_bytes = Size(4096);
    c.segment_bytes = Some(Size(1024));
    let r = open(&c, OnFull::DropNewest).await;
    let mut refused = 0;
    for i in 0..100 {
        let a = r.wal.append(&r.queue, vec![ev(i)]).await;
        if a.refused > 0 {
            assert_eq!(a.reason, Some(FULL));
            refused += 1;
        }
    }
    assert!(refused > 50, "{refused}");
    assert_eq!(
        r.metrics.dropped_count(DropReason::QueueFull),
        refused as u64
    );
    assert_eq!(r.drain().len(), 100 - refused);
    r.close().await;

    let dir = tempfile::tempdir().unwrap();
    c.dir = dir.path().to_path_buf();
    let r = open(&c, OnFull::DropOldest).await;
    for i in 0..100 {
        let a = r.wal.append(&r.queue, vec![ev(i)]).await;
        assert_eq!(a.refused, 0);
    }
    tokio::time::sleep(TRIM_EVERY * 2).await;
    assert!(r.metrics.wal_evicted.get() > 0);
    assert!(r.wal.status().bytes <= 4096 + 1024, "{:?}", r.wal.status());
    assert_eq!(r.drain().len(), 100, "evicted events still flow");
    r.close().await;
}

/// Writes `n` events in one segment and returns its path and the scan of it.
async fn one_segment(dir: &Path, n: usize) -> (PathBuf, segment::Scan) {
    let mut c = cfg(dir, Fsync::Never);
    c.segment_bytes = Some(Size(1 << 20));
    let r = open(&c, OnFull::DropOldest).await;
    r.wal.append(&r.queue, (0..n).map(ev).collect()).await;
    r.close().await;
    let seg = segments(dir)
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().len() > 8)
        .unwrap();
    let scan = segment::scan(&fs::read(&seg).unwrap());
    assert_eq!(scan.records.len(), n);
    (seg, scan)
}

#[tokio::test]
async fn a_truncated_tail_is_set_aside_and_the_prefix_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, scan) = one_segment(dir.path(), 10).await;
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let r = open(&cfg(dir.path(), Fsync::Never), OnFull::DropOldest).await;
    assert_eq!(r.drain().len(), 9);
    assert_eq!(r.metrics.wal_replayed.get(), 9);
    assert_eq!(r.metrics.wal_corrupt_records.get(), 1);
    let st = r.wal.status();
    assert_eq!(st.set_aside.len(), 1);
    assert!(st.set_aside[0].ends_with(".wal.corrupt"));
    assert_eq!(
        fs::metadata(&seg).unwrap().len() as usize,
        scan.records[8].payload.end,
        "the segment keeps its valid prefix"
    );
    r.close().await;
}

#[tokio::test]
async fn a_flipped_byte_keeps_the_records_before_it_and_sets_the_rest_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, scan) = one_segment(dir.path(), 10).await;
    let mut bytes = fs::read(&seg).unwrap();
    bytes[scan.records[3].payload.start + 5] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let r = open(&cfg(dir.path(), Fsync::Never), OnFull::DropOldest).await;
    let back = r.drain();
    assert_eq!(back.len(), 3, "records 0, 1 and 2");
    // The damaged record and the six intact ones a resync finds after it.
    assert_eq!(r.metrics.wal_corrupt_records.get(), 7);
    let aside = fs::read(&r.wal.status().set_aside[0]).unwrap();
    assert_eq!(aside.len(), bytes.len() - scan.records[2].payload.end);
    r.close().await;
    // A segment that is not one at all is moved aside whole, and the daemon starts.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("00000000000000000001.wal"),
        b"garbage!garbage",
    )
    .unwrap();
    let r = open(&cfg(dir.path(), Fsync::Never), OnFull::DropOldest).await;
    assert!(r.drain().is_empty());
    assert_eq!(r.wal.status().set_aside.len(), 1);
    r.close().await;
}

/// The bytes of a segment the log itself wrote, with `n` records.
async fn written_segment(n: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = one_segment(dir.path(), n).await;
    fs::read(seg).unwrap()
}

#[tokio::test]
async fn scan_segment_reads_what_the_log_wrote() {
    let bytes = written_segment(5).await;
    let s = scan_segment(&bytes);
    assert_eq!(s.scan.problem, None);
    assert_eq!(s.scan.valid_len, bytes.len());
    assert_eq!((s.set_aside_bytes, s.intact_after), (0, 0));
    let seqs: Vec<u64> = s.scan.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    for (i, r) in s.scan.records.iter().enumerate() {
        let Ok(Line::Event(e)) = parse_owned(&bytes[r.payload.clone()], usize::MAX) else {
            panic!("record {i} is a native line");
        };
        assert_eq!(e.id, 1000 + i as u128, "the id survives");
    }
}

#[tokio::test]
async fn scan_segment_on_truncated_and_empty_input() {
    let bytes = written_segment(4).await;
    let whole = scan_segment(&bytes).scan;
    // Zero length, and cut inside the magic: no records, nothing valid, a truncation.
    for cut in [0, 3, 7] {
        let s = scan_segment(&bytes[..cut]);
        assert!(s.scan.records.is_empty());
        assert_eq!(s.scan.valid_len, 0);
        assert_eq!(s.set_aside_bytes, cut);
        assert_eq!(s.scan.problem.unwrap().kind, ProblemKind::Truncated);
    }
    // The magic alone is an empty, valid segment.
    let s = scan_segment(&bytes[..8]);
    assert_eq!(
        (s.scan.records.len(), s.scan.valid_len, s.scan.problem),
        (0, 8, None)
    );
    // Cut inside the last record's header and inside its payload.
    let last = &whole.records[3];
    for cut in [
        last.payload.start - 10,
        last.payload.start + 1,
        bytes.len() - 1,
    ] {
        let s = scan_segment(&bytes[..cut]);
        assert_eq!(s.scan.records.len(), 3, "cut at {cut}");
        assert_eq!(s.scan.valid_len, whole.records[2].payload.end);
        assert_eq!(s.set_aside_bytes, cut - s.scan.valid_len);
        assert_eq!(s.scan.problem.unwrap().kind, ProblemKind::Truncated);
        assert_eq!(s.intact_after, 0);
    }
}

#[tokio::test]
async fn scan_segment_on_flipped_bytes() {
    let bytes = written_segment(6).await;
    let whole = scan_segment(&bytes).scan;
    // A flipped byte in the payload, the checksum, the sequence of record 2: records 0 and 1
    // are kept, and the resync finds records 3, 4 and 5 in what is set aside.
    let r2 = &whole.records[2];
    for at in [
        r2.payload.start + 2,
        r2.payload.start - 10,
        r2.payload.start - 4,
    ] {
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        let s = scan_segment(&b);
        assert_eq!(s.scan.records, whole.records[..2], "flip at {at}");
        let p = s.scan.problem.unwrap();
        assert_eq!(
            (p.kind, p.at),
            (ProblemKind::Checksum, whole.records[1].payload.end)
        );
        assert_eq!(s.set_aside_bytes, b.len() - p.at);
        assert_eq!(s.intact_after, 3);
    }
    // A bad magic: not a segment; everything is set aside.
    let mut b = bytes.clone();
    b[2] ^= 1;
    let s = scan_segment(&b);
    assert_eq!(s.scan.problem.unwrap().kind, ProblemKind::BadMagic);
    assert_eq!((s.scan.valid_len, s.set_aside_bytes), (0, b.len()));
    // Every single-byte change and every prefix: no panic, and the valid prefix is a prefix.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] = b[i].wrapping_add(0x5b);
        let s = scan_segment(&b);
        assert!(s.scan.valid_len + s.set_aside_bytes == b.len());
        assert!(
            s.scan
                .records
                .iter()
                .all(|r| r.payload.end <= s.scan.valid_len)
        );
        let p = scan_segment(&bytes[..i]);
        assert!(p.scan.valid_len <= i);
    }
}

#[test]
fn scan_segment_on_huge_length_fields() {
    let header = |len: u32| {
        let mut b = segment::MAGIC.to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&[0; 12]);
        b
    };
    // Over MAX_RECORD: corruption, not an allocation or a wait for more bytes.
    for len in [u32::MAX, segment::MAX_RECORD as u32 + 1] {
        let s = scan_segment(&header(len));
        assert_eq!(s.scan.problem.unwrap().kind, ProblemKind::Length);
        assert_eq!((s.scan.valid_len, s.set_aside_bytes), (8, 16));
    }
    // Within MAX_RECORD but past the end of the bytes: a truncated record.
    let mut b = header(segment::MAX_RECORD as u32);
    b.extend_from_slice(&[7; 100]);
    let s = scan_segment(&b);
    assert_eq!(s.scan.problem.unwrap().kind, ProblemKind::Truncated);
    assert_eq!(s.intact_after, 0);
    // A long run of garbage costs the resync a bounded time and finds nothing.
    let mut g = segment::MAGIC.to_vec();
    g.extend((0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let s = scan_segment(&g);
    assert!(s.scan.records.is_empty());
    assert_eq!(s.set_aside_bytes, 1 << 20);
}
