//! The file sink: native NDJSON lines appended to a file, rotated by size.
//!
//! In: batches. Out: one `write` per batch to `path`; when the file would pass `rotate_bytes`
//! it becomes `path.1` (older ones shift to `.2`…, beyond `keep` removed) and a new file starts.
//! Closing flushes the file to disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Batch, SinkError};
use crate::config::FileSinkConfig;

/// The `file` sink's writer (rotation, fsync on close).
pub struct FileSink {
    path: PathBuf,
    file: File,
    size: u64,
    rotate: Option<u64>,
    keep: usize,
    buf: Vec<u8>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl FileSink {
    pub fn open(cfg: &FileSinkConfig) -> anyhow::Result<FileSink> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let file = open_append(&cfg.path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FileSink {
            path: cfg.path.clone(),
            file,
            size,
            rotate: cfg.rotate_bytes.map(|s| s.0).filter(|s| *s > 0),
            keep: cfg.keep.max(1),
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// What `outrigger check` asks: could [`FileSink::open`] open this file? Creates nothing:
    /// an existing file must open for appending; otherwise the nearest existing ancestor must
    /// be a directory this process may write in (the daemon creates the rest).
    pub fn check(cfg: &FileSinkConfig) -> anyhow::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        if cfg.path.exists() {
            fs::OpenOptions::new()
                .append(true)
                .open(&cfg.path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.path.display()))?;
            return Ok(());
        }
        let mut dir = cfg.path.parent();
        while let Some(d) = dir {
            let d = if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            };
            if d.exists() {
                anyhow::ensure!(
                    d.is_dir(),
                    "cannot create {}: {} is not a directory",
                    cfg.path.display(),
                    d.display()
                );
                let c = std::ffi::CString::new(d.as_os_str().as_bytes())?;
                // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
                if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                    anyhow::bail!(
                        "cannot create {}: {}: {}",
                        cfg.path.display(),
                        d.display(),
                        std::io::Error::last_os_error()
                    );
                }
                return Ok(());
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        tracing::info!(path = %self.path.display(), "file sink rotated");
        Ok(())
    }

    pub fn write(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        self.buf.clear();
        for e in &batch.events {
            e.write_native(&mut self.buf);
        }
        let path = self.path.clone();
        let io = |e: std::io::Error| SinkError::Retryable(format!("{}: {e}", path.display()));
        if let Some(limit) = self.rotate
            && self.size > 0
            && self.size + self.buf.len() as u64 > limit
        {
            self.rotate().map_err(io)?;
        }
        // A file removed under us (log cleanup) is re-created rather than written into the void.
        if !self.path.exists() {
            self.file = open_append(&self.path).map_err(io)?;
            self.size = 0;
        }
        self.file.write_all(&self.buf).map_err(io)?;
        self.size += self.buf.len() as u64;
        Ok(batch.events.len())
    }

    pub fn close(&mut self) {
        if let Err(e) = self.file.flush().and_then(|_| self.file.sync_data()) {
            tracing::warn!(path = %self.path.display(), error = %e, "file sink: sync on close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: PathBuf) -> FileSinkConfig {
        serde_yaml::from_str(&format!("path: {}", path.display())).unwrap()
    }

    #[test]
    fn check_creates_nothing_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/events.ndjson");
        FileSink::check(&cfg(deep.clone())).unwrap();
        assert!(!dir.path().join("a").exists(), "no directory made");
        let existing = dir.path().join("e.ndjson");
        fs::write(&existing, b"kept\n").unwrap();
        FileSink::check(&cfg(existing.clone())).unwrap();
        assert_eq!(fs::read(&existing).unwrap(), b"kept\n");
        let under_a_file = existing.join("x/events.ndjson");
        let e = FileSink::check(&cfg(under_a_file)).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        FileSink::open(&cfg(deep.clone())).unwrap();
        assert!(deep.exists(), "open does create it");
    }
}
