//! The `outrigger` command: parses the CLI, sets up logging, runs a subcommand, sets the exit code.
//!
//! `run` starts the daemon and turns SIGINT/SIGTERM into a graceful shutdown (a second signal
//! cuts the drain short and exits 130); `check` builds every stage as `run` would; `send`,
//! `status`, `runs` and `tail` are clients of a running daemon; `exec` runs a command under a
//! daemon of its own; `plugin` and `replay` work on plugins
//! offline. Everything else lives in the library. Errors print one clear message and exit 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use outrigger::config::{self, Config};
use outrigger::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "outrigger",
    version,
    about = "A sidecar daemon that observes an application, extended with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (config: -c FILE, $OUTRIGGER_CONFIG, ./outrigger.yml, or built-in defaults).
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Profile this process too (CPU, memory); repeat for more (adds to profiling.watch_pids).
        #[arg(long = "watch-pid", value_name = "PID")]
        watch_pids: Vec<u32>,
    },
    /// Validate the config and every plugin; exit 1 with the reason when something is wrong.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Send events to a running daemon: one built from flags, or NDJSON lines from stdin (`-`).
    Send {
        /// The daemon's socket (default: the config's ingest.socket).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Event type.
        #[arg(long = "type", short = 't')]
        kind: Option<String>,
        /// The event's data, as JSON.
        #[arg(long)]
        data: Option<String>,
        #[arg(long)]
        run_id: Option<String>,
        /// `-` reads NDJSON lines from stdin.
        input: Option<String>,
    },
    /// Set a breakpoint on a running daemon, wait for hits, print each event and its run, and
    /// continue or step a paused connection from the terminal (c, s, e EXPR, q).
    Debug {
        #[command(flatten)]
        control: outrigger::cli::ControlArgs,
        /// The CEL condition, e.g. 'type == "test_end" && data.status == "failed"'.
        #[arg(long)]
        when: Option<String>,
        /// Only events of this run.
        #[arg(long)]
        run_id: Option<String>,
        /// pause (holds a connection that opted in with debug) or capture.
        #[arg(long, default_value = "pause", value_parser = ["pause", "capture"])]
        action: String,
        /// Stop after this many hits.
        #[arg(long)]
        hits: Option<u64>,
        /// Leave the breakpoint set on exit.
        #[arg(long)]
        keep: bool,
    },
    /// Health and stats of a running daemon (exit 1 when unhealthy or unreachable).
    Status {
        #[command(flatten)]
        control: outrigger::cli::ControlArgs,
        /// The window of the profile summary.
        #[arg(long, default_value = "60s")]
        window: String,
        /// One JSON object with `health` and `stats`.
        #[arg(long)]
        json: bool,
    },
    /// The runs a running daemon holds or has decided (tail sampling), most recent first.
    Runs {
        #[command(flatten)]
        control: outrigger::cli::ControlArgs,
        /// open, kept, dropped or seen (default: all).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The summaries as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command under a daemon of its own: `outrigger exec -- pytest --outrigger`. The
    /// command gets OUTRIGGER_SOCKET and OUTRIGGER_CONTROL_URL; its exit code is outrigger's.
    Exec {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Log only warnings and errors (the daemon's log shares the terminal with the command).
        #[arg(short, long)]
        quiet: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Follow the events a running daemon admits (live, from its control API).
    Tail {
        #[command(flatten)]
        control: outrigger::cli::ControlArgs,
        /// Only these event types (repeat for more; `prefix*` matches a prefix).
        #[arg(long = "type", short = 't', value_name = "T")]
        types: Vec<String>,
        /// Only events of these runs (repeat for more).
        #[arg(long = "run-id", value_name = "R")]
        run_ids: Vec<String>,
        /// Only events for which this CEL condition is true, e.g. 'data.duration_ms > 1000'.
        #[arg(long)]
        when: Option<String>,
        /// Print each event as its native JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Load generator against a running daemon: events/s, ack round trip, delivered and dropped.
    Bench {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The daemon's socket (default: the config's ingest.socket).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Send over HTTP to this address (`POST /v1/events`) instead of the socket.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Send OTLP/HTTP protobuf export requests of --batch log records to this address
        /// (`ingest.otlp.http`) instead of the socket.
        #[arg(long)]
        otlp: Option<std::net::SocketAddr>,
        /// With --otlp: spans (`POST /v1/traces`) instead of log records.
        #[arg(long, requires = "otlp")]
        spans: bool,
        /// The control API for /metrics (default: the config's control.listen).
        #[arg(long)]
        control: Option<std::net::SocketAddr>,
        #[arg(long, env = "OUTRIGGER_API_KEY")]
        api_key: Option<String>,
        /// The HTTP ingest key (default: the config's ingest.api_key).
        #[arg(long, env = "OUTRIGGER_INGEST_KEY", hide_env_values = true)]
        ingest_key: Option<String>,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, short = 'n', default_value_t = 1_000_000)]
        events: u64,
        /// Approximate bytes per event line.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Events per second in total; 0 = flat out.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Wait for and time every line's answer.
        #[arg(long)]
        ack: bool,
        /// Lines per write (no-ack) or per HTTP request.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long = "type", default_value = "bench")]
        kind: String,
        #[arg(long)]
        json: bool,
        /// Measure the unix socket's own ceiling instead: the same load against a server that
        /// only counts lines (and answers them with --ack).
        #[arg(long)]
        baseline: bool,
        /// Measure a NATS server's own ceiling instead (no daemon): publish -n messages of
        /// about --size bytes straight to JetStream at this URL (comma-separated for a cluster)
        /// with async-nats, at most --nats-inflight waiting for their acknowledgement, to a
        /// stream made for the run and deleted after.
        #[arg(long, value_name = "URL")]
        nats_direct: Option<String>,
        /// With --nats-direct: messages waiting for their acknowledgement, at most.
        #[arg(long, default_value_t = 8192, requires = "nats_direct")]
        nats_inflight: usize,
        /// With --nats-direct: replicas of the stream.
        #[arg(long, default_value_t = 1, requires = "nats_direct")]
        nats_replicas: usize,
        /// Send nothing: watch the running daemon for this many seconds and report its CPU,
        /// wake-ups per thread and RSS.
        #[arg(long, value_name = "SECONDS")]
        idle: Option<f64>,
        /// The daemon's pid for the CPU figures (default: the socket's peer).
        #[arg(long)]
        pid: Option<u32>,
        /// A run-shaped load for tail sampling: this many runs open at once (split across
        /// connections), each of --run-events events ending in `run_end`; then new runs.
        #[arg(long, value_name = "N")]
        runs: Option<usize>,
        #[arg(long, default_value_t = 10, value_name = "M")]
        run_events: usize,
        /// The share of runs with a failed step.
        #[arg(long, default_value_t = 0.03)]
        failing: f64,
    },
    /// Run plugins offline over recorded events; prints the resulting events and a verdict summary.
    Replay {
        events: PathBuf,
        #[arg(long = "plugin", short = 'p', required = true)]
        plugins: Vec<PathBuf>,
        /// Run this component as the shadow of the last --plugin and print how they differ.
        #[arg(long, value_name = "NEW.wasm")]
        against: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Inspect a component: world, exports, imports, size, compile time.
    Check { file: PathBuf },
    /// Create a plugin project that builds as it is.
    New {
        name: String,
        /// rust, python, js or c.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Parent directory of the new project.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// A handler that POSTs through wasi:http (Rust only; needs a grants.http entry).
        #[arg(long)]
        http: bool,
    },
    /// Make a running daemon's shadow of NAME (`NAME.shadow.wasm`) the live version.
    Promote {
        name: String,
        #[command(flatten)]
        control: outrigger::cli::ControlArgs,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = config::locate(path);
    let cfg = config::load(path.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((cfg, path))
}

fn main() -> ExitCode {
    outrigger::memory::configure();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outrigger")
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(dispatch(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outrigger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config, watch_pids } => {
            let (cfg, path) = load_config(config.as_deref())?;
            let log = outrigger::logging::init(&cfg.log);
            let (stop, force) = (CancellationToken::new(), CancellationToken::new());
            tokio::spawn(signals(stop.clone(), force.clone()));
            let opts = outrigger::app::RunOptions { watch_pids, log };
            Ok(
                match outrigger::app::run(cfg, path, stop, force, opts).await? {
                    outrigger::app::Stopped::Drained => ExitCode::SUCCESS,
                    outrigger::app::Stopped::Forced => ExitCode::from(130),
                },
            )
        }
        Command::Debug {
            control,
            when,
            run_id,
            action,
            hits,
            keep,
        } => {
            let args = outrigger::cli::debug::DebugArgs {
                when,
                run_id,
                action,
                hits,
                keep,
            };
            outrigger::cli::debug::debug(&control.client()?, args).await
        }
        Command::Status {
            control,
            window,
            json,
        } => outrigger::cli::status(&control.client()?, &window, json).await,
        Command::Tail {
            control,
            types,
            run_ids,
            when,
            json,
        } => {
            let filter = outrigger::cli::TailArgs {
                types,
                run_ids,
                when,
            };
            outrigger::cli::tail(&control.client()?, &filter, json).await
        }
        Command::Runs {
            control,
            state,
            limit,
            json,
        } => outrigger::cli::runs(&control.client()?, state.as_deref(), limit, json).await,
        Command::Exec {
            config,
            quiet,
            command,
        } => {
            let (mut cfg, path) = load_config(config.as_deref())?;
            if quiet {
                cfg.log.level = "warn".into();
            }
            let log = outrigger::logging::init(&cfg.log);
            let opts = outrigger::app::RunOptions {
                watch_pids: vec![],
                log,
            };
            outrigger::cli::exec::exec(cfg, path, &command, opts).await
        }
        Command::Check { config } => check(config.as_deref()).await,
        Command::Send {
            socket,
            config,
            kind,
            data,
            run_id,
            input,
        } => {
            let socket = match socket {
                Some(s) => s,
                None => load_config(config.as_deref())?.0.ingest.socket,
            };
            let args = outrigger::cli::send::SendArgs {
                kind,
                data,
                run_id,
                input,
            };
            outrigger::cli::send::send(&socket, args).await
        }
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            outrigger::logging::init(&Config::default().log);
            Ok(if outrigger::plugins::cli::check(&file)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    lang,
                    dir,
                    http,
                },
        } => {
            outrigger::plugins::scaffold::new_project(&name, &lang, &dir, http)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Promote { name, control },
        } => outrigger::cli::promote(&control.client()?, &name).await,
        Command::Bench {
            config,
            socket,
            http,
            control,
            api_key,
            ingest_key,
            connections,
            events,
            size,
            rate,
            ack,
            batch,
            kind,
            json,
            baseline,
            idle,
            pid,
            runs,
            run_events,
            failing,
            otlp,
            spans,
            nats_direct,
            nats_inflight,
            nats_replicas,
        } => {
            if let Some(url) = nats_direct {
                let r = outrigger::bench::nats::direct(
                    &url,
                    events,
                    size,
                    nats_inflight.max(1),
                    nats_replicas,
                )
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!(
                        "nats direct: {} messages of {} B to {url} (stream of {} replicas, {} in flight) in {:.3}s: {:.0} acknowledged messages/s",
                        r.messages,
                        r.message_bytes,
                        r.replicas,
                        r.inflight,
                        r.seconds,
                        r.messages_per_second
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let (cfg, _) = load_config(config.as_deref())?;
            let daemon_socket = socket.clone().unwrap_or(cfg.ingest.socket.clone());
            let pid = match (pid, baseline) {
                (Some(p), _) => Some(p),
                (None, true) => None,
                (None, false) => {
                    match outrigger::bench::procstat::socket_peer_pid(&daemon_socket) {
                        Ok(p) => Some(p),
                        Err(e) if idle.is_some() => return Err(e),
                        Err(e) => {
                            eprintln!("daemon CPU not measured: {e:#}");
                            None
                        }
                    }
                }
            };
            if let Some(seconds) = idle {
                let pid = pid.context("--idle measures a daemon: give --pid or its socket")?;
                let usage = tokio::task::spawn_blocking(move || {
                    outrigger::bench::procstat::watch(pid, seconds)
                })
                .await??;
                if json {
                    println!("{}", serde_json::to_string_pretty(&usage)?);
                } else {
                    outrigger::bench::procstat::print(&usage);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let socket = match baseline {
                true => outrigger::bench::baseline_server(ack)?,
                false => socket.unwrap_or(cfg.ingest.socket),
            };
            let opts = outrigger::bench::BenchOptions {
                socket,
                http: http.filter(|_| !baseline),
                control: control.or(cfg.control.listen).filter(|_| !baseline),
                api_key: api_key.or(cfg.control.api_key),
                ingest_key: ingest_key.or(cfg.ingest.api_key),
                connections: connections.max(1),
                events,
                size,
                rate,
                ack,
                batch: if ack && http.is_none() { 1 } else { batch },
                event_type: kind,
                pid,
                runs: runs.map(|concurrent| outrigger::bench::RunShape {
                    concurrent: concurrent.max(1),
                    events_per_run: run_events,
                    failing,
                }),
                otlp: otlp.filter(|_| !baseline),
                spans,
            };
            let baseline_socket = baseline.then(|| opts.socket.clone());
            let report = tokio::task::spawn_blocking(move || outrigger::bench::run(&opts)).await?;
            if let Some(p) = baseline_socket {
                let _ = std::fs::remove_file(p);
            }
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                outrigger::bench::print(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            events,
            plugins,
            against,
            config,
        } => {
            let (cfg, _) = load_config(config.as_deref())?;
            outrigger::logging::init(&cfg.log);
            outrigger::plugins::cli::replay(
                &events,
                &plugins,
                against.as_deref(),
                &cfg.plugins,
                Arc::new(Metrics::new()),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// SIGINT or SIGTERM: graceful shutdown (`stop`). A second one: `force`.
async fn signals(stop: CancellationToken, force: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    stop.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    eprintln!("outrigger: second signal, exiting without draining");
    force.cancel();
}

/// Builds every stage of the config as `run` would, binding nothing; exit 1 on any failure.
async fn check(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (cfg, path) = load_config(path)?;
    let name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    println!("config: {name}: ok");
    let status = tokio::task::block_in_place(|| outrigger::app::check(&cfg))?;
    let mut ok = true;
    for p in &status {
        match &p.last_error {
            Some(e) => {
                ok = false;
                println!("plugin {}: FAILED: {e}", p.name);
            }
            None => println!("plugin {}: ok ({})", p.name, p.world),
        }
    }
    if status.is_empty() {
        println!("plugins: none in {}", cfg.plugins.dir.display());
    }
    println!("sinks: {} ok", cfg.sinks.len());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
