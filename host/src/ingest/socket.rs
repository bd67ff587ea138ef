//! Unix socket ingest: NDJSON lines in, one answer per line out.
//!
//! In: connections on `ingest.socket`, whose file gets `ingest.socket_mode` (default 0600: the
//! daemon's user only) and, with `ingest.socket_group`, that group, before anyone can connect
//! (the socket is made in a private directory beside its path and moved into place). Each read is cut at its last newline; the
//! complete lines are parsed against that one buffer (payloads stay slices of it), admitted as
//! one batch, and answered in one write: `{"success": true}` or `{"success": false, "error":
//! "…"}`. After `{"hello": {"ack": false}}` only malformed lines are answered. A line longer than
//! `max_line_bytes` is skipped up to its newline and refused. `flush` is answered once everything
//! admitted before it is delivered. A stale socket file is replaced; a live daemon's is not.
//! After `{"hello": {"ack": true, "debug": true}}` the connection is a debug connection: a
//! `pause` breakpoint that matches one of its lines holds the answer to that line (the event is
//! admitted at once) until the session is released, `control.max_pause` passes, or the client
//! disconnects (see `control::debug`); answers to the lines before it are written first, and
//! what the client sends meanwhile is read and kept. No other connection is ever held.
//! A client that stops reading its answers (or exits with lines unread) still has every line it
//! sent admitted. Reading does not wait on answers the client has not taken yet (up to
//! [`MAX_UNSENT_ANSWERS`] of them): a client may send everything before it reads anything. The listener stops on the shutdown token and removes the socket file; each
//! connection then admits what is already in its socket buffer and closes.

use std::collections::VecDeque;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::Admission;
use crate::config::{SocketGroup, SocketMode};
use crate::control::debug::{DebugConn, Hold, Release};
use crate::event::{self, Line, LineError};
use crate::pipeline::FLUSH_TIMEOUT;

const OK: &[u8] = b"{\"success\":true}\n";

/// Binds the socket, replacing a stale file but refusing to steal a live daemon's socket, then
/// gives it `group` (when set) and `mode`. A group that does not exist or cannot be given
/// leaves no socket behind.
pub fn bind(
    path: &Path,
    mode: SocketMode,
    group: Option<&SocketGroup>,
) -> anyhow::Result<UnixListener> {
    // Looked up first: a wrong name fails before anything is replaced.
    let gid = group.map(group_id).transpose()?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "socket {} is in use by a running daemon; stop it first or set ingest.socket to another path",
                path.display()
            ),
            Err(_) => {
                std::fs::remove_file(path).map_err(|e| {
                    anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display())
                })?;
                tracing::info!(path = %path.display(), "replaced a stale socket");
            }
        }
    }
    let parent = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir
        }
        None => Path::new("."),
    };
    // Made where only this user can reach it, given its group and mode there, then moved into
    // place: bound at `path` directly, the socket would carry the umask's mode until
    // `restrict`, which under a umask of 0 lets any user connect. A path too long for the
    // private directory's extra characters is bound directly.
    let private = private_dir(parent, path)?;
    let staged = private.as_ref().map(|d| d.join("s"));
    let at = staged.as_deref().unwrap_or(path);
    let result = UnixListener::bind(at)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", path.display()))
        .and_then(|l| {
            let placed = restrict(at, mode, gid, group).and_then(|()| {
                if at != path {
                    std::fs::rename(at, path).map_err(|e| {
                        anyhow::anyhow!("cannot move the socket to {}: {e}", path.display())
                    })?;
                }
                Ok(())
            });
            match placed {
                Ok(()) => Ok(l),
                Err(e) => {
                    // A group that cannot be given leaves no socket behind.
                    let _ = std::fs::remove_file(at);
                    Err(e)
                }
            }
        });
    if let Some(d) = &private {
        let _ = std::fs::remove_dir(d);
    }
    result
}

/// Longest socket path the kernel takes (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A new directory beside the socket that only this user may enter (mode 0700), where the
/// socket is made before it is moved into place; `None` when a socket path in it would be
/// too long.
fn private_dir(parent: &Path, path: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!(".outrigger-bind-{}-{n}", std::process::id()));
        if dir.as_os_str().len() + 2 > MAX_SOCKET_PATH {
            return Ok(None);
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(Some(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => anyhow::bail!(
                "cannot bind {}: cannot make a private directory in {}: {e}",
                path.display(),
                parent.display()
            ),
        }
    }
}

/// Gives the socket file its group and mode.
fn restrict(
    path: &Path,
    mode: SocketMode,
    gid: Option<u32>,
    group: Option<&SocketGroup>,
) -> anyhow::Result<()> {
    if let (Some(gid), Some(group)) = (gid, group) {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            anyhow::anyhow!(
                "cannot give socket {} to group {group} (gid {gid}, ingest.socket_group): {e}; the daemon's user must be root or a member of that group",
                path.display()
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0)).map_err(|e| {
        anyhow::anyhow!(
            "cannot set mode {:04o} on socket {} (ingest.socket_mode): {e}",
            mode.0,
            path.display()
        )
    })
}

/// The gid of `ingest.socket_group`: a number as it is, a name looked up (files, LDAP, …).
pub fn group_id(group: &SocketGroup) -> anyhow::Result<u32> {
    let name = match group {
        SocketGroup::Gid(g) => return Ok(*g),
        SocketGroup::Name(n) => n,
    };
    let cname = std::ffi::CString::new(name.as_str())
        .map_err(|_| anyhow::anyhow!("ingest.socket_group `{name}` contains a NUL byte"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: `group` is plain data that getgrnam_r fills; `buf` outlives the call and
        // its length is passed; `found` is null or points at `grp`.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            anyhow::bail!(
                "cannot look up group `{name}` (ingest.socket_group): {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        if found.is_null() {
            anyhow::bail!(
                "group `{name}` does not exist (ingest.socket_group): create it or give a gid"
            );
        }
        return Ok(grp.gr_gid);
    }
}

/// Accepts connections until `stop`, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    adm: Arc<Admission>,
    stop: CancellationToken,
) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, adm.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove socket");
    }
    conns.close();
    conns.wait().await;
}

/// Per-connection state.
struct Conn {
    adm: Arc<Admission>,
    source: prometheus::IntCounter,
    ack: bool,
    /// The client's pid, for a debug connection's sessions.
    pid: Option<i32>,
    /// Set by `{"hello": {"debug": true}}` (with acks).
    debug: Option<DebugConn>,
    /// After a `step`: the breakpoint whose session holds the next line.
    step: Option<String>,
    /// What a hold read meanwhile: `Some(0)` at end of input.
    readahead: Option<usize>,
    /// The client went away while held: nothing more is held.
    gone: bool,
    stop: CancellationToken,
    /// Inside a line that went over `max_line_bytes`: bytes skipped so far.
    skipping: Option<usize>,
    out: Vec<u8>,
    interner: event::Interner,
}

enum Answer {
    Event,
    Error(String),
    Quiet,
}

/// The connection's halves and read buffer, lent to [`Conn::process`].
struct Io<'a> {
    rd: &'a mut tokio::net::unix::OwnedReadHalf,
    wr: &'a mut tokio::net::unix::OwnedWriteHalf,
    buf: &'a mut BytesMut,
    /// The client no longer reads its answers: nothing is written.
    deaf: bool,
}

impl Io<'_> {
    async fn write(&mut self, out: &mut Vec<u8>) {
        if !out.is_empty() {
            if !self.deaf && self.wr.write_all(out).await.is_err() {
                self.deaf = true;
            }
            out.clear();
        }
    }
}

async fn connection(stream: UnixStream, adm: Arc<Admission>, stop: CancellationToken) {
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let (mut rd, mut wr) = stream.into_split();
    let source = adm.metrics.events_received.with_label_values(&["socket"]);
    let mut c = Conn {
        adm,
        source,
        ack: true,
        pid,
        debug: None,
        step: None,
        readahead: None,
        gone: false,
        stop: stop.clone(),
        skipping: None,
        out: Vec::with_capacity(4096),
        interner: event::Interner::default(),
    };
    let mut buf = BytesMut::with_capacity(256 * 1024);
    // After the shutdown token: read only what is already in the socket buffer, then stop.
    let mut stopping = false;
    // The client closed its reading side: keep admitting what it sent, stop answering.
    let mut deaf = false;
    loop {
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        let n = if let Some(n) = c.readahead.take() {
            Ok(n)
        } else if stopping {
            match rd.try_read_buf(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                r => r,
            }
        } else {
            // Reading goes on while answers wait for the client to take them (up to a bound):
            // a client that sends everything before it reads anything would otherwise block in
            // its own send once its unread answers filled the socket, with the daemon blocked
            // writing the next ones.
            let unsent = !deaf && !c.out.is_empty();
            tokio::select! {
                biased;
                r = rd.read_buf(&mut buf), if c.out.len() < MAX_UNSENT_ANSWERS => r,
                w = wr.writable(), if unsent => {
                    if w.is_err() || !send_some(&wr, &mut c.out) {
                        deaf = true;
                        c.out.clear();
                    }
                    continue;
                }
                _ = stop.cancelled() => {
                    stopping = true;
                    continue;
                }
            }
        };
        let eof = match n {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "socket read failed");
                break;
            }
        };
        let max = c.adm.max_line_bytes();
        let cut = if eof {
            // A last line without its newline still counts.
            (!buf.is_empty()).then_some(buf.len())
        } else {
            memchr::memrchr(b'\n', &buf).map(|i| i + 1)
        };
        match cut {
            Some(cut) => {
                let chunk = buf.split_to(cut).freeze();
                let mut io = Io {
                    rd: &mut rd,
                    wr: &mut wr,
                    buf: &mut buf,
                    deaf,
                };
                c.process(&chunk, &mut io).await;
                deaf = io.deaf;
            }
            None if buf.len() > max => {
                // No newline within the limit: skip to the end of this line.
                *c.skipping.get_or_insert(0) += buf.len();
                buf.clear();
            }
            None => {}
        }
        if deaf {
            c.out.clear();
        } else if !send_some(&wr, &mut c.out) {
            deaf = true;
            c.out.clear();
        }
        if eof {
            break;
        }
    }
    // What the client has not taken yet goes out before the connection closes.
    if !deaf && !c.out.is_empty() {
        let _ = wr.write_all(&c.out).await;
    }
}

/// Answers a connection keeps unwritten while it goes on reading (about 490 000
/// `{"success":true}`); past it, reading waits until the client takes some.
const MAX_UNSENT_ANSWERS: usize = 8 << 20;

/// Writes what the socket takes of `out` now, without waiting, and drops it from `out`; false
/// when the client is gone.
fn send_some(wr: &tokio::net::unix::OwnedWriteHalf, out: &mut Vec<u8>) -> bool {
    let mut sent = 0;
    let ok = loop {
        if sent == out.len() {
            break true;
        }
        match wr.try_write(&out[sent..]) {
            Ok(0) => break false,
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    out.drain(..sent);
    ok
}

impl Conn {
    /// Parses, admits and answers every line of `chunk`. Sets `io.deaf` when the client no
    /// longer reads its answers (every line is admitted all the same).
    async fn process(&mut self, chunk: &Bytes, io: &mut Io<'_>) {
        let max = self.adm.max_line_bytes();
        let mut events = Vec::with_capacity(chunk.len() / 64 + 1);
        let mut answers: Vec<Answer> = Vec::new();
        let mut invalid = 0;
        let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
        for raw in body.split(|b| *b == b'\n') {
            if let Some(skipped) = self.skipping.take() {
                invalid += 1;
                answers.push(Answer::Error(
                    LineError::TooLong(skipped + raw.len(), max).to_string(),
                ));
                continue;
            }
            if raw.trim_ascii().is_empty() {
                continue;
            }
            match event::parse_line_with(chunk, raw, max, Some(&mut self.interner)) {
                Ok(Line::Event(e)) => {
                    events.push(e);
                    answers.push(Answer::Event);
                }
                Ok(Line::Hello { ack, debug }) => {
                    self.ack = ack;
                    self.hello_debug(debug && ack);
                    answers.push(Answer::Quiet);
                }
                Ok(Line::Flush) => {
                    self.finish(
                        std::mem::take(&mut events),
                        std::mem::take(&mut answers),
                        io,
                    )
                    .await;
                    io.write(&mut self.out).await;
                    if self.adm.flush(FLUSH_TIMEOUT).await {
                        self.out.extend_from_slice(OK);
                    } else {
                        self.error(&format!(
                            "flush timed out after {}s: a sink is still retrying",
                            FLUSH_TIMEOUT.as_secs()
                        ));
                    }
                }
                Err(e) => {
                    invalid += 1;
                    answers.push(Answer::Error(e.to_string()));
                }
            }
        }
        if invalid > 0 {
            self.adm.invalid(invalid);
            tracing::debug!(invalid, "malformed lines refused");
        }
        self.finish(events, answers, io).await;
    }

    /// A hello's `debug` (true only with acks): the connection becomes debuggable, or stops.
    fn hello_debug(&mut self, debug: bool) {
        match (&self.debug, &self.adm.debugger) {
            (None, Some(d)) if debug => {
                let conn = d.connection("socket", self.pid);
                tracing::debug!(conn = conn.id, pid = ?self.pid, "debug connection");
                self.debug = Some(conn);
            }
            (Some(_), _) if !debug => {
                self.debug = None;
                self.step = None;
            }
            _ => {}
        }
    }

    /// Admits the events and writes the answers for them, in line order (with a durable
    /// queue, once they are in the write-ahead log); on a debug connection, waits where a
    /// `pause` breakpoint holds a line.
    async fn finish(&mut self, events: Vec<event::Event>, answers: Vec<Answer>, io: &mut Io<'_>) {
        let n = events.len();
        let debug = self.debug.clone().filter(|_| !self.gone && n > 0);
        let (admitted, mut holds, kept) = match &debug {
            Some(conn) => {
                // Cheap clones (the payloads are shared), for a `step` onto a later line.
                let kept = events.clone();
                let (admitted, holds) = self.adm.admit_debug(&self.source, events, conn).await;
                (admitted, VecDeque::from(holds), kept)
            }
            None => (
                self.adm.admit(&self.source, events).await,
                VecDeque::new(),
                Vec::new(),
            ),
        };
        let first_refused = n - admitted.refused;
        let mut i = 0;
        for a in answers {
            match a {
                Answer::Event => {
                    if let Some(conn) = &debug {
                        let hold = match holds.front() {
                            Some((at, _)) if *at == i => holds.pop_front().map(|(_, h)| h),
                            _ => None,
                        };
                        let hold = match (hold, self.step.take()) {
                            (Some(h), _) => Some(h),
                            (None, Some(bp)) if !self.gone => self
                                .adm
                                .debugger
                                .as_ref()
                                .map(|d| d.step_hold(&kept[i], conn, &bp)),
                            (None, _) => None,
                        };
                        if let Some(h) = hold {
                            self.pause(h, io).await;
                        }
                    }
                    // Without acks only malformed lines are answered; a queue drop is counted.
                    if !self.ack {
                    } else if i >= first_refused {
                        self.error(admitted.refusal());
                    } else if let Some(e) = &admitted.error {
                        self.error(e);
                    } else {
                        self.out.extend_from_slice(OK);
                    }
                    i += 1;
                }
                Answer::Error(e) => self.error(&e),
                Answer::Quiet => {}
            }
        }
    }

    /// Holds the connection: the answers so far are written, then the hold is awaited while
    /// what the client sends is read into the buffer (a bounded amount), so that its
    /// disconnect shows.
    async fn pause(&mut self, hold: Hold, io: &mut Io<'_>) {
        let Some(debugger) = self.adm.debugger.clone() else {
            return;
        };
        io.write(&mut self.out).await;
        let breakpoint = hold.breakpoint.clone();
        let room = 2 * self.adm.max_line_bytes() + 64 * 1024;
        let mut read = 0;
        let rd = &mut *io.rd;
        let buf = &mut *io.buf;
        let read_ref = &mut read;
        let disconnected = async move {
            loop {
                if buf.len() >= room {
                    // Full: wait for the release without reading more.
                    std::future::pending::<()>().await;
                }
                buf.reserve(64 * 1024);
                match rd.read_buf(buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => *read_ref += n,
                }
            }
        };
        let why = debugger.wait(hold, disconnected, &self.stop).await;
        tracing::debug!(why = ?why, "debug connection released");
        match why {
            Release::Step => self.step = Some(breakpoint),
            Release::Disconnect => {
                self.gone = true;
                io.deaf = true;
                self.readahead = Some(0);
                return;
            }
            _ => {}
        }
        if read > 0 {
            self.readahead = Some(read);
        }
    }

    fn error(&mut self, msg: &str) {
        self.out.extend_from_slice(b"{\"success\":false,\"error\":");
        event::write_json_str(&mut self.out, msg);
        self.out.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn the_socket_gets_its_mode_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        // Root may give any group: take one it is not already in, so the change shows.
        let gid = if uid == 0 { 1 } else { egid };
        let l = bind(&path, SocketMode(0o660), Some(&SocketGroup::Gid(gid))).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        assert_eq!(meta.gid(), gid);
        drop(l);
        // The file is stale now: a new bind replaces it with the default mode.
        let _l = bind(&path, SocketMode::default(), None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    }

    #[tokio::test]
    async fn the_socket_is_made_in_a_private_directory_and_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // SAFETY: umask only sets this process's file mode mask; restored below. No other
        // test of this binary creates files whose mode it checks while this one runs.
        let old = unsafe { libc::umask(0) };
        let l = bind(&path, SocketMode::default(), None);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _l = l.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["s.sock"], "the private directory is gone");
        // It takes connections at its final path.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        // A path too long for the private directory is bound directly, with its mode.
        let long = dir
            .path()
            .join("x".repeat(MAX_SOCKET_PATH - dir.path().as_os_str().len() - 1));
        assert_eq!(long.as_os_str().len(), MAX_SOCKET_PATH);
        let _l2 = bind(&long, SocketMode(0o660), None).unwrap();
        let meta = std::fs::metadata(&long).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    }

    #[tokio::test]
    async fn a_missing_group_is_refused_and_leaves_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let missing = SocketGroup::Name("outrigger-no-such-group".into());
        let e = bind(&path, SocketMode(0o660), Some(&missing)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("outrigger-no-such-group") && msg.contains("does not exist"),
            "{msg}"
        );
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_group_that_cannot_be_given_leaves_no_socket() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return; // root may give any group
        }
        // A gid this process is not in: the highest valid one.
        let foreign = u32::MAX - 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let e = bind(&path, SocketMode(0o660), Some(&SocketGroup::Gid(foreign))).unwrap_err();
        assert!(e.to_string().contains("ingest.socket_group"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn group_names_are_looked_up() {
        assert_eq!(group_id(&SocketGroup::Gid(42)).unwrap(), 42);
        assert_eq!(group_id(&SocketGroup::Name("root".into())).unwrap(), 0);
    }
}
