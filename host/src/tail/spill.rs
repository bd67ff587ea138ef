//! Spill files for the tail sampler: open runs that do not fit in `sampling.tail.max_bytes`.
//!
//! In: the native NDJSON lines of one run's in-memory events, each group behind a
//! [`CHUNK_HEADER`] that says where the run's previous chunk is ([`chunk_header`]), appended
//! to the current segment file in `sampling.tail.spill.dir` (`tail-<pid>-<n>.seg`, append-only,
//! rolled over at a size) by [`SpillStore::write_many`]. Out: an [`Extent`] per chunk, which
//! the run folds into its [`Chain`]: the last chunk's place and the segments its chunks are in,
//! so a run spilled many times costs the same memory as a run spilled once; [`Chain::read`]
//! follows the headers back and gives the chunks in order when the run is decided. A segment
//! is shared by many runs and removed from disk when the last chain in it is dropped and it is
//! no longer written to (its `Drop` deletes the file), so a decided run frees its bytes
//! without compaction. The store refuses a write that would take its files past
//! `spill.max_bytes` ([`SpillError::Full`]) and reports I/O errors (a full or read-only disk)
//! as [`SpillError::Io`]; the caller then decides runs early instead. Spill files do not
//! survive the process: on open, segments left by a process that is gone are removed (and
//! logged). Blocking file I/O, on the pipeline worker's thread.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use smallvec::SmallVec;

/// Bytes before each chunk's lines: the previous chunk's segment (`u32`, `u32::MAX` for none),
/// length (`u32`) and offset (`u64`), little-endian.
pub const CHUNK_HEADER: usize = 16;
const NO_PREV: u32 = u32::MAX;

/// Segment numbers, unique in the process: a store made by a reload never reuses a file name
/// or a number that a run's chain may still refer to.
static NEXT_SEGMENT: AtomicU32 = AtomicU32::new(0);

/// Why a spill did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The files would grow past `spill.max_bytes`.
    #[error("spill is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("{0}")]
    Io(String),
}

/// One segment file. Deleted when the last reference goes (the store's and the extents').
pub struct Segment {
    no: u32,
    path: PathBuf,
    file: File,
    /// Bytes written so far (the file's length).
    len: AtomicU64,
    /// The store's count of bytes on disk, shared by every segment it made.
    disk: Arc<AtomicU64>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.disk
            .fetch_sub(self.len.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a tail spill segment");
        }
    }
}

/// One write of a run's events (a chunk): where it went.
pub struct Extent {
    seg: Arc<Segment>,
    offset: u64,
    len: u32,
}

impl Extent {
    /// Bytes of the chunk on disk, its header included.
    pub fn bytes(&self) -> u64 {
        self.len as u64
    }

    /// Reads the chunk back as written, header included.
    #[cfg(test)]
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len as usize];
        self.seg.file.read_exact_at(&mut buf, self.offset)?;
        Ok(buf)
    }
}

/// The header of a chunk that follows `chain`'s last one (or starts a chain).
pub fn chunk_header(chain: Option<&Chain>) -> [u8; CHUNK_HEADER] {
    let (seg, len, off) = match chain {
        Some(c) => (c.last_no, c.len, c.offset),
        None => (NO_PREV, 0, 0),
    };
    let mut h = [0u8; CHUNK_HEADER];
    h[0..4].copy_from_slice(&seg.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&off.to_le_bytes());
    h
}

/// A run's spilled chunks: the last one's place, and the segments that hold them (each once,
/// in order of writing); each chunk's header points at the one before. Holding the segments
/// keeps their files.
pub struct Chain {
    /// The first two inside (a chain spans few segments: no allocation of its own).
    segs: SmallVec<[Arc<Segment>; 2]>,
    offset: u64,
    len: u32,
    /// The last segment's number (as `segs.last()`'s, without reading it).
    last_no: u32,
}

impl Chain {
    /// Adds the chunk just written (whose header was [`chunk_header`] of `chain`).
    pub fn extend(chain: &mut Option<Chain>, ext: Extent) {
        match chain {
            Some(c) => {
                if c.last_no != ext.seg.no {
                    c.last_no = ext.seg.no;
                    // Exactly as many as there are (a chain spans few segments).
                    c.segs.reserve_exact(1);
                    c.segs.push(ext.seg);
                }
                c.offset = ext.offset;
                c.len = ext.len;
            }
            None => {
                *chain = Some(Chain {
                    last_no: ext.seg.no,
                    segs: smallvec::smallvec![ext.seg],
                    offset: ext.offset,
                    len: ext.len,
                })
            }
        }
    }

    /// Heap bytes the chain holds in memory.
    pub fn heap_bytes(&self) -> usize {
        if self.segs.spilled() {
            self.segs.capacity() * std::mem::size_of::<Arc<Segment>>()
        } else {
            0
        }
    }

    /// Reads the chunks back, oldest first, each as its lines (headers stripped). A chunk
    /// that cannot be read ends the walk: the chunks after it come back and the error says
    /// why the ones before did not.
    pub fn read(&self) -> (Vec<Bytes>, Option<std::io::Error>) {
        let mut parts = Vec::new();
        let mut at = self
            .segs
            .len()
            .checked_sub(1)
            .map(|i| (i, self.offset, self.len));
        let mut err = None;
        while let Some((i, off, len)) = at {
            let seg = &self.segs[i];
            let mut buf = vec![0u8; len as usize];
            if let Err(e) = seg.file.read_exact_at(&mut buf, off) {
                err = Some(e);
                break;
            }
            let Some((prev, lines)) = parse_header(&buf) else {
                err = Some(corrupt(&seg.path, off));
                break;
            };
            at = match prev {
                None => None,
                // The previous chunk is earlier in this segment, or in an earlier one of the
                // chain: every step goes back, so a damaged header cannot loop.
                Some((no, plen, poff)) if no == seg.no => {
                    if poff.saturating_add(plen as u64) > off {
                        err = Some(corrupt(&seg.path, off));
                        None
                    } else {
                        Some((i, poff, plen))
                    }
                }
                Some((no, plen, poff)) => match self.segs[..i].iter().rposition(|s| s.no == no) {
                    Some(j) => Some((j, poff, plen)),
                    None => {
                        err = Some(corrupt(&seg.path, off));
                        None
                    }
                },
            };
            let b = Bytes::from(buf);
            parts.push(b.slice(lines..));
        }
        parts.reverse();
        (parts, err)
    }
}

/// A chunk's previous chunk (segment, length, offset) and where its lines start.
#[allow(clippy::type_complexity)]
fn parse_header(buf: &[u8]) -> Option<(Option<(u32, u32, u64)>, usize)> {
    let h = buf.get(..CHUNK_HEADER)?;
    let seg = u32::from_le_bytes(h[0..4].try_into().ok()?);
    let len = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let off = u64::from_le_bytes(h[8..16].try_into().ok()?);
    if seg == NO_PREV {
        return Some((None, CHUNK_HEADER));
    }
    if (len as usize) < CHUNK_HEADER {
        return None;
    }
    Some((Some((seg, len, off)), CHUNK_HEADER))
}

fn corrupt(path: &Path, off: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: the chunk at {off} points nowhere", path.display()),
    )
}

/// Where spills go and how much they may take.
pub struct SpillStore {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    current: Option<Arc<Segment>>,
    disk: Arc<AtomicU64>,
}

/// Segment files are rolled over at this size, or at a sixteenth of the bound if less.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
const MIN_SEGMENT_BYTES: u64 = 1 << 20;

impl SpillStore {
    /// A store in `dir` (created on the first write) bounded by `max_bytes`. Segments that a
    /// process which has gone left behind are removed now.
    pub fn new(dir: &Path, max_bytes: u64) -> SpillStore {
        remove_stale(dir);
        SpillStore {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            current: None,
            disk: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes the bound (a reload); what is on disk stays.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
        self.segment_bytes = (max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
    }

    /// Bytes in segment files now (live and dead extents of segments still referenced).
    pub fn disk_bytes(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }

    /// Lets the current segment go when no extent is left in it (its file is removed).
    pub fn release_idle(&mut self) {
        if self
            .current
            .as_ref()
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            self.current = None;
        }
    }

    /// Appends `lines` and says where they went.
    pub fn write(&mut self, lines: &[u8]) -> Result<Extent, SpillError> {
        let len = u32::try_from(lines.len()).map_err(|_| SpillError::Full {
            used: self.disk_bytes(),
            max: self.max_bytes,
        })?;
        let mut v = self.write_many(lines, &[len])?;
        v.pop().ok_or_else(|| SpillError::Io("no extent".into()))
    }

    /// Appends the parts of several runs in one write: `lines` is their lines one after the
    /// other, `parts` each one's bytes. Gives one [`Extent`] per part, in order.
    pub fn write_many(&mut self, lines: &[u8], parts: &[u32]) -> Result<Vec<Extent>, SpillError> {
        let used = self.disk_bytes();
        if used + lines.len() as u64 > self.max_bytes {
            return Err(SpillError::Full {
                used,
                max: self.max_bytes,
            });
        }
        let roll = self.current.as_ref().is_none_or(|s| {
            s.len.load(Ordering::Relaxed) + lines.len() as u64 > self.segment_bytes
        });
        if roll {
            self.current = Some(Arc::new(self.open_segment()?));
        }
        let Some(seg) = self.current.clone() else {
            return Err(SpillError::Io("no segment".into()));
        };
        let offset = seg.len.load(Ordering::Relaxed);
        if let Err(e) = seg.file.write_all_at(lines, offset) {
            // What part of it landed is unknown: never append to this segment again.
            let on_disk = seg.file.metadata().map(|m| m.len()).unwrap_or(offset);
            let grew = on_disk.saturating_sub(offset);
            seg.len.fetch_add(grew, Ordering::Relaxed);
            self.disk.fetch_add(grew, Ordering::Relaxed);
            self.current = None;
            return Err(SpillError::Io(format!(
                "cannot write to {}: {e}",
                seg.path.display()
            )));
        }
        seg.len.fetch_add(lines.len() as u64, Ordering::Relaxed);
        self.disk.fetch_add(lines.len() as u64, Ordering::Relaxed);
        let mut at = offset;
        Ok(parts
            .iter()
            .map(|&len| {
                let e = Extent {
                    seg: seg.clone(),
                    offset: at,
                    len,
                };
                at += len as u64;
                e
            })
            .collect())
    }

    fn open_segment(&mut self) -> Result<Segment, SpillError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| SpillError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let mut no = NEXT_SEGMENT.fetch_add(1, Ordering::Relaxed);
        if no == NO_PREV {
            no = NEXT_SEGMENT.fetch_add(1, Ordering::Relaxed);
        }
        let path = self
            .dir
            .join(format!("tail-{}-{no}.seg", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| SpillError::Io(format!("cannot create {}: {e}", path.display())))?;
        Ok(Segment {
            no,
            path,
            file,
            len: AtomicU64::new(0),
            disk: self.disk.clone(),
        })
    }
}

/// Removes `tail-<pid>-<n>.seg` files of processes that are gone: their runs went with them.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix("tail-")
            .and_then(|r| r.strip_suffix(".seg"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(e.path()).is_ok() {
            files += 1;
        }
    }
    if files > 0 {
        tracing::warn!(
            dir = %dir.display(),
            files,
            bytes,
            "removed tail spill segments left by a daemon that did not shut down cleanly (the open runs in them were lost with it)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    }

    #[test]
    fn extents_read_back_and_segments_go_with_their_last_extent() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SpillStore::new(dir.path(), 1 << 30);
        let a = s.write(b"{\"type\":\"a\"}\n").unwrap();
        let b = s.write(b"{\"type\":\"b\"}\n{\"type\":\"c\"}\n").unwrap();
        assert_eq!(a.read().unwrap(), b"{\"type\":\"a\"}\n");
        assert_eq!(b.read().unwrap(), b"{\"type\":\"b\"}\n{\"type\":\"c\"}\n");
        assert_eq!(s.disk_bytes(), a.bytes() + b.bytes());
        assert_eq!(seg_files(dir.path()), 1);
        drop(a);
        // The store still writes to it, and `b` is in it.
        s.release_idle();
        assert_eq!(seg_files(dir.path()), 1);
        drop(b);
        s.release_idle();
        assert_eq!(seg_files(dir.path()), 0);
        assert_eq!(s.disk_bytes(), 0);
    }

    #[test]
    fn the_bound_is_kept_and_rolled_segments_are_removed_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SpillStore::new(dir.path(), 3 << 20);
        let big = vec![b'x'; 700 << 10];
        let first = s.write(&big).unwrap();
        let second = s.write(&big).unwrap(); // rolls over (segments of 1 MiB)
        assert_eq!(seg_files(dir.path()), 2);
        let _third = s.write(&big).unwrap();
        let _fourth = s.write(&big).unwrap();
        assert!(matches!(s.write(&big), Err(SpillError::Full { .. })));
        drop(first);
        assert_eq!(
            seg_files(dir.path()),
            3,
            "the first segment still holds `second`"
        );
        drop(second);
        assert_eq!(seg_files(dir.path()), 2);
        assert!(s.write(&big).is_ok(), "room again");
    }

    /// Writes `lines` as the next chunk of `chain`.
    fn append(s: &mut SpillStore, chain: &mut Option<Chain>, lines: &[u8]) {
        let mut buf = chunk_header(chain.as_ref()).to_vec();
        buf.extend_from_slice(lines);
        let ext = s.write(&buf).unwrap();
        Chain::extend(chain, ext);
    }

    fn joined(chain: &Chain) -> Vec<u8> {
        let (parts, err) = chain.read();
        assert!(err.is_none(), "{err:?}");
        parts.concat()
    }

    #[test]
    fn chains_read_back_in_order_across_segments_and_free_them_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SpillStore::new(dir.path(), 16 << 20); // segments of 1 MiB
        let (mut a, mut b) = (None, None);
        let (mut want_a, mut want_b) = (Vec::new(), Vec::new());
        for i in 0..12 {
            // Interleaved chunks; every fourth is large enough to roll the segment over.
            let size = if i % 4 == 3 { 600 << 10 } else { 10 };
            let la = format!("a{i}:{}\n", "x".repeat(size)).into_bytes();
            let lb = format!("b{i}\n").into_bytes();
            append(&mut s, &mut a, &la);
            append(&mut s, &mut b, &lb);
            want_a.extend_from_slice(&la);
            want_b.extend_from_slice(&lb);
        }
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.segs.len() > 2, "the chain spans segments");
        assert_eq!(a.segs.len(), b.segs.len(), "each segment once per chain");
        assert_eq!(joined(&a), want_a);
        assert_eq!(joined(&b), want_b);
        let files = seg_files(dir.path());
        assert!(files > 2);
        drop(a);
        s.release_idle();
        assert_eq!(seg_files(dir.path()), files, "b still has a chunk in each");
        drop(b);
        s.release_idle();
        assert_eq!(seg_files(dir.path()), 0);
        assert_eq!(s.disk_bytes(), 0);
    }

    #[test]
    fn a_damaged_chain_ends_with_an_error_instead_of_looping() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SpillStore::new(dir.path(), 1 << 30);
        let mut c = None;
        append(&mut s, &mut c, b"one\n");
        append(&mut s, &mut c, b"two\n");
        append(&mut s, &mut c, b"three\n");
        let c = c.unwrap();
        // The last chunk's header points at itself.
        let seg = c.segs.last().unwrap();
        let mut h = [0u8; CHUNK_HEADER];
        h[0..4].copy_from_slice(&seg.no.to_le_bytes());
        h[4..8].copy_from_slice(&c.len.to_le_bytes());
        h[8..16].copy_from_slice(&c.offset.to_le_bytes());
        seg.file.write_all_at(&h, c.offset).unwrap();
        let (parts, err) = c.read();
        assert!(err.is_some());
        assert_eq!(parts.concat(), b"three\n", "what was read comes back");
    }

    #[test]
    fn an_unwritable_dir_is_an_error_not_a_panic() {
        let mut s = SpillStore::new(Path::new("/proc/outrigger-no-such/dir"), 1 << 30);
        assert!(matches!(s.write(b"x\n"), Err(SpillError::Io(_))));
    }

    #[test]
    fn segments_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Beyond pid_max: no live process has it.
        std::fs::write(dir.path().join("tail-999999999-0.seg"), b"old").unwrap();
        std::fs::write(dir.path().join("other.txt"), b"keep").unwrap();
        let _s = SpillStore::new(dir.path(), 1 << 30);
        assert!(!dir.path().join("tail-999999999-0.seg").exists());
        assert!(dir.path().join("other.txt").exists());
    }
}
