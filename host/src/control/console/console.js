// The Outrigger console: plain JavaScript over the control API, no framework, no build step.
// Pages (by location hash): #/overview, #/runs, #/run/ID, #/tail (#/tail/follow starts it),
// #/debug. Every request sends
// the key (taken once from ?api_key= and kept for the tab) as X-API-Key; the WebSocket tail
// takes it as ?api_key=. Only the page shown polls. At any event rate the page stays usable:
// the live tail asks the daemon for at most "Max/s" events a second (rate=), keeps the last
// TAIL_ROWS rows and redraws at most four times a second; runs and timelines are capped too.
// Everything from the daemon is put in the page as text (textContent), never as HTML.
"use strict";

const TAIL_ROWS = 200;
const TIMELINE_MAX = 500;
const params = new URLSearchParams(location.search);
if (params.get("api_key") !== null) sessionStorage.setItem("outrigger.key", params.get("api_key"));
const KEY = sessionStorage.getItem("outrigger.key") || "";

const $ = (id) => document.getElementById(id);

/** An element with attributes (on* are listeners) and children (strings become text). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function pill(text) {
  return el("span", { class: "pill " + text }, text);
}

async function api(method, path, body) {
  const headers = {};
  if (KEY) headers["X-API-Key"] = KEY;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let v = null;
  try {
    v = await r.json();
  } catch (_) {
    v = null;
  }
  if (!r.ok) throw new Error((v && v.error) || r.status + " " + r.statusText);
  return v;
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill " + (cls || "");
}

const fmt = (n) => (n === undefined || n === null ? "–" : Math.round(n).toLocaleString("en"));
const bytes = (n) => (n > 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n > 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B");
const time = (ns) => (ns ? new Date(ns / 1e6).toISOString().slice(11, 23) : "");
const short = (v) => {
  const s = v === undefined ? "" : JSON.stringify(v);
  return s.length > 160 ? s.slice(0, 157) + "…" : s;
};

// An event id (32 hex digits: a per-process prefix, then a counter) by its last 12 digits;
// the whole id is in the cell's title and in the event's JSON.
const shortId = (id) => (id ? "…" + id.slice(-12) : "");

function fill(tbody, rows) {
  const b = typeof tbody === "string" ? $(tbody).tBodies[0] : tbody;
  b.replaceChildren(...rows);
}

// ---- pages and polling ------------------------------------------------------------------

let timer = null;
let current = null;

function route() {
  const h = location.hash || "#/overview";
  const [, page, ...rest] = h.split("/");
  const name = ["overview", "runs", "run", "tail", "debug"].includes(page) ? page : "overview";
  if (timer) clearInterval(timer);
  timer = null;
  if (current === "tail" && name !== "tail") stopTail();
  current = name;
  for (const p of document.querySelectorAll(".page")) p.classList.remove("active");
  $("page-" + name).classList.add("active");
  for (const a of document.querySelectorAll("nav a")) a.classList.remove("active");
  const nav = $("nav-" + (name === "run" ? "runs" : name));
  if (nav) nav.classList.add("active");
  const every = (ms, f) => {
    f();
    timer = setInterval(f, ms);
  };
  if (name === "overview") every(2000, overview);
  if (name === "runs") every(3000, runs);
  if (name === "run") showRun(decodeURIComponent(rest.join("/")));
  if (name === "debug") every(1000, debugPage);
  // #/tail/follow starts following at once (a page to leave open, or to bookmark).
  if (name === "tail" && rest[0] === "follow" && !ws) startTail();
}

window.addEventListener("hashchange", route);

// ---- overview ---------------------------------------------------------------------------

let last = null;

async function overview() {
  try {
    const [health, stats, plugins] = await Promise.all([
      api("GET", "/v1/health").catch((e) => ({ status: "unhealthy", components: {}, error: e.message })),
      api("GET", "/v1/stats"),
      api("GET", "/v1/plugins"),
    ]);
    setStatus(health.status, health.status);
    const now = performance.now();
    const delivered = Object.values(stats.events.delivered || {}).reduce((a, b) => a + b, 0);
    const sample = { at: now, received: stats.events.received, delivered, dropped: stats.events.dropped };
    const dt = last ? (now - last.at) / 1000 : 0;
    const rate = (a, b) => (last && dt > 0 ? Math.max(0, (a - b) / dt) : undefined);
    $("rate-in").textContent = fmt(rate(sample.received, last && last.received));
    $("rate-out").textContent = fmt(rate(sample.delivered, last && last.delivered));
    const q = stats.queue;
    const pct = q.capacity ? (100 * q.depth) / q.capacity : 0;
    $("queue-fill").textContent = fmt(q.depth) + " / " + fmt(q.capacity);
    $("queue-bar").style.width = pct.toFixed(1) + "%";
    $("uptime").textContent = Math.round(stats.uptime_seconds) + " s";
    fill(
      "components",
      Object.entries(health.components || {}).map(([name, c]) =>
        el("tr", {}, el("td", {}, name), el("td", {}, pill(c.status)), el("td", {}, c.reason || "")),
      ),
    );
    fill(
      "drops",
      Object.entries(stats.events.dropped || {}).map(([reason, n]) =>
        el(
          "tr",
          {},
          el("td", {}, reason),
          el("td", { class: "num" }, fmt(n)),
          el("td", { class: "num" }, fmt(rate(n, last && last.dropped[reason]))),
        ),
      ),
    );
    const list = plugins.plugins || [];
    fill(
      "plugins",
      list.length
        ? list.map((p) =>
            el(
              "tr",
              {},
              el("td", {}, p.name),
              el("td", {}, p.world),
              el("td", {}, pill(p.quarantined ? "quarantined" : String(p.state))),
              el("td", { class: "num" }, fmt(p.calls)),
              el("td", { class: "num" }, fmt(p.errors)),
            ),
          )
        : [el("tr", {}, el("td", { colspan: 5, class: "hint" }, "No plugins loaded."))],
    );
    last = sample;
  } catch (e) {
    setStatus(e.message, "error");
  }
}

// ---- runs -------------------------------------------------------------------------------

async function runs() {
  const state = $("runs-state").value;
  try {
    const v = await api("GET", "/v1/runs?limit=200" + (state ? "&state=" + state : ""));
    $("runs-count").textContent = v.count + " runs (most recent first, at most 200 shown)";
    fill(
      "runs",
      v.runs.map((r) =>
        el(
          "tr",
          { class: "click", "data-run": r.run_id, onclick: () => (location.hash = "#/run/" + encodeURIComponent(r.run_id)) },
          el("td", { class: "mono" }, r.run_id),
          el("td", {}, pill(r.state)),
          el("td", {}, r.kept_by || ""),
          el("td", { class: "num" }, fmt(r.events)),
          el("td", { class: "num" }, bytes(r.bytes)),
          el("td", {}, time(r.last_ts_ns)),
          el("td", { class: "data" }, Object.entries(r.types || {}).map(([t, n]) => t + "×" + n).join(" ")),
        ),
      ),
    );
  } catch (e) {
    $("runs-count").textContent = e.message;
  }
}

$("runs-state").addEventListener("change", runs);
$("runs-refresh").addEventListener("click", runs);

async function showRun(id) {
  $("run-title").textContent = "Run " + id;
  $("timeline").replaceChildren();
  $("run-event").textContent = "Click an event to see its JSON.";
  try {
    const r = await api("GET", "/v1/runs/" + encodeURIComponent(id));
    $("run-summary").textContent =
      r.state + (r.kept_by ? " (kept by " + r.kept_by + ")" : "") + " · " + r.events_total + " events · " + bytes(r.bytes) +
      (r.count < r.events_total ? " · the most recent " + r.count + " shown" : "");
    const events = r.events.slice(-TIMELINE_MAX);
    const t0 = events.length ? events[0].ts_ns : 0;
    $("timeline").replaceChildren(
      ...events.map((e) => {
        const li = el(
          "li",
          { title: e.id ? "id " + e.id : "" },
          el("span", { class: "t" }, "+" + ((e.ts_ns - t0) / 1e6).toFixed(1) + " ms"),
          el("b", {}, e.type),
          " ",
          el("span", { class: "hint mono" }, short(e.data)),
        );
        li.addEventListener("click", () => {
          for (const o of $("timeline").children) o.classList.remove("sel");
          li.classList.add("sel");
          $("run-event").textContent = JSON.stringify(e, null, 2);
        });
        return li;
      }),
    );
  } catch (e) {
    $("run-summary").textContent = e.message;
  }
}

// ---- live tail --------------------------------------------------------------------------

let ws = null;
let incoming = [];
let drawScheduled = false;
let counts = { got: 0, lagged: 0, sampled: 0 };

function stopTail() {
  if (ws) ws.close();
  ws = null;
}

function startTail() {
  stopTail();
  const q = new URLSearchParams();
  if (KEY) q.set("api_key", KEY);
  for (const [k, id] of [["type", "tail-type"], ["run_id", "tail-run"], ["when", "tail-when"], ["rate", "tail-rate"]]) {
    const v = $(id).value.trim();
    if (v) q.set(k, v);
  }
  counts = { got: 0, lagged: 0, sampled: 0 };
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws/tail?" + q;
  const sock = new WebSocket(url);
  ws = sock;
  $("tail-info").textContent = "Connecting…";
  sock.onmessage = (m) => {
    let v;
    try {
      v = JSON.parse(m.data);
    } catch (_) {
      return;
    }
    if (v.subscribed) $("tail-info").textContent = "Following.";
    else if (v.lagged) counts.lagged += v.lagged.missed_events;
    else if (v.sampled) counts.sampled += v.sampled.skipped_events;
    else {
      counts.got++;
      incoming.push(v);
      if (incoming.length > TAIL_ROWS) incoming = incoming.slice(-TAIL_ROWS);
    }
    scheduleDraw();
  };
  sock.onclose = (e) => {
    if (ws === sock) {
      ws = null;
      $("tail-info").textContent = "Stopped" + (e.code === 1006 ? " (the connection failed: check the filters and the key)" : "") + ".";
    }
  };
}

function scheduleDraw() {
  if (drawScheduled) return;
  drawScheduled = true;
  setTimeout(() => {
    drawScheduled = false;
    const body = $("tail").tBodies[0];
    const rows = incoming.reverse().map((e) =>
      el(
        "tr",
        {
          class: "click",
          onclick: (ev) => {
            for (const o of body.children) o.classList.remove("sel");
            ev.currentTarget.classList.add("sel");
            $("tail-event").textContent = JSON.stringify(e, null, 2);
          },
        },
        el("td", {}, time(e.ts_ns)),
        el("td", { class: "mono", title: e.id || "" }, shortId(e.id)),
        el("td", {}, e.type),
        el("td", { class: "mono" }, e.run_id || ""),
        el("td", { class: "data" }, short(e.data)),
      ),
    );
    incoming = [];
    body.prepend(...rows);
    while (body.children.length > TAIL_ROWS) body.lastChild.remove();
    if (ws) {
      $("tail-info").textContent =
        "Following: " + fmt(counts.got) + " events shown" +
        (counts.sampled ? ", " + fmt(counts.sampled) + " skipped by Max/s" : "") +
        (counts.lagged ? ", " + fmt(counts.lagged) + " missed (this page was too slow)" : "") + ".";
    }
  }, 250);
}

$("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  startTail();
});
$("tail-stop").addEventListener("click", stopTail);

// ---- breakpoints and sessions -----------------------------------------------------------

let selected = null;
let selectedState = null;

async function debugPage() {
  try {
    const [bps, ss] = await Promise.all([api("GET", "/v1/breakpoints"), api("GET", "/v1/debug?limit=100")]);
    fill(
      "breakpoints",
      bps.breakpoints.length
        ? bps.breakpoints.map((b) =>
            el(
              "tr",
              { "data-id": b.id },
              el("td", { class: "mono" }, b.id),
              el("td", { class: "mono" }, b.when || ""),
              el("td", { class: "mono" }, b.run_id || "any"),
              el("td", {}, pill(b.action)),
              el("td", { class: "num" }, b.hit_count + (b.hits ? " / " + b.hits : "")),
              el("td", {}, el("button", { class: "danger", onclick: () => deleteBreakpoint(b.id) }, "Delete")),
            ),
          )
        : [el("tr", {}, el("td", { colspan: 6, class: "hint" }, "No breakpoint is set."))],
    );
    $("sessions-fill").textContent =
      ss.stored + " kept, " + bytes(ss.stored_bytes) + "; a pause holds at most " + ss.max_pause_ms / 1000 + " s";
    fill(
      "sessions",
      ss.sessions.map((s) =>
        el(
          "tr",
          { class: "click" + (s.id === selected ? " sel" : ""), "data-session": s.id, onclick: () => selectSession(s.id) },
          el("td", { class: "mono" }, s.id),
          el("td", { class: "mono" }, s.breakpoint + (s.step ? " (step)" : "")),
          el("td", {}, pill(s.state), s.released ? " " + s.released : ""),
          el("td", {}, s.type),
          el("td", { class: "mono" }, s.run_id || ""),
          el("td", {}, s.state === "paused" ? el("button", { onclick: (e) => (e.stopPropagation(), release(s.id, "continue")) }, "Continue") : ""),
        ),
      ),
    );
    const sel = ss.sessions.find((s) => s.id === selected);
    if (sel && sel.state !== selectedState) selectSession(selected);
  } catch (e) {
    $("bp-error").textContent = e.message;
  }
}

$("bp-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { action: $("bp-action").value };
  if ($("bp-when").value.trim()) body.when = $("bp-when").value.trim();
  if ($("bp-run").value.trim()) body.run_id = $("bp-run").value.trim();
  if ($("bp-hits").value) body.hits = Number($("bp-hits").value);
  try {
    const b = await api("POST", "/v1/breakpoints", body);
    $("bp-error").textContent = "Set " + b.id + ".";
    debugPage();
  } catch (err) {
    $("bp-error").textContent = err.message;
  }
});

async function deleteBreakpoint(id) {
  try {
    await api("DELETE", "/v1/breakpoints/" + encodeURIComponent(id));
  } catch (e) {
    $("bp-error").textContent = e.message;
  }
  debugPage();
}

async function release(id, how) {
  try {
    await api("POST", "/v1/debug/" + id + "/" + how, {});
  } catch (e) {
    $("bp-error").textContent = e.message;
  }
  debugPage();
}

async function selectSession(id) {
  selected = id;
  let s;
  try {
    s = await api("GET", "/v1/debug/" + id);
  } catch (e) {
    $("session").replaceChildren(el("p", { class: "hint" }, e.message));
    return;
  }
  selectedState = s.state;
  const paused = s.state === "paused";
  const c = s.connection;
  const expr = el("input", { id: "eval-expr", placeholder: "data.total * 2" });
  const out = el("pre", { id: "eval-out", class: "json" }, "");
  const evaluate = async () => {
    try {
      const v = await api("POST", "/v1/debug/" + id + "/evaluate", { expr: expr.value });
      out.textContent = JSON.stringify(v.value, null, 2);
    } catch (e) {
      out.textContent = e.message;
    }
  };
  expr.addEventListener("keydown", (e) => e.key === "Enter" && evaluate());
  const run = s.run && s.run.events ? s.run.events : [];
  $("session").replaceChildren(
    el("h2", {}, "Session " + s.id + " ", pill(s.state), s.released ? " released: " + s.released : ""),
    el(
      "p",
      { class: "hint" },
      c
        ? "Connection " + c.id + (c.pid ? " (pid " + c.pid + ")" : "") + (c.held ? ": held for " + c.held_ms + " ms of at most " + c.max_pause_ms + " ms" : "")
        : s.note || "Nothing is held by this session.",
    ),
    el(
      "div",
      { class: "actions" },
      el("button", { id: "btn-continue", disabled: paused ? null : "", onclick: () => release(id, "continue").then(() => selectSession(id)) }, "Continue"),
      el("button", { id: "btn-step", class: "plain", disabled: paused ? null : "", onclick: () => release(id, "step").then(() => selectSession(id)) }, "Step"),
      expr,
      el("button", { id: "btn-eval", class: "plain", onclick: evaluate }, "Evaluate"),
    ),
    out,
    el("h2", {}, "Event"),
    el("pre", { class: "json", id: "session-event" }, JSON.stringify(s.event, null, 2)),
    el("h2", {}, "Its run" + (s.run_id ? " " + s.run_id : "") + " (recent events)"),
    run.length
      ? el("ol", { id: "session-run" }, ...run.map((e) => el("li", {}, el("b", {}, e.type), " ", el("span", { class: "hint mono" }, short(e.data)))))
      : el("p", { class: "hint" }, "No run."),
  );
}

route();
