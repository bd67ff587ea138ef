// The supervisor: starts `outrigger run [-c config]` as a child process, waits until its control
// API says ready, watches it, and restarts it with exponential back-off when it goes wrong.
//
// In: the options (binary, config, control URL, limits), the child's exit, its control API
// (`GET /readyz` while starting, `GET /v1/health` every healthInterval) and its RSS (VmRSS in
// /proc/PID/status). Out: the child process, and the events `ready`, `exit`, `restart` and
// `gave-up`. A daemon that exits, fails failureThreshold health checks in a row, or grows past
// maxMemoryMB is restarted after restartDelay × 2^(n-1) (at most 30 s), at most maxRestarts times
// in a row; the count starts again once a daemon has stayed up for resetAfter.
// Stops on stop(): SIGTERM, then SIGKILL after stopTimeout; or when it gives up. Its timers and
// the child are unref'd, so it never keeps the application alive by itself; when the application
// exits, a daemon still running gets SIGTERM (it drains on its own).

import { spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";

/** Options of {@link OutriggerSidecar}; every field has a default. */
export interface SidecarOptions {
  /** The daemon's executable (default `outrigger`, from PATH). */
  binary?: string;
  /** Config file, passed as `-c`; without it the daemon reads $OUTRIGGER_CONFIG or ./outrigger.yml. */
  config?: string;
  /** Control API base URL; default: `control.listen` from the config file, else http://127.0.0.1:9464. */
  controlUrl?: string;
  /** Bearer key for `/v1/health` (default `$OUTRIGGER_API_KEY`). */
  apiKey?: string;
  /** Environment of the daemon (default this process's). */
  env?: NodeJS.ProcessEnv;
  /** The daemon's stdio, as for child_process.spawn (default "inherit"; a pipe must be read). */
  stdio?: StdioOptions;
  /** Time for `/readyz` to answer 200 after a spawn, in ms (default 10000). */
  readyTimeout?: number;
  /** First restart delay, in ms; doubles with each restart in a row, up to 30 s (default 1000). */
  restartDelay?: number;
  /** Restarts in a row before giving up (default 5). */
  maxRestarts?: number;
  /** Failed health checks in a row that make a restart (default 3). */
  failureThreshold?: number;
  /** Time between health and memory checks, in ms (default 5000). */
  healthInterval?: number;
  /** RSS that makes a restart, in MB; 0 turns the check off (default 512). */
  maxMemoryMB?: number;
  /** Time between SIGTERM and SIGKILL, in ms (default 5000). */
  stopTimeout?: number;
  /** Time a daemon must stay up after ready for the restart count to start again (default 30000). */
  resetAfter?: number;
}

/** Why a restart happens. */
export type RestartReason = "exit" | "unhealthy" | "memory" | "not-ready";

/** Payload of `ready`. */
export interface ReadyEvent {
  pid: number;
  /** Restarts in a row before this one became ready (0 after start()). */
  restarts: number;
}

/** Payload of `exit`: every exit of the daemon process. */
export interface ExitEvent {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when the supervisor stopped it (stop(), or on its way to a restart). */
  expected: boolean;
}

/** Payload of `restart`: emitted when a restart is scheduled, `delay` ms before it spawns. */
export interface RestartEvent {
  attempt: number;
  delay: number;
  reason: RestartReason;
}

/** Payload of `gave-up`. */
export interface GaveUpEvent {
  restarts: number;
  reason: RestartReason;
}

export type SidecarState = "idle" | "starting" | "ready" | "restarting" | "stopping" | "stopped" | "gave-up";

const MAX_DELAY = 30_000;
const HEALTH_CACHE_MS = 5_000;
const REQUEST_TIMEOUT = 2_000;
const READY_POLL_MS = 100;

const running = new Set<ChildProcess>();
/** Children the supervisor signalled itself: their exit is `expected`. */
const signalled = new WeakSet<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const child of running) {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
    }
  });
}

/**
 * Starts and supervises an Outrigger daemon.
 *
 * ```js
 * const sidecar = new OutriggerSidecar({ config: "outrigger.yml" });
 * sidecar.on("gave-up", ({ reason }) => console.error("outrigger gave up:", reason));
 * await sidecar.start();
 * // …
 * await sidecar.stop();
 * ```
 */
export class OutriggerSidecar extends EventEmitter {
  readonly binary: string;
  readonly config: string | undefined;
  readonly controlUrl: string;
  private readonly apiKey: string | undefined;
  private readonly env: NodeJS.ProcessEnv | undefined;
  private readonly stdio: StdioOptions;
  private readonly readyTimeout: number;
  private readonly restartDelay: number;
  private readonly maxRestarts: number;
  private readonly failureThreshold: number;
  private readonly healthInterval: number;
  private readonly maxMemoryMB: number;
  private readonly stopTimeout: number;
  private readonly resetAfter: number;

  private child: ChildProcess | undefined;
  private _state: SidecarState = "idle";
  /** Restarts in a row. */
  private consecutive = 0;
  private failures = 0;
  private checking = false;
  private monitor: NodeJS.Timeout | undefined;
  private resetTimer: NodeJS.Timeout | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private healthCache: { ok: boolean; at: number } | undefined;
  private healthInFlight: Promise<boolean> | undefined;

  constructor(options: SidecarOptions = {}) {
    super();
    this.binary = options.binary ?? "outrigger";
    this.config = options.config;
    this.apiKey = options.apiKey ?? process.env.OUTRIGGER_API_KEY;
    this.env = options.env;
    this.stdio = options.stdio ?? "inherit";
    this.readyTimeout = options.readyTimeout ?? 10_000;
    this.restartDelay = options.restartDelay ?? 1_000;
    this.maxRestarts = options.maxRestarts ?? 5;
    this.failureThreshold = options.failureThreshold ?? 3;
    this.healthInterval = options.healthInterval ?? 5_000;
    this.maxMemoryMB = options.maxMemoryMB ?? 512;
    this.stopTimeout = options.stopTimeout ?? 5_000;
    this.resetAfter = options.resetAfter ?? 30_000;
    const configPath =
      this.config ??
      (this.env ?? process.env).OUTRIGGER_CONFIG ??
      (fs.existsSync("outrigger.yml") ? "outrigger.yml" : undefined);
    this.controlUrl = (
      options.controlUrl ?? controlUrlFromConfig(configPath) ?? "http://127.0.0.1:9464"
    ).replace(/\/+$/, "");
    installExitHook();
  }

  /** Where the supervisor is: idle, starting, ready, restarting, stopping, stopped or gave-up. */
  get state(): SidecarState {
    return this._state;
  }

  /** The daemon's pid, while one runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Restarts in a row so far. */
  get restarts(): number {
    return this.consecutive;
  }

  /**
   * Spawns the daemon and resolves once `/readyz` answers 200. Rejects (and kills the child)
   * when it exits first or is not ready within readyTimeout; nothing is restarted then.
   */
  async start(): Promise<void> {
    if (this._state !== "idle" && this._state !== "stopped" && this._state !== "gave-up") {
      throw new Error(`outrigger sidecar is already ${this._state}`);
    }
    this._state = "starting";
    this.consecutive = 0;
    try {
      await this.launch();
    } catch (err) {
      if (this._state === "starting") this._state = "stopped";
      throw err;
    }
    this.onReady();
  }

  /** Stops the daemon (SIGTERM, then SIGKILL after stopTimeout) and the supervision. */
  async stop(): Promise<ExitEvent | null> {
    this._state = "stopping";
    this.clearTimers();
    const child = this.child;
    const result = child === undefined ? null : await this.terminate(child);
    this._state = "stopped";
    return result;
  }

  /**
   * Whether the daemon answers `GET /v1/health` with 200 (healthy or degraded; unhealthy is 503).
   * The answer is cached for 5 s; false while no daemon runs. Never rejects.
   */
  async isHealthy(): Promise<boolean> {
    if (this.child === undefined) return false;
    const c = this.healthCache;
    if (c !== undefined && Date.now() - c.at < HEALTH_CACHE_MS) return c.ok;
    return this.checkHealth();
  }

  private checkHealth(): Promise<boolean> {
    if (this.healthInFlight !== undefined) return this.healthInFlight;
    const headers: Record<string, string> = {};
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    const p = httpStatus(this.controlUrl + "/v1/health", headers).then((status) => {
      const ok = status === 200;
      this.healthCache = { ok, at: Date.now() };
      this.healthInFlight = undefined;
      return ok;
    });
    this.healthInFlight = p;
    return p;
  }

  /** Spawns a daemon and waits for it to be ready; on failure the child is gone when it rejects. */
  private async launch(): Promise<void> {
    const args = ["run"];
    if (this.config !== undefined) args.push("-c", this.config);
    const child = spawn(this.binary, args, { stdio: this.stdio, env: this.env });
    let exited: { code: number | null; signal: NodeJS.Signals | null; error?: Error } | undefined;
    child.once("error", (error) => {
      // The spawn failed (no such binary): there is no process to wait for.
      if (exited === undefined) exited = { code: null, signal: null, error };
      this.onExit(child, null, null);
    });
    child.once("exit", (code, signal) => {
      if (exited === undefined) exited = { code, signal };
      this.onExit(child, code, signal);
    });
    child.unref();
    this.child = child;
    if (child.pid !== undefined) running.add(child);
    this.failures = 0;
    this.healthCache = undefined;

    const deadline = Date.now() + this.readyTimeout;
    for (;;) {
      if (exited !== undefined) {
        const how = exited.error
          ? `could not start ${this.binary}: ${exited.error.message}`
          : `${this.binary} exited (${exited.signal ?? `code ${exited.code}`}) before it was ready`;
        throw new Error(how);
      }
      if (this._state === "stopping" || this._state === "stopped") {
        throw new Error("outrigger sidecar stopped before the daemon was ready");
      }
      if ((await httpStatus(this.controlUrl + "/readyz", {})) === 200 && exited === undefined) return;
      if (Date.now() >= deadline) {
        if (exited === undefined) await this.terminate(child, 0);
        throw new Error(`${this.binary} was not ready at ${this.controlUrl}/readyz within ${this.readyTimeout} ms`);
      }
      await sleep(READY_POLL_MS);
    }
  }

  private onReady(): void {
    this._state = "ready";
    const child = this.child as ChildProcess;
    this.emit("ready", { pid: child.pid as number, restarts: this.consecutive } satisfies ReadyEvent);
    this.monitor = setInterval(() => void this.check(child), this.healthInterval);
    this.monitor.unref();
    this.resetTimer = setTimeout(() => {
      this.consecutive = 0;
    }, this.resetAfter);
    this.resetTimer.unref();
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (!running.has(child) && child !== this.child) return;
    running.delete(child);
    if (child !== this.child) return;
    this.child = undefined;
    this.clearMonitor();
    const expected = signalled.has(child);
    this.emit("exit", { pid: child.pid ?? -1, code, signal, expected } satisfies ExitEvent);
    // Only a daemon that was ready and running on its own is restarted from here: a failed launch
    // is handled by whoever launched it, a stop needs nothing.
    if (this._state === "ready") {
      this._state = "restarting";
      this.scheduleRestart("exit");
    }
  }

  /** One health and memory check of a ready daemon. */
  private async check(child: ChildProcess): Promise<void> {
    if (this.checking || this._state !== "ready" || child !== this.child) return;
    this.checking = true;
    try {
      const rss = child.pid === undefined ? undefined : rssBytes(child.pid);
      if (this.maxMemoryMB > 0 && rss !== undefined && rss > this.maxMemoryMB * 1024 * 1024) {
        await this.recycle(child, "memory");
        return;
      }
      const ok = await this.checkHealth();
      if (this._state !== "ready" || child !== this.child) return;
      this.failures = ok ? 0 : this.failures + 1;
      if (this.failures >= this.failureThreshold) await this.recycle(child, "unhealthy");
    } finally {
      this.checking = false;
    }
  }

  /** Stops a running daemon on purpose, then restarts it. */
  private async recycle(child: ChildProcess, reason: RestartReason): Promise<void> {
    this._state = "restarting";
    this.clearMonitor();
    await this.terminate(child);
    if (this._state === "restarting") this.scheduleRestart(reason);
  }

  private scheduleRestart(reason: RestartReason): void {
    if (this._state !== "restarting") return;
    if (this.consecutive >= this.maxRestarts) {
      this._state = "gave-up";
      this.emit("gave-up", { restarts: this.consecutive, reason } satisfies GaveUpEvent);
      return;
    }
    this.consecutive++;
    const delay = Math.min(this.restartDelay * 2 ** (this.consecutive - 1), MAX_DELAY);
    this.emit("restart", { attempt: this.consecutive, delay, reason } satisfies RestartEvent);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      void this.relaunch();
    }, delay);
    this.restartTimer.unref();
  }

  private async relaunch(): Promise<void> {
    if (this._state !== "restarting") return;
    try {
      await this.launch();
    } catch {
      this.scheduleRestart("not-ready");
      return;
    }
    if (this._state === "restarting") this.onReady();
  }

  /** SIGTERM, SIGKILL after `grace` ms; resolves with how the child exited. */
  private terminate(child: ChildProcess, grace = this.stopTimeout): Promise<ExitEvent> {
    const pid = child.pid ?? -1;
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
      return Promise.resolve({ pid, code: child.exitCode, signal: child.signalCode, expected: true });
    }
    // Whoever awaits this needs the exit to arrive: the child keeps the process alive till then.
    child.ref();
    return new Promise((resolve) => {
      const kill = setTimeout(() => child.kill("SIGKILL"), grace);
      child.once("exit", (code, signal) => {
        clearTimeout(kill);
        child.unref();
        resolve({ pid, code, signal, expected: true });
      });
      signalled.add(child);
      child.kill(grace > 0 ? "SIGTERM" : "SIGKILL");
    });
  }

  private clearMonitor(): void {
    if (this.monitor !== undefined) clearInterval(this.monitor);
    if (this.resetTimer !== undefined) clearTimeout(this.resetTimer);
    this.monitor = undefined;
    this.resetTimer = undefined;
  }

  private clearTimers(): void {
    this.clearMonitor();
    if (this.restartTimer !== undefined) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
  }
}

/**
 * `control.listen` from a YAML config, by a simple line match: `control: {listen: ADDR}` on one
 * line, or `listen: ADDR` indented under a `control:` line. Undefined when absent or unreadable.
 */
export function controlUrlFromConfig(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  let text: string;
  try {
    text = fs.readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  const value = /^\s*["']?([^"'\s,}#]+)/;
  let inControl = false;
  for (const line of text.split(/\r?\n/)) {
    const flow = /^control:\s*\{(.*)/.exec(line);
    if (flow) {
      const m = /(?:^|[\s,{])listen:\s*(.*)/.exec(flow[1]);
      const v = m ? value.exec(m[1]) : null;
      return v ? toUrl(v[1]) : undefined;
    }
    if (/^control:\s*(#.*)?$/.test(line)) {
      inControl = true;
      continue;
    }
    if (inControl) {
      if (/^\S/.test(line)) break;
      const m = /^\s+listen:\s*(.*)/.exec(line);
      if (m) {
        const v = value.exec(m[1]);
        return v ? toUrl(v[1]) : undefined;
      }
    }
  }
  return undefined;
}

function toUrl(addr: string): string {
  return /^https?:\/\//.test(addr) ? addr : `http://${addr}`;
}

/** VmRSS of a process in bytes, from /proc; undefined where there is no /proc. */
function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** The status of a GET, or 0 when it fails or takes longer than REQUEST_TIMEOUT. Never rejects. */
function httpStatus(url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    let req: http.ClientRequest;
    try {
      const get = url.startsWith("https:") ? https.get : http.get;
      req = get(url, { headers, timeout: REQUEST_TIMEOUT, agent: false }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
        res.on("error", () => resolve(0));
      });
    } catch {
      resolve(0);
      return;
    }
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
