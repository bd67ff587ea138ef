//! A worker's plugin chain: runs a batch through the samplers, then the handlers.
//!
//! In: a batch of events that passed the native sampler. Out: the events that continue, in
//! order, with replaced events in place and emitted events after the batch of the plugin that
//! emitted them (so later plugins see them too). Drops are counted here (`sampled_out` for a
//! sampler's `false`, `plugin` for a handler's `drop` or a failed batch under
//! `on_error: drop`). Each chain owns one instance per plugin (its own stores: no lock on the
//! hot path); a failed instance is dropped and a new one made on the next batch, and so is one
//! whose linear memory grew past half the room `init` left it (`plugin_recycled_total`).
//! Quarantined plugins, and optional ones while the daemon is over budget, are bypassed: their
//! batches pass unchanged. A plugin's shadow (`NAME.shadow.wasm`) is called after it on the
//! same events, when it is not quarantined and the daemon is not over budget (shadows are
//! skipped first); its answers are compared with the live ones ([`super::shadow`]) and
//! discarded, and its failures count against the shadow alone. The chain ends when the worker
//! drops it.

use std::sync::Arc;
use std::time::Instant;

use super::bindings;
use super::imports::from_guest;
use super::instance::{EventRef, Live, Output, to_guest};
use super::load::{Plugin, PluginSet};
use super::shadow::{Answer, Shown};
use super::{ErrorKind, PluginError};
use crate::config::OnError;
use crate::event::Event;
use crate::metrics::DropReason;

/// What happened to events in one plugin, for `outrigger replay`'s summary.
#[derive(Clone, Debug, Default)]
pub struct SlotStats {
    pub calls: u64,
    pub kept: u64,
    pub dropped: u64,
    pub replaced: u64,
    pub emitted: u64,
    pub bypassed: u64,
    pub failed_batches: u64,
    /// Instances replaced between batches because their memory grew (see [`Live::memory_pressed`]).
    pub recycled: u64,
    pub errors: std::collections::BTreeMap<&'static str, u64>,
}

struct Slot {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    stats: SlotStats,
    shadow: Option<Box<Slot>>,
}

/// The plugins of one pipeline worker, with their live instances.
pub struct Chain {
    set: Arc<PluginSet>,
    slots: Vec<Slot>,
    skip_optional: bool,
}

impl Chain {
    /// Instantiates every plugin of `set` that is not quarantined. A failure counts as a
    /// plugin error (and may quarantine it); the next batch tries again.
    pub async fn new(set: Arc<PluginSet>) -> Chain {
        let mut slots = Vec::with_capacity(set.plugins.len());
        for plugin in &set.plugins {
            let mut slot = Slot {
                plugin: plugin.clone(),
                live: None,
                stats: SlotStats::default(),
                shadow: set.shadow_of(&plugin.name).map(|p| {
                    Box::new(Slot {
                        plugin: p,
                        live: None,
                        stats: SlotStats::default(),
                        shadow: None,
                    })
                }),
            };
            if !plugin.quarantined()
                && let Err(e) = slot.ensure_live().await
            {
                slot.fail(&e);
            }
            slots.push(slot);
        }
        Chain {
            set,
            slots,
            skip_optional: false,
        }
    }

    /// The set this chain was built from.
    pub fn set(&self) -> &Arc<PluginSet> {
        &self.set
    }

    /// True when there are no plugins: `run` would return its input.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// While the daemon is over its resource budget, plugins marked optional are skipped.
    pub fn set_skip_optional(&mut self, skip: bool) {
        self.skip_optional = skip;
    }

    /// Per plugin (in call order): name and what happened to events so far.
    pub fn stats(&self) -> Vec<(Arc<str>, SlotStats)> {
        self.slots
            .iter()
            .map(|s| (s.plugin.name.clone(), s.stats.clone()))
            .collect()
    }

    /// Runs samplers then handlers over `events`; returns the events that continue.
    pub async fn run(&mut self, mut events: Vec<Event>) -> Vec<Event> {
        for slot in &mut self.slots {
            if events.is_empty() {
                break;
            }
            let p = &slot.plugin;
            if (self.skip_optional && p.optional) || p.quarantined() {
                slot.stats.bypassed += events.len() as u64;
                continue;
            }
            events = slot.run(events, self.skip_optional).await;
        }
        events
    }
}

impl Slot {
    /// Makes sure there is a live instance (instantiated and initialised).
    async fn ensure_live(&mut self) -> Result<&mut Live, PluginError> {
        if self.live.is_none() {
            self.live = Some(Live::new(&self.plugin).await?);
        }
        self.live
            .as_mut()
            .ok_or_else(|| PluginError::new(ErrorKind::Trap, "no live instance".into()))
    }

    fn fail(&mut self, e: &PluginError) {
        *self.stats.errors.entry(e.kind.as_str()).or_default() += 1;
        self.plugin.failed(e);
        self.live = None;
    }

    /// One plugin over one batch (and its shadow, unless `skip_shadow`).
    async fn run(&mut self, events: Vec<Event>, skip_shadow: bool) -> Vec<Event> {
        let plugin = self.plugin.clone();
        // Routing: which events this plugin sees (`types`); the others pass by in place.
        let routed: Option<Vec<bool>> = plugin
            .types
            .as_ref()
            .map(|t| events.iter().map(|e| t.contains(&*e.kind)).collect());
        let n = match &routed {
            Some(r) => r.iter().filter(|x| **x).count(),
            None => events.len(),
        };
        if n == 0 {
            return events;
        }
        let input = match &routed {
            Some(r) => to_guest(events.iter().zip(r).filter(|(_, x)| **x).map(|(e, _)| e)),
            None => to_guest(events.iter()),
        };
        let start = Instant::now();
        let result = self.call(&plugin, &input).await;
        let took = start.elapsed();
        if let Some(sh) = self.shadow.as_deref_mut() {
            sh.shadow_run(&input, &result, took, skip_shadow).await;
        }
        let metrics = &plugin.ctx.metrics;
        match result {
            Ok((output, emitted)) => {
                plugin.succeeded();
                let mut out = apply(&mut self.stats, &plugin, events, routed.as_deref(), output);
                self.stats.emitted += emitted.len() as u64;
                out.extend(emitted);
                out
            }
            Err(e) => {
                self.fail(&e);
                self.stats.failed_batches += 1;
                match plugin.settings.on_error {
                    OnError::Pass => events,
                    OnError::Drop => {
                        metrics.dropped(DropReason::Plugin, n as u64);
                        self.stats.dropped += n as u64;
                        match routed {
                            None => Vec::new(),
                            Some(r) => events
                                .into_iter()
                                .zip(r)
                                .filter(|(_, x)| !*x)
                                .map(|(e, _)| e)
                                .collect(),
                        }
                    }
                }
            }
        }
    }

    /// This slot is a shadow: runs it on the live plugin's input and compares its answers with
    /// `live`'s; what it answers and emits goes nowhere.
    async fn shadow_run(
        &mut self,
        input: &[EventRef<'_>],
        live: &Result<(Checked, Vec<Event>), PluginError>,
        live_took: std::time::Duration,
        skip: bool,
    ) {
        let plugin = self.plugin.clone();
        if skip || plugin.quarantined() {
            plugin.health.shadow.lock().skipped += 1;
            self.stats.bypassed += input.len() as u64;
            return;
        }
        let start = Instant::now();
        let result = self.call(&plugin, input).await;
        let took = start.elapsed();
        let (shadow, shadow_emitted) = match result {
            Ok(r) => {
                plugin.succeeded();
                r
            }
            Err(e) => {
                self.fail(&e);
                self.stats.failed_batches += 1;
                plugin.health.shadow.lock().errors += 1;
                return;
            }
        };
        let Ok((live, live_emitted)) = live else {
            plugin.health.shadow.lock().live_errors += 1;
            return;
        };
        let shown: Vec<Shown<'_>> = input.iter().map(EventRef::shown).collect();
        let differing = plugin.health.shadow.lock().compare(
            &shown,
            &answers(live),
            &answers(&shadow),
            live_emitted.len(),
            shadow_emitted.len(),
            live_took,
            took,
        );
        if differing > 0 {
            let base = plugin.name.trim_end_matches(super::load::SHADOW_SUFFIX);
            plugin
                .ctx
                .metrics
                .plugin_shadow_diffs
                .with_label_values(&[base])
                .inc_by(differing);
        }
    }

    /// Calls the plugin over `input` (see [`Slot::call_once`]). A batch of more than one event
    /// that runs out of time is run again in two halves, in order, each once on a new instance
    /// with the bound of its own length, before the timeout counts: a busy machine does not
    /// fail a batch that passes in smaller pieces. One level only, so that a plugin that spins
    /// costs at most its bound plus the first half's before its error (one, for the batch)
    /// counts; the second half is not tried when the first fails. The halves' results are
    /// joined as one call's: verdicts in input order, emitted events of the first half first.
    /// Not for a plugin that can act outside its sandbox (`http`, or a writable directory):
    /// the retry would repeat what the timed-out call already sent or wrote.
    async fn call(
        &mut self,
        plugin: &Plugin,
        input: &[EventRef<'_>],
    ) -> Result<(Checked, Vec<Event>), PluginError> {
        let first = match self.call_once(plugin, input).await {
            Err(e) if e.kind == ErrorKind::Timeout && input.len() > 1 && !acts_outside(plugin) => e,
            other => return other,
        };
        // A failed instance is never called again.
        self.live = None;
        let retries = &plugin.ctx.metrics.plugin_split_retries;
        let (a, b) = input.split_at(input.len() / 2);
        let mut joined: Option<(Checked, Vec<Event>)> = None;
        for half in [a, b] {
            match self.call_once(plugin, half).await {
                Ok((checked, emitted)) => {
                    joined = Some(match joined {
                        None => (checked, emitted),
                        Some((c, mut e)) => {
                            e.extend(emitted);
                            (join(c, checked)?, e)
                        }
                    });
                }
                Err(e) => {
                    retries.with_label_values(&[&*plugin.name, "failed"]).inc();
                    tracing::debug!(plugin = %plugin.name, events = input.len(), half = half.len(), "batch timed out, and so did a half of it");
                    return Err(PluginError::new(
                        e.kind,
                        format!(
                            "{} (retried in halves after the batch of {} events timed out: {})",
                            e.message,
                            input.len(),
                            first.message
                        ),
                    ));
                }
            }
        }
        retries.with_label_values(&[&*plugin.name, "passed"]).inc();
        tracing::debug!(plugin = %plugin.name, events = input.len(), "batch timed out and passed in halves");
        joined.ok_or_else(|| PluginError::new(ErrorKind::Trap, "no halves".into()))
    }

    /// Calls the live instance (making one if needed) and checks the output's shape.
    async fn call_once(
        &mut self,
        plugin: &Plugin,
        input: &[EventRef<'_>],
    ) -> Result<(Checked, Vec<Event>), PluginError> {
        let live = self.ensure_live().await?;
        let start = Instant::now();
        let (result, fuel) = live.call(plugin, input).await;
        plugin.m_calls.inc();
        plugin.m_fuel.inc_by(fuel);
        plugin.m_duration.observe(start.elapsed().as_secs_f64());
        let pressed = live.memory_pressed();
        self.stats.calls += 1;
        let (output, emitted) = result?;
        let checked = check(output, input.len())?;
        if let Some((used, baseline)) = pressed {
            tracing::debug!(
                plugin = %plugin.name,
                used_mib = used >> 20,
                after_init_mib = baseline >> 20,
                "plugin instance replaced: its memory grew past half of its headroom"
            );
            self.live = None;
            self.stats.recycled += 1;
            plugin.m_recycled.inc();
        }
        Ok((checked, emitted))
    }
}

/// True when the plugin may have effects outside its sandbox: requests, or writes to a granted
/// directory.
fn acts_outside(plugin: &Plugin) -> bool {
    let g = &plugin.grants;
    !g.http.is_empty() || g.dirs.iter().any(|d| !d.read_only)
}

/// The checked outputs of two consecutive pieces of a batch, as one.
fn join(a: Checked, b: Checked) -> Result<Checked, PluginError> {
    match (a, b) {
        (Checked::Verdicts(mut a), Checked::Verdicts(b)) => {
            a.extend(b);
            Ok(Checked::Verdicts(a))
        }
        (Checked::Decisions(mut a), Checked::Decisions(b)) => {
            a.extend(b);
            Ok(Checked::Decisions(a))
        }
        _ => Err(PluginError::new(
            ErrorKind::BadOutput,
            "verdicts and sampler decisions in one batch".into(),
        )),
    }
}

/// A plugin's output after validation: lengths match, replaced events are well-formed.
enum Checked {
    Verdicts(Vec<Verdict>),
    Decisions(Vec<bool>),
}

enum Verdict {
    Keep,
    Drop,
    /// The new event; `received` is taken from the event it replaces.
    Replace(bindings::Event),
}

/// The checked answers in a form that compares (for shadows).
fn answers(c: &Checked) -> Vec<Answer> {
    match c {
        Checked::Decisions(d) => d.iter().map(|k| Answer::of_decision(*k)).collect(),
        Checked::Verdicts(v) => v
            .iter()
            .map(|v| match v {
                Verdict::Keep => Answer::Keep,
                Verdict::Drop => Answer::Drop,
                Verdict::Replace(e) => Answer::of_replacement(e),
            })
            .collect(),
    }
}

fn check(output: Output, n: usize) -> Result<Checked, PluginError> {
    let len = match &output {
        Output::Verdicts(v) => v.len(),
        Output::Decisions(d) => d.len(),
    };
    if len != n {
        return Err(PluginError::new(
            ErrorKind::BadOutput,
            format!("returned {len} results for {n} events"),
        ));
    }
    match output {
        Output::Decisions(d) => Ok(Checked::Decisions(d)),
        Output::Verdicts(v) => {
            let mut out = Vec::with_capacity(v.len());
            for (i, verdict) in v.into_iter().enumerate() {
                out.push(match verdict {
                    bindings::Verdict::Keep => Verdict::Keep,
                    bindings::Verdict::Drop => Verdict::Drop,
                    bindings::Verdict::Replace(ev) => {
                        // Validate now, so that a bad output leaves the batch untouched.
                        if let Err(e) = super::imports::validate(&ev) {
                            return Err(PluginError::new(
                                ErrorKind::BadOutput,
                                format!("verdict {i}: {}", e.0),
                            ));
                        }
                        Verdict::Replace(ev)
                    }
                });
            }
            Ok(Checked::Verdicts(out))
        }
    }
}

/// Applies checked results to the batch: routed events take their verdict in order, the
/// others pass. Counts drops.
fn apply(
    stats: &mut SlotStats,
    plugin: &Plugin,
    events: Vec<Event>,
    routed: Option<&[bool]>,
    output: Checked,
) -> Vec<Event> {
    let mut out = Vec::with_capacity(events.len());
    let mut dropped = 0u64;
    let is_routed = |i: usize| routed.is_none_or(|r| r[i]);
    match output {
        Checked::Decisions(d) => {
            let mut d = d.into_iter();
            for (i, ev) in events.into_iter().enumerate() {
                if is_routed(i) && !d.next().unwrap_or(true) {
                    dropped += 1;
                } else {
                    out.push(ev);
                }
            }
            plugin.ctx.metrics.dropped(DropReason::SampledOut, dropped);
        }
        Checked::Verdicts(v) => {
            let mut v = v.into_iter();
            for (i, ev) in events.into_iter().enumerate() {
                if !is_routed(i) {
                    out.push(ev);
                    continue;
                }
                match v.next().unwrap_or(Verdict::Keep) {
                    Verdict::Keep => out.push(ev),
                    Verdict::Drop => dropped += 1,
                    Verdict::Replace(new) => {
                        stats.replaced += 1;
                        match from_guest(new, ev.received) {
                            // The same event, changed: it keeps its id.
                            Ok(mut e) => {
                                e.id = ev.id;
                                out.push(e)
                            }
                            // Checked before; keep the original rather than lose it.
                            Err(_) => out.push(ev),
                        }
                    }
                }
            }
            plugin.ctx.metrics.dropped(DropReason::Plugin, dropped);
        }
    }
    stats.dropped += dropped;
    stats.kept += out.len() as u64;
    out
}
