//! Structured logs through `tracing`: text for people or JSON for machines, on stderr, with a
//! level that can change while the daemon runs.
//!
//! In: the `log` section of the config (`format`, `level` as a `tracing` filter such as
//! `info` or `outrigger=debug,warn`). Out: the global subscriber, and a [`LogControl`] handle
//! that the config reloader (and `PUT /v1/log`) call to swap the filter live. The format is
//! fixed for the life of the process. Nothing here runs on its own.

use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter text in force (`EnvFilter` does not give its source back).
    current: Arc<Mutex<String>>,
}

impl LogControl {
    /// Replaces the filter (`debug`, `outrigger=debug,warn`, …); `Err` says why it was refused,
    /// and the previous filter stays.
    pub fn set_level(&self, filter: &str) -> Result<(), String> {
        let new = EnvFilter::try_new(filter).map_err(|e| format!("not a log filter: {e}"))?;
        self.handle
            .reload(new)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        *self.current.lock() = filter.to_string();
        tracing::info!(filter, "log level changed");
        Ok(())
    }

    /// The filter in force.
    pub fn level(&self) -> String {
        self.current.lock().clone()
    }

    /// [`set_level`](Self::set_level) as a boxed function, the form the reloader takes.
    pub fn setter(&self) -> crate::reload::LogLevelFn {
        let me = self.clone();
        Box::new(move |filter: &str| me.set_level(filter))
    }
}

/// Installs the global subscriber. `None` when one is already installed (tests, a second
/// call): logging then goes wherever the first one sends it and the level cannot change.
/// A filter that does not parse falls back to `info`.
pub fn init(cfg: &LogConfig) -> Option<LogControl> {
    let (filter, level) = match EnvFilter::try_new(&cfg.level) {
        Ok(f) => (f, cfg.level.clone()),
        Err(_) => (EnvFilter::new("info"), "info".to_string()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match cfg.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .ok()?;
    Some(LogControl {
        handle,
        current: Arc::new(Mutex::new(level)),
    })
}
