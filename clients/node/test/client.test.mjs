// The Outrigger client against the real daemon ($OUTRIGGER_BIN) and without one: what observe()
// and flush() put in the file sink, what the stats count, and that nothing throws or waits when
// the daemon is absent, stopped (SIGSTOP: slow) or killed mid-run.
// In: a temporary config per test (helpers.mjs). Out: node:test results. Every daemon is killed
// and every directory removed in the test's cleanup.

import { test } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";

import { Outrigger } from "../dist/index.js";
import { makeEnv, waitFor } from "./helpers.mjs";

/** ts_ns of a raw sink line, exactly (it is past 2^53, JSON.parse would round it). */
function tsNs(raw) {
  return BigInt(/"ts_ns":(\d+)/.exec(raw)[1]);
}

test("observe and flush put exactly the events in the sink", { timeout: 60000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  await env.startDaemon();
  const warnings = [];
  const obs = new Outrigger({ socket: env.socket, warn: (m) => warnings.push(m) });

  const before = BigInt(Date.now() - 1) * 1_000_000n;
  assert.equal(obs.observe("test_start", { nodeid: "t::a" }, { runId: "run_001", ts: 1732290000 }), true);
  assert.equal(
    obs.observe(
      "test_end",
      { status: "failed", duration_ms: 12.5, tags: ["x", "ü"] },
      { runId: "run_001", attributes: { suite: "unit", host: "a b" }, ts: new Date(1732290001000) },
    ),
    true,
  );
  assert.equal(obs.observe("log", "a plain string"), true);
  assert.equal(obs.observe("bare"), true);
  assert.equal(await obs.flush(), true, env.log());
  const after = BigInt(Date.now() + 1) * 1_000_000n;

  const events = env.events();
  assert.equal(events.length, 4, env.log());
  const [a, b, c, d] = events;
  assert.deepEqual(
    { type: a.type, run_id: a.run_id, data: a.data, attributes: a.attributes },
    { type: "test_start", run_id: "run_001", data: { nodeid: "t::a" }, attributes: undefined },
  );
  assert.equal(tsNs(a.raw), 1732290000000000000n);
  assert.deepEqual(
    { type: b.type, run_id: b.run_id, data: b.data, attributes: b.attributes },
    {
      type: "test_end",
      run_id: "run_001",
      data: { status: "failed", duration_ms: 12.5, tags: ["x", "ü"] },
      attributes: { suite: "unit", host: "a b" },
    },
  );
  assert.equal(tsNs(b.raw), 1732290001000000000n);
  // Data is kept byte for byte as the client encoded it.
  assert.match(b.raw, /"data":\{"status":"failed","duration_ms":12\.5,"tags":\["x","ü"\]\}/);
  assert.equal(c.type, "log");
  assert.equal(c.data, "a plain string");
  assert.equal(c.run_id, undefined);
  assert.equal(d.type, "bare");
  assert.equal(d.data, null);
  // Without ts, the time of the observe() call.
  for (const e of [c, d]) {
    const ts = tsNs(e.raw);
    assert.ok(ts >= before && ts <= after, `ts_ns ${ts} not within [${before}, ${after}]`);
  }

  const s = obs.stats;
  assert.deepEqual(
    { sent: s.sent, dropped: s.dropped, lost: s.lost, errors: s.errors, reconnects: s.reconnects },
    { sent: 4, dropped: 0, lost: 0, errors: 0, reconnects: 0 },
  );
  assert.deepEqual(warnings, []);
  assert.equal(await obs.close(), true);
  assert.equal(obs.observe("after_close"), false);
});

test("what the daemon refuses is counted in errors, what cannot be encoded in dropped", { timeout: 60000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  await env.startDaemon();
  const obs = new Outrigger({ socket: env.socket, warn: () => {} });

  assert.equal(obs.observe("ok", { n: 1 }), true);
  // The daemon refuses these lines: attributes must be strings, a type at most 256 bytes.
  assert.equal(obs.observe("bad_attr", null, { attributes: { n: 1 } }), true);
  assert.equal(obs.observe("x".repeat(300)), true);
  // These never leave the process.
  const cycle = {};
  cycle.self = cycle;
  assert.equal(obs.observe("cycle", cycle), false);
  assert.equal(obs.observe("bigint", { n: 1n }), false);
  assert.equal(obs.observe(""), false);
  assert.equal(obs.observe(undefined), false);
  assert.equal(obs.observe("ok", { n: 2 }), true);
  assert.equal(await obs.flush(), true, env.log());

  assert.deepEqual(
    env.events().map((e) => [e.type, e.data]),
    [
      ["ok", { n: 1 }],
      ["ok", { n: 2 }],
    ],
  );
  const s = obs.stats;
  assert.deepEqual({ sent: s.sent, errors: s.errors, dropped: s.dropped, lost: s.lost }, { sent: 2, errors: 2, dropped: 4, lost: 0 });
  await obs.close();
});

test("a full buffer drops and counts instead of growing", { timeout: 60000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  await env.startDaemon();
  const obs = new Outrigger({ socket: env.socket, maxBufferEvents: 10, warn: () => {} });
  const results = [];
  // One synchronous burst: the pump cannot run in between, so the buffer's bound applies.
  for (let i = 0; i < 25; i++) results.push(obs.observe("burst", { i }));
  assert.deepEqual(results, [...Array(10).fill(true), ...Array(15).fill(false)]);
  assert.equal(obs.stats.dropped, 15);
  assert.equal(await obs.flush(), true);
  assert.deepEqual(
    env.events().map((e) => e.data.i),
    [...Array(10).keys()],
  );
  assert.equal(obs.stats.sent, 10);
  await obs.close();
});

test("with no daemon every call returns at once, nothing throws, and the loss is counted", { timeout: 60000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  const warnings = [];
  const obs = new Outrigger({ socket: path.join(env.dir, "nobody.sock"), warn: (m) => warnings.push(m) });

  for (let i = 0; i < 1000; i++) assert.equal(obs.observe("orphan", { i }, { runId: "r" }), true);
  // flush() does not wait for its 5 s timeout: the connect fails at once.
  const started = Date.now();
  assert.equal(await obs.flush(), false);
  const took = Date.now() - started;
  assert.ok(took < 4000, `flush took ${took} ms with no daemon`);
  assert.equal(obs.stats.lost, 1000);

  // Later events, through the background pump (and its back-off), are lost too, and counted.
  for (let i = 0; i < 50; i++) obs.observe("orphan", { i });
  await waitFor(() => obs.stats.lost === 1050, { what: "the background pump to count 50 more lost" });
  assert.equal(await obs.flush(100), false);

  const s = obs.stats;
  assert.deepEqual(
    { sent: s.sent, errors: s.errors, dropped: s.dropped, lost: s.lost, connected: s.connected },
    { sent: 0, errors: 0, dropped: 0, lost: 1050, connected: false },
  );
  assert.equal(warnings.length, 1, `one warning, not ${JSON.stringify(warnings)}`);
  assert.match(warnings[0], /not reachable at .*nobody\.sock/);
  assert.equal(await obs.close(), false);
});

test("a stopped (slow) daemon costs the caller nothing; what went past the backlog is lost, the rest arrives", { timeout: 90000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  const daemon = await env.startDaemon();
  const obs = new Outrigger({ socket: env.socket, maxBacklogBytes: 256 * 1024, warn: () => {} });
  assert.ok(obs.observe("warmup"));
  assert.equal(await obs.flush(), true);

  daemon.kill("SIGSTOP");
  const payload = { blob: "x".repeat(1000) };
  let accepted = 0;
  // 4 MB in batches, with the pump running in between: the socket fills, then the backlog bound.
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < 100; i++) if (obs.observe("slow", { round, i, ...payload })) accepted++;
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(accepted, 4000);
  assert.equal(await obs.flush(300), false, "a flush cannot complete while the daemon is stopped");
  assert.ok(obs.stats.lost > 0, `nothing counted as lost: ${JSON.stringify(obs.stats)}`);

  daemon.kill("SIGCONT");
  assert.equal(await obs.flush(20000), true, env.log());
  const s = obs.stats;
  // Every accepted event is accounted for once: delivered or lost.
  assert.equal(s.sent + s.lost, 4001, JSON.stringify(s));
  assert.equal(s.errors, 0, JSON.stringify(s));
  assert.ok(s.sent > 1, `the backlog within its bound was delivered: ${JSON.stringify(s)}`);
  t.diagnostic(`sent ${s.sent}, lost ${s.lost}`);
  assert.equal(env.events().filter((e) => e.type === "slow").length, s.sent - 1);
  await obs.close();
});

test("a daemon killed mid-run: the loss is counted, the client reconnects to the next one", { timeout: 90000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  const warnings = [];
  const obs = new Outrigger({ socket: env.socket, warn: (m) => warnings.push(m) });
  let daemon = await env.startDaemon();
  for (let i = 0; i < 10; i++) obs.observe("before", { i });
  assert.equal(await obs.flush(), true, env.log());

  daemon.kill("SIGKILL");
  await waitFor(() => daemon.exitCode !== null || daemon.signalCode !== null, { what: "the daemon to die" });
  await waitFor(() => !obs.stats.connected, { what: "the client to see the connection close" });
  for (let i = 0; i < 10; i++) assert.equal(obs.observe("during", { i }), true);
  assert.equal(await obs.flush(), false);
  assert.equal(obs.stats.lost, 10);
  assert.equal(warnings.length, 1, JSON.stringify(warnings));

  daemon = await env.startDaemon();
  for (let i = 0; i < 5; i++) obs.observe("after", { i });
  assert.equal(await obs.flush(), true, env.log());

  assert.deepEqual(
    env.events().map((e) => `${e.type}/${e.data.i}`),
    [...[...Array(10).keys()].map((i) => `before/${i}`), ...[...Array(5).keys()].map((i) => `after/${i}`)],
  );
  const s = obs.stats;
  assert.deepEqual(
    { sent: s.sent, lost: s.lost, errors: s.errors, reconnects: s.reconnects },
    { sent: 15, lost: 10, errors: 0, reconnects: 1 },
  );
  assert.equal(warnings.length, 1, "still the one warning");
  await obs.close();
});

test("with debug, observeWait() is held by a pause breakpoint until continue", { timeout: 60000 }, async (t) => {
  const env = await makeEnv();
  t.after(() => env.cleanup());
  await env.startDaemon();
  const api = async (method, p, body) => {
    const r = await fetch(`${env.controlUrl}${p}`, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return r.json();
  };
  await api("POST", "/v1/breakpoints", { when: 'type == "checkout"', action: "pause" });
  const debugged = new Outrigger({ socket: env.socket, debug: true });
  const plain = new Outrigger({ socket: env.socket });
  assert.equal(await debugged.observeWait("cart", { items: 2 }, { runId: "o1" }), true, env.log());
  let released = false;
  const held = debugged.observeWait("checkout", { total: 9 }, { runId: "o1" }).then((ok) => {
    released = true;
    return ok;
  });
  let session;
  await waitFor(
    async () => {
      session = (await api("GET", "/v1/debug?state=paused")).sessions[0];
      return session !== undefined;
    },
    { what: "a paused session", log: env.log },
  );
  assert.equal(session.connection.held, true);
  assert.equal(released, false, "held at the breakpoint");
  // A client that did not opt in is never held.
  assert.equal(plain.observe("checkout", { total: 1 }), true);
  assert.equal(await plain.flush(), true);
  assert.equal(released, false);
  await api("POST", `/v1/debug/${session.id}/continue`, {});
  assert.equal(await held, true);
  await debugged.close();
  await plain.close();
});
