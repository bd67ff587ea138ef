// Per-call cost of Outrigger.observe() in the caller's thread, with a daemon running and with
// none, for a small and a typical event; also the whole process's CPU per event (observe plus
// the background pump that writes batches and reads the daemon's answers, on the same thread).
// In: $OUTRIGGER_BIN (else `outrigger` on PATH), `--events N` (default 200000 per case),
// `--batch B` (calls between yields to the event loop, default 1000), `--repeats R` (default 5).
// Out: one line per case on stdout: the median µs per observe() call over the repeats (min–max),
// the median process CPU per event, and what the stats counted over all repeats. Stops when
// every case has run; the daemon it started is stopped with SIGTERM.
//
//   OUTRIGGER_BIN=target/release/outrigger node clients/node/bench.mjs

import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { Outrigger } = await import(path.join(here, "dist", "index.js"));

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i === -1 ? dflt : Number(process.argv[i + 1]);
}
const EVENTS = arg("--events", 200_000);
const BATCH = arg("--batch", 1000);
const REPEATS = arg("--repeats", 5);
const BIN = process.env.OUTRIGGER_BIN ?? "outrigger";

function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function ready(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 1000, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
  });
}

async function startDaemon(dir) {
  fs.mkdirSync(path.join(dir, "plugins"));
  const control = await freePort();
  const socket = path.join(dir, "o.sock");
  const config = path.join(dir, "outrigger.yml");
  fs.writeFileSync(
    config,
    `ingest: {socket: "${socket}", http: null}\n` +
      `queue: {capacity: 100000}\n` +
      `plugins: {dir: "${dir}/plugins", cache_dir: "${dir}/cache"}\n` +
      `sinks: [{type: file, path: "${dir}/out/events.ndjson"}]\n` +
      `control: {listen: "127.0.0.1:${control}"}\n` +
      `profiling: {budgets: {cpu_percent: 0, memory_mb: 0}}\n`,
  );
  const child = spawn(BIN, ["run", "-c", config], { stdio: ["ignore", "ignore", "inherit"] });
  const deadline = Date.now() + 20_000;
  while (!(await ready(`http://127.0.0.1:${control}/readyz`))) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${BIN} did not become ready`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, socket };
}

const shapes = {
  small: (o, i) => o.observe("tick", { i }),
  typical: (o, i) =>
    o.observe(
      "test_end",
      { nodeid: "tests/test_io.py::test_read", status: "passed", duration_ms: 12.5, i },
      { runId: "run_001", attributes: { suite: "unit" } },
    ),
};

const yieldToLoop = () => new Promise((r) => setImmediate(r));

/** Times `events` calls in batches of BATCH, yielding to the event loop (the pump) in between. */
async function measure(obs, shape, events) {
  const call = shapes[shape];
  let inCalls = 0n;
  let accepted = 0;
  const cpu0 = process.cpuUsage();
  const wall0 = process.hrtime.bigint();
  for (let done = 0; done < events; done += BATCH) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < BATCH; i++) if (call(obs, done + i)) accepted++;
    inCalls += process.hrtime.bigint() - t0;
    await yieldToLoop();
  }
  // Let the answers for the last batches arrive, so that their reading is in the CPU figure.
  await obs.flush(30_000);
  const wall = Number(process.hrtime.bigint() - wall0) / 1e3;
  const cpu = process.cpuUsage(cpu0);
  return {
    perCall: Number(inCalls) / 1e3 / events,
    cpuPerEvent: (cpu.user + cpu.system) / events,
    wallPerEvent: wall / events,
    accepted,
  };
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "outrigger-bench-"));
const daemon = await startDaemon(dir);
try {
  console.log(
    `node ${process.version}, ${os.cpus().length} cores (${os.cpus()[0].model}), ${REPEATS} × ${EVENTS} events per case, yield every ${BATCH}`,
  );
  for (const [label, socket] of [
    ["daemon running", daemon.socket],
    ["daemon absent ", path.join(dir, "nobody.sock")],
  ]) {
    for (const shape of Object.keys(shapes)) {
      const obs = new Outrigger({ socket, warn: process.env.BENCH_WARN ? console.error : () => {} });
      await measure(obs, shape, 50_000); // warm-up: JIT, connection
      const before = obs.stats;
      const runs = [];
      for (let r = 0; r < REPEATS; r++) runs.push(await measure(obs, shape, EVENTS));
      const s = obs.stats;
      const per = runs.map((r) => r.perCall).sort((a, b) => a - b);
      const cpu = runs.map((r) => r.cpuPerEvent).sort((a, b) => a - b);
      const mid = Math.floor(REPEATS / 2);
      console.log(
        `${label}  ${shape.padEnd(7)}  observe() ${per[mid].toFixed(2)} µs/call (${per[0].toFixed(2)}–${per.at(-1).toFixed(2)})` +
          `  · process CPU ${cpu[mid].toFixed(2)} µs/event` +
          `  · sent ${s.sent - before.sent}, lost ${s.lost - before.lost}, dropped ${s.dropped - before.dropped}, errors ${s.errors - before.errors}`,
      );
      await obs.close(1000);
    }
  }
} finally {
  daemon.child.kill("SIGTERM");
  await new Promise((r) => daemon.child.once("exit", r));
  fs.rmSync(dir, { recursive: true, force: true });
}
