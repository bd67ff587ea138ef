//! The end-to-end harness: runs the real `outrigger` binary on a temporary socket and free
//! ports, talks to it over the socket and HTTP, and reads what reached the file sink.
//!
//! `Daemon::start(extra_yaml)` deep-merges `extra_yaml` over a base config (socket, HTTP ingest,
//! control API and a file sink, all inside a temp dir), starts the daemon and waits for
//! `/readyz`. `stop()` sends SIGTERM and waits for the exit. On drop the process is killed,
//! and if the test is failing, the daemon's log is printed.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_outrigger");

/// A port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    free_ports::<1>()[0]
}

/// `N` different ports that were free a moment ago. Each is held until all are chosen: ports
/// asked for one after another can come back the same once the first is let go (a cluster
/// of three then had two nodes on one port).
pub fn free_ports<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr"))
}

/// Deep-merges mapping `b` into `a` (b wins; sequences are replaced).
pub fn merge(a: &mut serde_yaml::Value, b: serde_yaml::Value) {
    match (a, b) {
        (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub http: SocketAddr,
    pub control: SocketAddr,
    pub out: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub api_key: Option<String>,
    /// Extra environment variables for the daemon process (set before `launch`).
    pub env: Vec<(String, String)>,
}

/// Polls `f` until it returns true or `timeout` passes; returns whether it became true.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Daemon {
    /// The base config, with paths inside `dir`. Resource budgets are off (0) so that a busy
    /// test is not sampled down by the profiler; tests of the degrade path set their own.
    pub fn base_config(
        dir: &Path,
        socket: &Path,
        http: SocketAddr,
        control: SocketAddr,
    ) -> serde_yaml::Value {
        serde_yaml::from_str(&format!(
            r#"
ingest: {{socket: "{socket}", http: "{http}"}}
batch: {{max_events: 500, interval: 50ms}}
plugins: {{dir: "{dir}/plugins", cache_dir: "{dir}/cache"}}
sinks:
  - {{type: file, path: "{dir}/out/events.ndjson"}}
delivery: {{retry: {{initial: 20ms, max: 200ms}}}}
control: {{listen: "{control}"}}
health: {{interval: 1s}}
profiling: {{budgets: {{cpu_percent: 0, memory_mb: 0}}}}
log: {{level: "info,outrigger=debug"}}
"#,
            socket = socket.display(),
            dir = dir.display(),
        ))
        .expect("base config")
    }

    /// Starts a daemon with `extra` merged over the base config, and waits until it is ready.
    pub async fn start(extra: &str) -> Daemon {
        let d = Daemon::spawn(extra);
        d.wait_ready().await;
        d
    }

    /// Starts a daemon without waiting for it to be ready.
    pub fn spawn(extra: &str) -> Daemon {
        let mut d = Daemon::prepare(extra);
        d.launch();
        d
    }

    /// Writes the config and makes the directories, without starting anything (for tests that
    /// run the binary themselves, like `outrigger exec`).
    pub fn prepare(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
        let socket = dir.path().join("outrigger.sock");
        let [http, control] = free_ports();
        let mut cfg = Daemon::base_config(dir.path(), &socket, http, control);
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        if !extra.trim().is_empty() {
            merge(
                &mut cfg,
                serde_yaml::from_str(&extra).expect("extra config is YAML"),
            );
        }
        let api_key = cfg["control"]["api_key"].as_str().map(str::to_string);
        let config = dir.path().join("outrigger.yml");
        std::fs::write(&config, serde_yaml::to_string(&cfg).expect("yaml")).expect("write config");
        let out = dir.path().join("out/events.ndjson");
        let log = dir.path().join("daemon.log");
        Daemon {
            child: None,
            dir,
            socket,
            http,
            control,
            out,
            config,
            log,
            api_key,
            env: Vec::new(),
        }
    }

    /// (Re)starts the process on the same config and directory.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_remove("OUTRIGGER_CONFIG")
            .env_remove("OUTRIGGER_API_KEY")
            .env_remove("OUTRIGGER_INGEST_KEY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn outrigger");
        self.child = Some(child);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.control);
        // A daemon that compiles an interpreter's component (Python, JavaScript) at start in a
        // debug build, beside other tests doing the same, can take minutes before it is ready.
        let ok = eventually(
            Duration::from_secs(180),
            async || matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200),
        )
        .await;
        assert!(ok, "daemon never became ready; log:\n{}", self.log_text());
    }

    /// Sends lines on a new connection and returns one answer per line.
    pub async fn send(&self, lines: &[&str]) -> Vec<String> {
        let mut c = self.connect().await;
        let mut answers = Vec::new();
        for l in lines {
            answers.push(c.send(l).await);
        }
        answers
    }

    pub async fn connect(&self) -> Conn {
        let s = UnixStream::connect(&self.socket)
            .await
            .expect("connect to the daemon socket");
        let (rd, wr) = s.into_split();
        Conn {
            rd: BufReader::new(rd),
            wr,
        }
    }

    /// Writes NDJSON without acknowledgements (`hello {ack:false}`), then closes.
    pub async fn send_noack(&self, body: &[u8]) {
        let mut c = self.connect().await;
        c.wr.write_all(b"{\"hello\":{\"ack\":false}}\n")
            .await
            .expect("write hello");
        c.wr.write_all(body).await.expect("write events");
        c.wr.shutdown().await.expect("shutdown");
        let mut rest = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut c.rd, &mut rest).await;
        assert!(rest.is_empty(), "no-ack connection got answers: {rest}");
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r =
            reqwest::Client::new().request(method, format!("http://{}{}", self.control, path));
        if let Some(k) = &self.api_key {
            r = r.bearer_auth(k);
        }
        r
    }

    /// GET on the control API: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    pub async fn send_json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self
            .request(m, path)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The sum of every series of `name` whose labels contain `labels` (e.g. `reason="invalid"`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_value(&text, name, labels)
    }

    /// Waits until `metric(name, labels)` reaches `at_least`.
    pub async fn wait_metric(&self, name: &str, labels: &str, at_least: f64) -> f64 {
        let mut last = 0.0;
        let ok = eventually(Duration::from_secs(30), async || {
            last = self.metric(name, labels).await;
            last >= at_least
        })
        .await;
        assert!(
            ok,
            "{name}{{{labels}}} stayed at {last}, wanted {at_least}; log:\n{}",
            self.log_text()
        );
        last
    }

    /// Every event in the file sink so far.
    pub fn events(&self) -> Vec<Value> {
        read_ndjson(&self.out)
    }

    /// SIGTERM, then wait for the exit (at most 60 s).
    /// Waits up to `within` for a daemon that should refuse to start to exit; kills it and
    /// panics (with its log) if it keeps running. Returns its exit status.
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running daemon");
        let mut status = None;
        let done = eventually(within, async || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        })
        .await;
        if !done {
            let _ = child.kill();
        }
        assert!(done, "the daemon kept running; log:\n{}", self.log_text());
        status.expect("exited")
    }

    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!(
                    "daemon did not exit after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A socket connection that sends one line and reads its answer.
pub struct Conn {
    pub rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    pub wr: tokio::net::unix::OwnedWriteHalf,
}

impl Conn {
    pub async fn send(&mut self, line: &str) -> String {
        self.wr.write_all(line.as_bytes()).await.expect("write");
        self.wr.write_all(b"\n").await.expect("write");
        self.answer().await
    }

    pub async fn answer(&mut self) -> String {
        let mut answer = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(30), self.rd.read_line(&mut answer)).await;
        assert!(
            matches!(read, Ok(Ok(n)) if n > 0),
            "no answer from the daemon"
        );
        answer.trim_end().to_string()
    }
}

pub fn read_ndjson(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad line in {}: {e}: {l}", path.display()))
        })
        .collect()
}

/// Rewrites the daemon's config with `extra` merged over what is there, the way editors save:
/// a new file renamed over the old one.
pub fn rewrite_config(d: &Daemon, extra: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    merge(
        &mut cfg,
        serde_yaml::from_str(&extra.replace("{dir}", &d.dir.path().display().to_string())).unwrap(),
    );
    let tmp = d.config.with_extension("yml.tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    std::fs::rename(&tmp, &d.config).unwrap();
}

/// Sums the series of `name` (exact metric name) whose label set contains `labels`.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, ls) = match series.split_once('{') {
                Some((n, ls)) => (n, ls.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name
                && (labels.is_empty() || ls.split(',').any(|x| x == labels) || ls.contains(labels)))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// A minimal HTTP server for sink tests: records request bodies and answers with the status
/// that `respond` picks for the n-th request (0-based).
pub struct Recorder {
    pub addr: SocketAddr,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub async fn start(respond: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Recorder {
        use axum::extract::State;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        type Shared = (
            Arc<std::sync::Mutex<Vec<(String, String)>>>,
            Arc<AtomicUsize>,
            Arc<dyn Fn(usize) -> u16 + Send + Sync>,
        );
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let shared: Shared = (bodies.clone(), hits.clone(), Arc::new(respond));
        async fn handle(
            State((bodies, hits, respond)): State<Shared>,
            headers: axum::http::HeaderMap,
            body: String,
        ) -> axum::http::StatusCode {
            let n = hits.fetch_add(1, Ordering::SeqCst);
            let status = respond(n);
            if status < 300 {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                bodies.lock().expect("lock").push((auth, body));
            }
            axum::http::StatusCode::from_u16(status).expect("status")
        }
        let app = axum::Router::new()
            .fallback(axum::routing::post(handle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { addr, bodies, hits }
    }

    pub fn bodies(&self) -> Vec<(String, String)> {
        self.bodies.lock().expect("lock").clone()
    }
}

/// `nats-server` on this machine, or `None` after saying loudly that the NATS tests are not
/// run. Under CI (`CI` set) a missing server is a failure: `.ci/run` installs it.
pub fn nats_server_available() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed, and CI must run the NATS tests (.ci/run installs it)"
        );
        eprintln!(
            "\n**** SKIPPED: nats-server is not installed; the NATS sink tests did NOT run \
             (apt-get install nats-server) ****\n"
        );
    }
    ok
}

/// One `nats-server` of a [`NatsCluster`], with JetStream; its ports and store directory
/// stay the same across restarts.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub conf: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server and waits until it takes connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < end, "{} never listened", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: a node that dies, not one that leaves politely).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A JetStream cluster of `nats-server`s on loopback ports chosen at run time, stores in a
/// temp dir (a single node is a cluster of one, without routes). Killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    pub dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Held together: every node's client and route port differ.
        let held: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
            .collect();
        let port = |i: usize| held[i].local_addr().expect("local addr").port();
        let ports: Vec<(u16, u16)> = (0..n).map(|i| (port(2 * i), port(2 * i + 1))).collect();
        drop(held);
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n",
                store.display()
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .map(|(_, r)| format!("nats-route://127.0.0.1:{r}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{ name: outrigger-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, conf).expect("nats conf");
            nodes.push(NatsNode {
                name,
                port: *port,
                conf: path,
                log: dir.path().join(format!("{}.log", i)),
                child: None,
            });
        }
        for node in &mut nodes {
            node.start();
        }
        NatsCluster { nodes, dir }
    }

    /// Every node's URL, comma-separated (the sink's `url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client connected to any node, once JetStream answers (a cluster has elected its
    /// meta leader).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(NatsNode::url)
            .collect();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let why = match async_nats::connect(urls.as_slice()).await {
                Ok(c) => {
                    let js = async_nats::jetstream::new(c);
                    match outrigger::sinks::nats::jetstream_answers(&js).await {
                        Ok(()) => return js,
                        Err(e) => format!("account info: {e}"),
                    }
                }
                Err(e) => format!("connect: {e}"),
            };
            assert!(
                Instant::now() < end,
                "JetStream never became ready ({why}): {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("---- {} ----\n{}", n.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Every message of `stream`, in stream order, as parsed JSON payloads with their
/// `Nats-Msg-Id`; waits until there are `want` (at most `within`).
pub async fn read_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
    want: usize,
    within: Duration,
) -> Vec<(String, Value)> {
    use futures_util::StreamExt;
    let s = js.get_stream(stream).await.expect("stream");
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(5000)
        .messages()
        .await
        .expect("messages");
    let mut out = Vec::with_capacity(want);
    let end = Instant::now() + within;
    while out.len() < want {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, messages.next()).await {
            Ok(Some(Ok(m))) => {
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                out.push((
                    id,
                    serde_json::from_slice(&m.payload).expect("JSON payload"),
                ));
            }
            Ok(Some(Err(e))) => panic!("reading the stream: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    // Anything past `want` would be a duplicate: give it a moment to show.
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        out.push((
            String::new(),
            serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
        ));
    }
    out
}
