// OutriggerSidecar with the real daemon ($OUTRIGGER_BIN): start and ready, events through it,
// a kill -9 followed by a restart and ready again, restarts for failed health checks and for
// memory, gave-up after maxRestarts, a start that fails, and stop() by SIGTERM.
// In: a temporary config per test (helpers.mjs). Out: node:test results. Each test stops its
// sidecar; env.cleanup() removes the directory.

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

import { Outrigger, OutriggerSidecar, controlUrlFromConfig } from "../dist/index.js";
import { BIN, alive, makeEnv, nextEvent, waitFor } from "./helpers.mjs";

/** Records every event of the sidecar, in order. */
function record(sidecar) {
  const seen = [];
  for (const name of ["ready", "exit", "restart", "gave-up"]) {
    sidecar.on(name, (payload) => seen.push({ name, ...payload }));
  }
  return seen;
}

function sidecarFor(env, options = {}) {
  const fd = env.logFd();
  const s = new OutriggerSidecar({
    binary: BIN,
    config: env.config,
    stdio: ["ignore", fd, fd],
    restartDelay: 200,
    healthInterval: 200,
    readyTimeout: 20000,
    ...options,
  });
  return { s, fd };
}

test("start, ready, events through it, kill -9, restart, ready again, stop", { timeout: 90000 }, async (t) => {
  const env = await makeEnv();
  const { s, fd } = sidecarFor(env);
  t.after(async () => {
    await s.stop();
    fs.closeSync(fd);
    await env.cleanup();
  });
  const seen = record(s);
  assert.equal(s.controlUrl, env.controlUrl, "control.listen read from the config");

  await s.start();
  assert.equal(s.state, "ready");
  const pid1 = s.pid;
  assert.ok(alive(pid1));
  assert.deepEqual(seen, [{ name: "ready", pid: pid1, restarts: 0 }]);
  assert.equal(await s.isHealthy(), true, env.log());

  const obs = new Outrigger({ socket: env.socket, warn: () => {} });
  obs.observe("job_start", { n: 1 }, { runId: "job-1" });
  assert.equal(await obs.flush(), true, env.log());

  const ready = nextEvent(s, "ready");
  process.kill(pid1, "SIGKILL");
  const again = await ready;
  assert.notEqual(again.pid, pid1);
  assert.equal(again.restarts, 1);
  assert.equal(s.state, "ready");
  assert.deepEqual(seen.slice(1, 3), [
    { name: "exit", pid: pid1, code: null, signal: "SIGKILL", expected: false },
    { name: "restart", attempt: 1, delay: 200, reason: "exit" },
  ]);
  assert.equal(await s.isHealthy(), true, env.log());

  // The client reconnects to the new daemon on its own (the stale socket file was replaced).
  obs.observe("job_end", { n: 2 }, { runId: "job-1" });
  assert.equal(await obs.flush(), true, env.log());
  assert.deepEqual(
    env.events().map((e) => [e.type, e.run_id]),
    [
      ["job_start", "job-1"],
      ["job_end", "job-1"],
    ],
  );
  await obs.close();

  const pid2 = s.pid;
  const exit = await s.stop();
  // SIGTERM: the daemon drains and exits 0.
  assert.deepEqual(exit, { pid: pid2, code: 0, signal: null, expected: true });
  assert.equal(s.state, "stopped");
  assert.equal(s.pid, undefined);
  assert.equal(alive(pid2), false);
  assert.equal(await s.isHealthy(), false);
  assert.deepEqual(seen.at(-1), { name: "exit", pid: pid2, code: 0, signal: null, expected: true });
  assert.equal(seen.filter((e) => e.name === "restart").length, 1, JSON.stringify(seen));
});

test("gave-up after maxRestarts when the daemon no longer starts", { timeout: 90000 }, async (t) => {
  const env = await makeEnv();
  const { s, fd } = sidecarFor(env, { restartDelay: 100, maxRestarts: 3 });
  t.after(async () => {
    await s.stop();
    fs.closeSync(fd);
    await env.cleanup();
  });
  const seen = record(s);
  await s.start();
  const pid = s.pid;

  // The running daemon refuses this config on reload and keeps going; a new one exits at once.
  fs.appendFileSync(env.config, "sampling: {default_rate: 7}\n");
  const gaveUp = nextEvent(s, "gave-up");
  process.kill(pid, "SIGKILL");
  assert.deepEqual(await gaveUp, { restarts: 3, reason: "not-ready" });
  assert.equal(s.state, "gave-up");
  assert.equal(s.pid, undefined);

  const restarts = seen.filter((e) => e.name === "restart");
  // Exponential back-off from restartDelay.
  assert.deepEqual(
    restarts.map((e) => [e.attempt, e.delay, e.reason]),
    [
      [1, 100, "exit"],
      [2, 200, "not-ready"],
      [3, 400, "not-ready"],
    ],
  );
  // Every restarted daemon exited on its own with an error.
  const exits = seen.filter((e) => e.name === "exit").slice(1);
  assert.equal(exits.length, 3, JSON.stringify(seen));
  for (const e of exits) assert.deepEqual([e.code === 0, e.expected], [false, false], JSON.stringify(e));
  assert.match(env.log(), /default_rate/);
  assert.equal(seen.filter((e) => e.name === "ready").length, 1);
});

test("start() rejects when the daemon exits at once, and restarts nothing", { timeout: 60000 }, async (t) => {
  const env = await makeEnv("sampling: {default_rate: 7}\n");
  const { s, fd } = sidecarFor(env);
  t.after(async () => {
    await s.stop();
    fs.closeSync(fd);
    await env.cleanup();
  });
  const seen = record(s);
  await assert.rejects(s.start(), /exited \(code 1\) before it was ready/);
  assert.equal(s.state, "stopped");
  assert.deepEqual(
    seen.map((e) => e.name),
    ["exit"],
  );
});

test("start() rejects when the binary is missing", { timeout: 30000 }, async () => {
  const s = new OutriggerSidecar({ binary: "/nonexistent/outrigger", controlUrl: "http://127.0.0.1:9" });
  await assert.rejects(s.start(), /could not start \/nonexistent\/outrigger/);
  assert.equal(s.state, "stopped");
});

test("failed health checks restart the daemon", { timeout: 90000 }, async (t) => {
  // With control.api_key set, /readyz answers but /v1/health needs the key: a wrong key makes
  // every health check fail.
  const env = await makeEnv("");
  fs.writeFileSync(
    env.config,
    fs.readFileSync(env.config, "utf8").replace(/control: \{listen: ("[^"]+")\}/, 'control: {listen: $1, api_key: "right"}'),
  );
  const { s, fd } = sidecarFor(env, { apiKey: "wrong", failureThreshold: 2, maxRestarts: 1 });
  t.after(async () => {
    await s.stop();
    fs.closeSync(fd);
    await env.cleanup();
  });
  const seen = record(s);
  await s.start();
  const pid1 = s.pid;
  const restart = await nextEvent(s, "restart");
  assert.deepEqual(restart, { attempt: 1, delay: 200, reason: "unhealthy" });
  assert.deepEqual(seen[1], { name: "exit", pid: pid1, code: 0, signal: null, expected: true });
  await waitFor(() => seen.some((e) => e.name === "gave-up"), { what: "gave-up", log: env.log });
  assert.deepEqual(seen.at(-1), { name: "gave-up", restarts: 1, reason: "unhealthy" });
  assert.equal(seen.filter((e) => e.name === "ready").length, 2);
});

test("a daemon over maxMemoryMB is restarted", { timeout: 90000 }, async (t) => {
  const env = await makeEnv();
  // Any daemon's RSS is over 1 MB.
  const { s, fd } = sidecarFor(env, { maxMemoryMB: 1, maxRestarts: 1 });
  t.after(async () => {
    await s.stop();
    fs.closeSync(fd);
    await env.cleanup();
  });
  const seen = record(s);
  await s.start();
  assert.deepEqual(await nextEvent(s, "restart"), { attempt: 1, delay: 200, reason: "memory" });
  assert.deepEqual(await nextEvent(s, "gave-up"), { restarts: 1, reason: "memory" });
  assert.deepEqual(
    seen.map((e) => e.name),
    ["ready", "exit", "restart", "ready", "exit", "gave-up"],
  );
});

test("stop() sends SIGKILL to a daemon that ignores SIGTERM for stopTimeout", { timeout: 60000 }, async (t) => {
  const env = await makeEnv();
  const { s, fd } = sidecarFor(env, { stopTimeout: 300 });
  t.after(async () => {
    await s.stop();
    fs.closeSync(fd);
    await env.cleanup();
  });
  await s.start();
  const pid = s.pid;
  // A stopped process cannot act on SIGTERM; SIGKILL still ends it.
  process.kill(pid, "SIGSTOP");
  const exit = await s.stop();
  assert.deepEqual(exit, { pid, code: null, signal: "SIGKILL", expected: true });
  assert.equal(alive(pid), false);
});

test("controlUrlFromConfig reads control.listen from flow and block YAML", (t) => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? "/tmp", "outrigger-cfg-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (name, text) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    return p;
  };
  assert.equal(controlUrlFromConfig(write("a.yml", 'control: {listen: "127.0.0.1:1234"}\n')), "http://127.0.0.1:1234");
  assert.equal(
    controlUrlFromConfig(write("b.yml", "ingest:\n  listen: 0.0.0.0:1\ncontrol:\n  api_key: k\n  listen: 127.0.0.1:9999 # comment\nlog: {}\n")),
    "http://127.0.0.1:9999",
  );
  assert.equal(controlUrlFromConfig(write("c.yml", "control:\n  api_key: k\nother:\n  listen: 1.2.3.4:5\n")), undefined);
  assert.equal(controlUrlFromConfig(path.join(dir, "missing.yml")), undefined);
  const s = new OutriggerSidecar({ config: write("d.yml", "control: {api_key: x, listen: '127.0.0.1:4242'}\n") });
  assert.equal(s.controlUrl, "http://127.0.0.1:4242");
  assert.equal(new OutriggerSidecar({ config: path.join(dir, "missing.yml") }).controlUrl, "http://127.0.0.1:9464");
});
