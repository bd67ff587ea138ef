//! Spill files for the tail sampler: open runs that do not fit in `sampling.tail.max_bytes`.
//!
//! In: the native NDJSON lines of one run's in-memory events ([`SpillStore::write`]), appended
//! to the current segment file in `sampling.tail.spill.dir` (`tail-<pid>-<n>.seg`, append-only,
//! rolled over at a size). Out: an [`Extent`] that says where they are; [`Extent::read`] reads
//! them back in order when the run is decided. A segment is shared by many runs and removed
//! from disk when the last extent in it is dropped and it is no longer written to (its `Drop`
//! deletes the file), so a decided run frees its bytes without compaction. The store refuses a
//! write that would take its files past `spill.max_bytes` ([`SpillError::Full`]) and reports
//! I/O errors (a full or read-only disk) as [`SpillError::Io`]; the caller then decides runs
//! early instead. Spill files do not survive the process: on open, segments left by a process
//! that is gone are removed (and logged). Blocking file I/O, on the pipeline worker's thread.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A run's events written in one spill: where they are and how many.
pub struct Extent {
    seg: Arc<Segment>,
    offset: u64,
    len: u32,
    /// Events in it.
    pub count: u32,
}

impl Extent {
    /// Bytes of the extent on disk.
    pub fn bytes(&self) -> u64 {
        self.len as u64
    }

    /// Reads the extent back: the lines as they were written.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len as usize];
        self.seg.file.read_exact_at(&mut buf, self.offset)?;
        Ok(buf)
    }
}

/// Where spills go and how much they may take.
pub struct SpillStore {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    current: Option<Arc<Segment>>,
    next: u64,
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
            next: 0,
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

    /// Appends `lines` (`count` events) and says where they went.
    pub fn write(&mut self, lines: &[u8], count: u32) -> Result<Extent, SpillError> {
        let len = u32::try_from(lines.len()).map_err(|_| SpillError::Full {
            used: self.disk_bytes(),
            max: self.max_bytes,
        })?;
        let mut v = self.write_many(lines, &[(len, count)])?;
        v.pop().ok_or_else(|| SpillError::Io("no extent".into()))
    }

    /// Appends the parts of several runs in one write: `lines` is their lines one after the
    /// other, `parts` each one's (bytes, events). Gives one [`Extent`] per part, in order.
    pub fn write_many(
        &mut self,
        lines: &[u8],
        parts: &[(u32, u32)],
    ) -> Result<Vec<Extent>, SpillError> {
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
            .map(|&(len, count)| {
                let e = Extent {
                    seg: seg.clone(),
                    offset: at,
                    len,
                    count,
                };
                at += len as u64;
                e
            })
            .collect())
    }

    fn open_segment(&mut self) -> Result<Segment, SpillError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| SpillError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let path = self
            .dir
            .join(format!("tail-{}-{}.seg", std::process::id(), self.next));
        self.next += 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| SpillError::Io(format!("cannot create {}: {e}", path.display())))?;
        Ok(Segment {
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
        let a = s.write(b"{\"type\":\"a\"}\n", 1).unwrap();
        let b = s.write(b"{\"type\":\"b\"}\n{\"type\":\"c\"}\n", 2).unwrap();
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
        let first = s.write(&big, 1).unwrap();
        let second = s.write(&big, 1).unwrap(); // rolls over (segments of 1 MiB)
        assert_eq!(seg_files(dir.path()), 2);
        let _third = s.write(&big, 1).unwrap();
        let _fourth = s.write(&big, 1).unwrap();
        assert!(matches!(s.write(&big, 1), Err(SpillError::Full { .. })));
        drop(first);
        assert_eq!(
            seg_files(dir.path()),
            3,
            "the first segment still holds `second`"
        );
        drop(second);
        assert_eq!(seg_files(dir.path()), 2);
        assert!(s.write(&big, 1).is_ok(), "room again");
    }

    #[test]
    fn an_unwritable_dir_is_an_error_not_a_panic() {
        let mut s = SpillStore::new(Path::new("/proc/outrigger-no-such/dir"), 1 << 30);
        assert!(matches!(s.write(b"x\n", 1), Err(SpillError::Io(_))));
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
