//! The write-ahead log's on-disk format: segment files of checksummed, length-prefixed records.
//!
//! In: events to encode ([`encode`]) and, on start, the bytes of a segment file ([`scan`]).
//! Out: record bytes to append, and the records a segment holds with the length of its valid
//! prefix and, when it has one, the first problem found (a torn or corrupt tail). Pure
//! functions over bytes, with no I/O and no task: [`super::scan_segment`] (the replay's reader
//! and the fuzz target's entry point) is [`scan`] plus [`resync_count`], and neither panics,
//! whatever it is given.
//!
//! A segment starts with the 8-byte [`MAGIC`]; then records, each
//! `len: u32 LE · crc: u32 LE · seq: u64 LE · payload[len]`, where `payload` is the event's
//! native NDJSON line without its newline (with its `"id"`, so a replayed event keeps it) and
//! `crc` is CRC-32 (ISO-HDLC) of the 8 `seq` bytes followed by the payload. A record longer
//! than [`MAX_RECORD`] is taken as corruption.

use std::ops::Range;

use crate::event::Event;

/// The first bytes of every segment file (format version 1).
pub const MAGIC: &[u8; 8] = b"OUTRWAL1";
/// Bytes before a record's payload.
pub const HEADER: usize = 16;
/// The longest payload a record may have; a longer length field is corruption.
pub const MAX_RECORD: usize = 256 << 20;

/// One record found in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The event's place in the queue's sequence.
    pub seq: u64,
    /// Where the payload (a native line) lies in the scanned bytes.
    pub payload: Range<usize>,
}

/// What is wrong at the end of a segment's valid prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The file does not start with [`MAGIC`] (or is shorter than it).
    BadMagic,
    /// The bytes end inside a record header or payload (a write cut short).
    Truncated,
    /// A length over [`MAX_RECORD`].
    Length,
    /// The checksum does not match: a flipped byte, or garbage.
    Checksum,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::BadMagic => "not a segment (bad magic)",
            ProblemKind::Truncated => "truncated record",
            ProblemKind::Length => "impossible record length",
            ProblemKind::Checksum => "checksum mismatch",
        }
    }
}

/// The first problem in a segment: what, and at which byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub at: usize,
}

/// What [`scan`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The records of the valid prefix, in order.
    pub records: Vec<Record>,
    /// Bytes of the valid prefix (the magic and whole, checked records).
    pub valid_len: usize,
    /// Why the scan stopped before the end, if it did.
    pub problem: Option<Problem>,
}

/// Reads a segment's bytes: every intact record up to the first problem.
pub fn scan(bytes: &[u8]) -> Scan {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Scan {
            records: Vec::new(),
            valid_len: 0,
            problem: Some(Problem {
                kind: if MAGIC.starts_with(bytes) {
                    ProblemKind::Truncated
                } else {
                    ProblemKind::BadMagic
                },
                at: 0,
            }),
        };
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        match check(bytes, at) {
            Ok(r) => {
                at = r.payload.end;
                records.push(r);
            }
            Err(kind) => {
                return Scan {
                    records,
                    valid_len: at,
                    problem: Some(Problem { kind, at }),
                };
            }
        }
    }
    Scan {
        records,
        valid_len: at,
        problem: None,
    }
}

/// The record at `at`, checked.
fn check(bytes: &[u8], at: usize) -> Result<Record, ProblemKind> {
    let head = bytes
        .get(at..at.saturating_add(HEADER))
        .ok_or(ProblemKind::Truncated)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let seq_bytes: [u8; 8] = [
        head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
    ];
    if len > MAX_RECORD {
        return Err(ProblemKind::Length);
    }
    let start = at + HEADER;
    let payload = bytes
        .get(start..start + len)
        .ok_or(ProblemKind::Truncated)?;
    if checksum(&seq_bytes, payload) != crc {
        return Err(ProblemKind::Checksum);
    }
    Ok(Record {
        seq: u64::from_le_bytes(seq_bytes),
        payload: start..start + len,
    })
}

fn checksum(seq: &[u8; 8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq);
    h.update(payload);
    h.finalize()
}

/// Intact records after a problem, found by looking for a valid record at every later offset
/// (and reading on from each one found). Used to say how much a damaged tail held; at most
/// `budget` payload bytes are checksummed in the search, so a large garbage tail costs a
/// bounded time (the count is then a lower bound).
pub fn resync_count(bytes: &[u8], from: usize, budget: usize) -> usize {
    let mut found = 0;
    let mut spent = 0usize;
    let mut at = from.saturating_add(1);
    while at + HEADER <= bytes.len() && spent < budget {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if len > MAX_RECORD || at + HEADER + len > bytes.len() {
            at += 1;
            continue;
        }
        spent += len;
        match check(bytes, at) {
            Ok(r) => {
                found += 1;
                at = r.payload.end;
            }
            Err(_) => at += 1,
        }
    }
    found
}

/// Appends one record per event to `out`, each with a sequence of 0 and no checksum yet
/// ([`seal`] fills both once the queue has numbered them); returns where each record starts.
/// `out` may already hold bytes.
pub fn encode(events: &[Event], out: &mut Vec<u8>) -> Vec<usize> {
    let mut starts = Vec::with_capacity(events.len() + 1);
    for e in events {
        let start = out.len();
        starts.push(start);
        out.extend_from_slice(&[0u8; HEADER]);
        e.write_native(out);
        out.pop(); // the newline
        let len = (out.len() - start - HEADER) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
    starts.push(out.len());
    starts
}

/// Gives the record at `start` of `buf` its sequence number and checksum.
pub fn seal(buf: &mut [u8], start: usize, seq: u64) {
    let len =
        u32::from_le_bytes([buf[start], buf[start + 1], buf[start + 2], buf[start + 3]]) as usize;
    let seq_bytes = seq.to_le_bytes();
    buf[start + 8..start + HEADER].copy_from_slice(&seq_bytes);
    let payload = &buf[start + HEADER..start + HEADER + len];
    let crc = checksum(&seq_bytes, payload);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Line, parse_owned};

    fn ev(i: usize) -> Event {
        let line = format!(r#"{{"type":"t","id":"{:032x}","data":{{"n":{i}}}}}"#, i + 1);
        match parse_owned(line.as_bytes(), 1 << 20) {
            Ok(Line::Event(e)) => e,
            _ => unreachable!(),
        }
    }

    fn segment(n: usize) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        let events: Vec<Event> = (0..n).map(ev).collect();
        let starts = encode(&events, &mut buf);
        for (i, s) in starts[..n].iter().enumerate() {
            seal(&mut buf, *s, 100 + i as u64);
        }
        buf
    }

    #[test]
    fn records_read_back_with_their_sequence_and_id() {
        let buf = segment(3);
        let s = scan(&buf);
        assert_eq!(s.problem, None);
        assert_eq!(s.valid_len, buf.len());
        let seqs: Vec<u64> = s.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [100, 101, 102]);
        let line = &buf[s.records[1].payload.clone()];
        let Ok(Line::Event(e)) = parse_owned(line, usize::MAX) else {
            panic!("payload is a native line")
        };
        assert_eq!(e.id, 2);
        assert_eq!(e.data_str(), r#"{"n":1}"#);
    }

    #[test]
    fn a_truncated_tail_keeps_the_prefix() {
        let buf = segment(3);
        let whole = scan(&buf);
        for cut in [buf.len() - 1, whole.records[2].payload.start - 3] {
            let s = scan(&buf[..cut]);
            assert_eq!(s.records.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_len, whole.records[1].payload.end);
            assert_eq!(s.problem.unwrap().kind, ProblemKind::Truncated);
        }
        assert_eq!(
            scan(&buf[..5]).problem.unwrap().kind,
            ProblemKind::Truncated
        );
        assert_eq!(scan(b"").valid_len, 0);
    }

    #[test]
    fn a_flipped_byte_stops_the_scan_and_resync_finds_the_rest() {
        let mut buf = segment(5);
        let whole = scan(&buf);
        let mid = whole.records[2].payload.start + 3;
        buf[mid] ^= 0x20;
        let s = scan(&buf);
        assert_eq!(s.records.len(), 2);
        let p = s.problem.unwrap();
        assert_eq!(p.kind, ProblemKind::Checksum);
        assert_eq!(p.at, whole.records[1].payload.end);
        assert_eq!(resync_count(&buf, p.at, 1 << 20), 2);
        // A bad magic is not a segment at all.
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert_eq!(scan(&bad).problem.unwrap().kind, ProblemKind::BadMagic);
    }

    #[test]
    fn scan_survives_any_bytes() {
        // A cheap stand-in for the fuzz target: every prefix and single-byte change.
        let buf = segment(3);
        for cut in 0..buf.len() {
            let s = scan(&buf[..cut]);
            assert!(s.valid_len <= cut);
        }
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] = b[i].wrapping_add(97);
            let s = scan(&b);
            assert!(s.valid_len <= b.len());
            resync_count(&b, s.valid_len, 1 << 16);
        }
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        assert_eq!(scan(&huge).problem.unwrap().kind, ProblemKind::Length);
    }
}
