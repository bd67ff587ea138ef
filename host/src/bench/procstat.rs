//! The daemon's own cost, read from `/proc`: CPU time and wake-ups of a process, per thread.
//!
//! In: a pid (found from the ingest socket's peer credentials when not given). Out:
//! [`Sample`]s, and the [`Usage`] between two of them: CPU seconds (from each thread's
//! `schedstat`, in nanoseconds, falling back to the process's `stat` ticks when threads came or
//! went), and context switches (voluntary and not) per thread name, which count how often each
//! thread was woken. Linux only; reads nothing but `/proc`.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

/// One reading of a process.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    /// utime + stime of the whole process (dead threads included), in nanoseconds.
    stat_ns: u64,
    /// Per live thread: id, name, run time in ns, context switches.
    threads: Vec<(u32, String, u64, u64)>,
    rss_bytes: u64,
}

/// What a process used between two samples.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub pid: u32,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Share of one core, in percent.
    pub cpu_percent: f64,
    pub wakeups_per_second: f64,
    /// Wake-ups per second by thread name (threads of one pool share a name).
    pub wakeups_by_thread: BTreeMap<String, f64>,
    pub rss_bytes: u64,
}

/// The pid of the process that listens on a unix socket (`SO_PEERCRED`).
pub fn socket_peer_pid(socket: &Path) -> anyhow::Result<u32> {
    let s = UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", socket.display()))?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 || cred.pid <= 0 {
        anyhow::bail!(
            "cannot read the peer of {}: {}",
            socket.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(cred.pid as u32)
}

/// Reads a process's CPU time, threads and RSS now.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let base = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{base}/stat"))
        .map_err(|e| anyhow::anyhow!("process {pid}: {e}"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let rss_pages: u64 = f.get(21).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("{base}/task"))?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let run_ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        threads.push((tid, pool_name(name.trim()), run_ns, switches));
    }
    Ok(Sample {
        at: Instant::now(),
        stat_ns: ticks * 1_000_000_000 / hz,
        threads,
        rss_bytes: rss_pages * page,
    })
}

/// A process's peak resident memory since it started (`VmHWM` in `/proc/PID/status`).
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no VmHWM in /proc/PID/status")
}

/// Threads of one pool differ by a numeric suffix (`tokio-runtime-w` is already cut by the
/// kernel's 15-byte limit); drop it so the pool is reported as one.
fn pool_name(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
        .to_string()
}

/// The usage between `a` and `b` (b taken later) of process `pid`.
pub fn usage(pid: u32, a: &Sample, b: &Sample) -> Usage {
    let seconds = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let same_threads = a.threads.len() == b.threads.len()
        && a.threads.iter().zip(&b.threads).all(|(x, y)| x.0 == y.0);
    let cpu_ns = if same_threads {
        let sum = |s: &Sample| s.threads.iter().map(|t| t.2).sum::<u64>();
        sum(b).saturating_sub(sum(a))
    } else {
        b.stat_ns.saturating_sub(a.stat_ns)
    };
    let mut by_thread: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0u64;
    for (tid, name, _, sw) in &b.threads {
        let before = a
            .threads
            .iter()
            .find(|t| t.0 == *tid)
            .map(|t| t.3)
            .unwrap_or(0);
        let woke = sw.saturating_sub(before);
        total += woke;
        *by_thread.entry(name.clone()).or_default() += woke as f64 / seconds;
    }
    let cpu_seconds = cpu_ns as f64 / 1e9;
    Usage {
        pid,
        seconds,
        cpu_seconds,
        cpu_percent: cpu_seconds / seconds * 100.0,
        wakeups_per_second: total as f64 / seconds,
        wakeups_by_thread: by_thread,
        rss_bytes: b.rss_bytes,
    }
}

/// Watches `pid` for `seconds` and returns what it used.
pub fn watch(pid: u32, seconds: f64) -> anyhow::Result<Usage> {
    let a = sample(pid)?;
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    let b = sample(pid)?;
    Ok(usage(pid, &a, &b))
}

/// The usage for people: one line, then the threads that woke.
pub fn print(u: &Usage) {
    println!(
        "daemon pid {} over {:.1}s: {:.3}% of a core ({:.1} ms CPU), {:.1} wake-ups/s, RSS {:.1} MB",
        u.pid,
        u.seconds,
        u.cpu_percent,
        u.cpu_seconds * 1000.0,
        u.wakeups_per_second,
        u.rss_bytes as f64 / 1e6
    );
    for (name, w) in u.wakeups_by_thread.iter().filter(|(_, w)| **w > 0.0) {
        println!("  {name}: {w:.1} wake-ups/s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_sees_a_busy_thread() {
        let me = std::process::id();
        let a = sample(me).unwrap();
        let spin = std::thread::Builder::new()
            .name("spinner".into())
            .spawn(|| {
                let t = Instant::now();
                let mut x = 0u64;
                while t.elapsed() < std::time::Duration::from_millis(60) {
                    x = x.wrapping_add(1);
                }
                std::hint::black_box(x);
            })
            .unwrap();
        spin.join().unwrap();
        let b = sample(me).unwrap();
        let u = usage(me, &a, &b);
        assert!(u.cpu_seconds >= 0.03, "{u:?}");
        assert!(u.rss_bytes > 0);
    }

    #[test]
    fn pool_names_drop_their_number() {
        assert_eq!(pool_name("outrigger-pipeline"), "outrigger-pipeline");
        assert_eq!(pool_name("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(pool_name("worker-12"), "worker");
    }
}
