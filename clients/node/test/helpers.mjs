// Shared by the tests: the real daemon binary (from $OUTRIGGER_BIN), a temporary directory with a
// config on free ports, starting and killing daemons, reading the file sink, waiting for events.
// In: $OUTRIGGER_BIN. Out: Env objects (paths, ports, config) and daemon child processes.
// Stops: every daemon a test starts is killed by env.cleanup(), which also removes the directory.

import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as http from "node:http";

export const BIN = process.env.OUTRIGGER_BIN;
if (!BIN) {
  throw new Error(
    "OUTRIGGER_BIN is not set: point it at the outrigger binary (e.g. target/debug/outrigger) to run these tests",
  );
}
if (!fs.existsSync(BIN)) throw new Error(`OUTRIGGER_BIN=${BIN}: no such file`);

/** A port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A temporary directory with a config (file sink, free ports) and what the tests need of it. */
export async function makeEnv(extra = "") {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "outrigger-node-"));
  fs.mkdirSync(path.join(dir, "plugins"));
  const httpPort = await freePort();
  const controlPort = await freePort();
  const socket = path.join(dir, "o.sock");
  const sink = path.join(dir, "out", "events.ndjson");
  const config = path.join(dir, "outrigger.yml");
  const yaml =
    `ingest: {socket: "${socket}", http: "127.0.0.1:${httpPort}"}\n` +
    `batch: {max_events: 500, interval: 50ms}\n` +
    `plugins: {dir: "${dir}/plugins", cache_dir: "${dir}/cache"}\n` +
    `sinks: [{type: file, path: "${sink}"}]\n` +
    `control: {listen: "127.0.0.1:${controlPort}"}\n` +
    `profiling: {budgets: {cpu_percent: 0, memory_mb: 0}}\n` +
    extra;
  fs.writeFileSync(config, yaml);
  const children = new Set();
  const env = {
    dir,
    socket,
    sink,
    config,
    controlUrl: `http://127.0.0.1:${controlPort}`,
    logFile: path.join(dir, "daemon.log"),
    /** An fd that appends to the daemon log, for a child's stdout and stderr. */
    logFd() {
      return fs.openSync(env.logFile, "a");
    },
    /** The daemon log so far, for assertion messages. */
    log() {
      try {
        return fs.readFileSync(env.logFile, "utf8");
      } catch {
        return "(no daemon log)";
      }
    },
    /** Starts `outrigger run -c config` and waits until /readyz answers 200. */
    async startDaemon() {
      const fd = env.logFd();
      const child = spawn(BIN, ["run", "-c", config], { stdio: ["ignore", fd, fd] });
      fs.closeSync(fd);
      children.add(child);
      child.once("exit", () => children.delete(child));
      await waitFor(async () => child.exitCode === null && (await status(`${env.controlUrl}/readyz`)) === 200, {
        what: "the daemon to be ready",
        log: env.log,
      });
      return child;
    },
    /** The events in the file sink, parsed, each with its raw line as `raw`. */
    events() {
      let text;
      try {
        text = fs.readFileSync(sink, "utf8");
      } catch {
        return [];
      }
      return text
        .split("\n")
        .filter((l) => l.length > 0)
        .map((raw) => ({ ...JSON.parse(raw), raw }));
    },
    async cleanup() {
      for (const child of children) {
        try {
          child.kill("SIGCONT");
          child.kill("SIGKILL");
        } catch {
          // gone already
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/** The status of a GET, 0 when it fails. */
export function status(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 2000, agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

/** Polls `cond` until it is true; fails after `timeout` ms (generous: this is not a timing test). */
export async function waitFor(cond, { timeout = 20000, what = "a condition", log } = {}) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}${log ? `\n--- daemon log ---\n${log()}` : ""}`);
}

/** Resolves with the payload of the next `name` event of `emitter`, or fails after `timeout` ms. */
export function nextEvent(emitter, name, timeout = 30000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      emitter.off(name, on);
      reject(new Error(`no ${name} event within ${timeout} ms`));
    }, timeout);
    const on = (payload) => {
      clearTimeout(t);
      resolve(payload);
    };
    emitter.once(name, on);
  });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether a process with this pid exists. */
export function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
