// The fail-open client: `observe()` encodes an event as one native NDJSON line and appends it to a
// bounded in-memory buffer; a background pump writes the buffer to the daemon's unix socket.
//
// In: observe(type, data, {runId, attributes, ts}) calls from the application, and the daemon's
// answers on the socket (ack mode: one `{"success":…}` line per line written, in order).
// Out: NDJSON lines on the socket, and `stats`: every event observe() accepted ends up `sent`
// (answered success), `errors` (answered success:false) or `lost` (never answered: no daemon, a
// slow daemon's backlog over its bound, or a connection that died first); a full buffer `dropped`.
// The caller never waits: observe() only encodes and appends, the pump runs on an unref'd 200 ms
// timer (and sooner at a size threshold), connects and reconnects with back-off on its own.
// With `debug: true` the connection opts in to breakpoints (a debug hello first), and
// observeWait() is an observe() that waits for its answer, which a `pause` breakpoint holds.
// Stops on close(): a last flush within its timeout, then the socket is closed; an exiting process
// writes what is buffered on `beforeExit` (not on process.exit(): call flush() first).

import * as net from "node:net";

/** Options of {@link Outrigger}; every field has a default. */
export interface OutriggerOptions {
  /** Unix socket of the daemon: default `$OUTRIGGER_SOCKET`, else `/tmp/outrigger.sock`. */
  socket?: string;
  /** Events held while waiting for the pump; past it observe() drops (default 10000). */
  maxBufferEvents?: number;
  /** Bytes (UTF-16 code units) held while waiting for the pump (default 8 MiB). */
  maxBufferBytes?: number;
  /** How often buffered events are written, in ms (default 200). */
  flushInterval?: number;
  /** Buffered bytes that trigger a write before the interval (default 64 KiB). */
  flushBytes?: number;
  /** Bytes written but not yet taken by the daemon; past it the daemon is slow and new batches
   * are counted as lost instead of queued behind it (default 4 MiB). */
  maxBacklogBytes?: number;
  /** A connect that takes longer than this fails, in ms (default 1000). */
  connectTimeout?: number;
  /** First and longest wait between connect attempts after a failure, in ms (100, 5000). */
  reconnectMin?: number;
  reconnectMax?: number;
  /** Where the one warning goes (default `process.emitWarning`). */
  warn?: (message: string) => void;
  /**
   * Opt in to breakpoints: the connection starts with `{"hello": {"ack": true, "debug": true}}`,
   * so a `pause` breakpoint on the daemon may hold the answer to one of its lines. Use
   * {@link Outrigger.observeWait} where the application should stop at such a breakpoint.
   * Without it no breakpoint ever holds this client (default false).
   */
  debug?: boolean;
  /** The longest observeWait() waits, in ms (default 65000: the daemon's max_pause is 60 s). */
  debugTimeout?: number;
}

/** Per-event options of {@link Outrigger.observe}. */
export interface ObserveOptions {
  /** Groups events into a run (tail sampling keeps or drops a run whole). */
  runId?: string;
  /** String to string; other values make the daemon refuse the line (counted in `errors`). */
  attributes?: Record<string, string>;
  /** Unix seconds (float) or a Date; default: the time of the observe() call. */
  ts?: number | Date;
}

/** Counters since the client was made. */
export interface OutriggerStats {
  /** Events the daemon answered with success. */
  sent: number;
  /** Events observe() refused: buffer full, client closed, no type, data that JSON cannot encode. */
  dropped: number;
  /** Events accepted by observe() that the daemon never confirmed: no daemon, slow daemon, or a
   * connection that died before answering (those may still have reached it). */
  lost: number;
  /** Lines the daemon answered with success:false (refused line, queue full), and flush lines
   * it could not complete. */
  errors: number;
  /** Connections made after the first one. */
  reconnects: number;
  /** Events in the buffer now. */
  buffered: number;
  /** Events written and not answered yet. */
  pending: number;
  /** Whether a connection to the daemon is open now. */
  connected: boolean;
}

/** A flush() in flight: resolved by the answer to its flush line, its timeout, or a loss. */
interface FlushWaiter {
  resolve: (ok: boolean) => void;
  timer: NodeJS.Timeout | undefined;
  done: boolean;
}

type State = "idle" | "connecting" | "connected" | "backoff" | "closed";

const OK_ANSWER = '{"success":true}';
const DEBUG_HELLO = '{"hello":{"ack":true,"debug":true}}\n';
const RECONNECTS = "; events are counted as lost and the client reconnects with back-off";
/** What JSON.stringify would escape in a string: quotes, backslashes, controls, surrogates. */
const NEEDS_ESCAPE = /[\u0000-\u001f"\\\ud800-\udfff]/;
const FLUSH_LINE = '{"method":"flush","payload":{}}\n';

/** Clients with something that may still need writing when the process is about to exit. */
const live = new Set<Outrigger>();
let exitHookInstalled = false;

/** A string as JSON, without JSON.stringify's call when nothing needs escaping (the common case). */
function quote(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
}

/** Attributes as a JSON object; what is not a string is left as JSON has it (the daemon refuses it). */
function encodeAttributes(attrs: Record<string, string>): string {
  let out = "{";
  for (const k in attrs) {
    if (!Object.prototype.hasOwnProperty.call(attrs, k)) continue;
    const v = attrs[k];
    if (typeof v !== "string") return JSON.stringify(attrs);
    out += (out.length === 1 ? "" : ",") + quote(k) + ":" + quote(v);
  }
  return out + "}";
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // beforeExit fires when the event loop is empty: the write it starts keeps the process alive
  // until it is done, then beforeExit fires again with nothing left to write.
  process.on("beforeExit", () => {
    for (const c of live) c.pump();
  });
}

/**
 * Sends events to an Outrigger daemon without ever blocking or throwing into the application.
 *
 * ```js
 * const obs = new Outrigger();
 * obs.observe("test_end", { status: "passed" }, { runId: "run_001" });
 * await obs.flush();
 * ```
 */
export class Outrigger {
  readonly socket: string;
  private readonly maxBufferEvents: number;
  private readonly maxBufferBytes: number;
  private readonly flushInterval: number;
  private readonly flushBytes: number;
  private readonly maxBacklogBytes: number;
  private readonly connectTimeout: number;
  private readonly reconnectMin: number;
  private readonly reconnectMax: number;
  private readonly warnFn: (message: string) => void;
  readonly debug: boolean;
  private readonly debugTimeout: number;

  /** Encoded lines (each ends with "\n") and flush markers, in the order they were made. */
  private buf: (string | FlushWaiter)[] = [];
  private bufEvents = 0;
  private bufBytes = 0;
  private markers = 0;
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;

  private state: State = "idle";
  private sock: net.Socket | undefined;
  private retryAt = 0;
  private retryDelay: number;
  private everConnected = false;
  private warned = false;
  /** What each answer still to come is for: a count of event lines, or a flush. */
  private pending: (number | FlushWaiter)[] = [];
  private pendingEvents = 0;
  private waiters = 0;
  private rx = "";

  private lastType = "";
  private lastPrefix = "";

  private sent = 0;
  private dropped = 0;
  private lost = 0;
  private errors = 0;
  private reconnects = 0;

  constructor(options: OutriggerOptions = {}) {
    this.socket = options.socket ?? process.env.OUTRIGGER_SOCKET ?? "/tmp/outrigger.sock";
    this.maxBufferEvents = options.maxBufferEvents ?? 10_000;
    this.maxBufferBytes = options.maxBufferBytes ?? 8 * 1024 * 1024;
    this.flushInterval = options.flushInterval ?? 200;
    this.flushBytes = options.flushBytes ?? 64 * 1024;
    this.maxBacklogBytes = options.maxBacklogBytes ?? 4 * 1024 * 1024;
    this.connectTimeout = options.connectTimeout ?? 1000;
    this.reconnectMin = options.reconnectMin ?? 100;
    this.reconnectMax = options.reconnectMax ?? 5000;
    this.retryDelay = this.reconnectMin;
    this.debug = options.debug ?? false;
    this.debugTimeout = options.debugTimeout ?? 65_000;
    this.warnFn =
      options.warn ?? ((m: string) => process.emitWarning(m, { code: "OUTRIGGER_UNAVAILABLE" }));
    installExitHook();
  }

  /**
   * Queues one event. True when it was buffered for sending; false when it was dropped (buffer
   * full, client closed, no type, data JSON cannot encode). Never throws, never waits.
   */
  observe(type: string, data?: unknown, options?: ObserveOptions): boolean {
    if (this.bufEvents >= this.maxBufferEvents || this.state === "closed") {
      this.dropped++;
      return false;
    }
    let line: string;
    try {
      if (typeof type !== "string" || type.length === 0) {
        this.dropped++;
        return false;
      }
      // Most calls repeat the type of the call before: its encoding is kept.
      if (type !== this.lastType) {
        this.lastPrefix = '{"type":' + quote(type);
        this.lastType = type;
      }
      line = this.lastPrefix;
      let ts: number | Date | undefined;
      if (options !== undefined) {
        if (options.runId !== undefined) line += ',"run_id":' + quote(String(options.runId));
        ts = options.ts;
      }
      const secs = ts === undefined ? Date.now() / 1000 : typeof ts === "number" ? ts : ts.getTime() / 1000;
      if (Number.isFinite(secs)) line += ',"ts":' + secs;
      if (options !== undefined && options.attributes !== undefined) {
        line += ',"attributes":' + encodeAttributes(options.attributes);
      }
      if (data !== undefined) {
        const d = JSON.stringify(data);
        if (d !== undefined) line += ',"data":' + d;
      }
      line += "}\n";
    } catch {
      // A cycle, a BigInt, a throwing toJSON: the event cannot be encoded.
      this.dropped++;
      return false;
    }
    if (this.bufBytes + line.length > this.maxBufferBytes) {
      this.dropped++;
      return false;
    }
    if (this.buf.length === 0) live.add(this);
    this.buf.push(line);
    this.bufEvents++;
    this.bufBytes += line.length;
    if (this.timer === undefined) {
      this.timer = setTimeout(this.onTimer, this.flushInterval);
      this.timer.unref();
    }
    if (this.bufBytes >= this.flushBytes && this.immediate === undefined) {
      this.immediate = setImmediate(this.onImmediate);
      this.immediate.unref();
    }
    return true;
  }

  /**
   * Like {@link Outrigger.observe}, and resolves once the daemon has answered the line (and,
   * as a flush does, delivered what came before it): with
   * `debug: true`, a `pause` breakpoint that matches it keeps the promise pending until the
   * session is continued or stepped (or `max_pause`, or `debugTimeout`). `await` it where the
   * application should stop. Resolves false when the event was dropped or not answered in time.
   */
  async observeWait(type: string, data?: unknown, options?: ObserveOptions): Promise<boolean> {
    if (!this.observe(type, data, options)) return false;
    // Answers come in line order: the flush line's comes after the held line's.
    return this.flush(this.debugTimeout);
  }

  /**
   * Writes what is buffered, then a flush line, and resolves true once the daemon answers that
   * everything sent before it was delivered to the sinks (runs still open in tail sampling go
   * out when they close). False on a timeout, with no daemon, or when it answers with an error.
   */
  flush(timeoutMs = 5000): Promise<boolean> {
    if (this.state === "closed") return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const w: FlushWaiter = { resolve, timer: undefined, done: false };
      w.timer = setTimeout(() => this.settle(w, false), Math.max(0, timeoutMs));
      this.waiters++;
      this.sock?.ref();
      this.buf.push(w);
      this.markers++;
      live.add(this);
      // An explicit flush tries to connect now, whatever the back-off says.
      if (this.state === "backoff") this.state = "idle";
      this.pump();
    });
  }

  /** Flushes within `timeoutMs`, then closes the connection; later observe() calls drop. */
  async close(timeoutMs = 2000): Promise<boolean> {
    if (this.state === "closed") return false;
    const ok = await this.flush(timeoutMs);
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.immediate !== undefined) clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
    this.loseBuffer();
    this.disconnect();
    this.state = "closed";
    live.delete(this);
    return ok;
  }

  /** A snapshot of the counters. */
  get stats(): OutriggerStats {
    return {
      sent: this.sent,
      dropped: this.dropped,
      lost: this.lost,
      errors: this.errors,
      reconnects: this.reconnects,
      buffered: this.bufEvents,
      pending: this.pendingEvents,
      connected: this.state === "connected",
    };
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.pump();
  };

  private readonly onImmediate = (): void => {
    this.immediate = undefined;
    this.pump();
  };

  /** Moves the buffer onto the socket, connecting first when needed. @internal */
  pump(): void {
    if (this.buf.length === 0) return;
    switch (this.state) {
      case "connected":
        this.write();
        return;
      case "connecting":
        // The connect callback writes it.
        return;
      case "idle":
        this.connect();
        return;
      case "backoff":
        if (Date.now() >= this.retryAt) {
          this.connect();
        } else {
          this.loseBuffer();
        }
        return;
      case "closed":
        this.loseBuffer();
        return;
    }
  }

  private write(): void {
    const sock = this.sock as net.Socket;
    let buf = this.buf;
    let events = this.bufEvents;
    if (sock.writableLength > this.maxBacklogBytes) {
      // The daemon is not keeping up: the events are lost, a flush line (tiny) still goes out
      // and is answered once the daemon has caught up, or times out.
      this.warnOnce(
        `daemon at ${this.socket} is not keeping up (over ${this.maxBacklogBytes} bytes unread); ` +
          "events past that bound are counted as lost until it catches up",
      );
      this.lost += events;
      events = 0;
      buf = this.markers === 0 ? [] : buf.filter((item) => typeof item !== "string");
    }
    live.delete(this);
    this.buf = [];
    this.bufEvents = 0;
    this.bufBytes = 0;
    if (this.markers === 0) {
      if (events === 0) return;
      sock.write(buf.join(""));
      this.pending.push(events);
      this.pendingEvents += events;
      return;
    }
    this.markers = 0;
    let text = "";
    let run = 0;
    for (const item of buf) {
      if (typeof item === "string") {
        text += item;
        run++;
      } else {
        if (run > 0) this.pending.push(run);
        run = 0;
        text += FLUSH_LINE;
        this.pending.push(item);
      }
    }
    if (run > 0) this.pending.push(run);
    this.pendingEvents += events;
    sock.write(text);
  }

  private connect(): void {
    this.state = "connecting";
    const sock = net.createConnection({ path: this.socket });
    this.sock = sock;
    if (this.waiters === 0) sock.unref();
    sock.setEncoding("utf8");
    sock.setTimeout(this.connectTimeout);
    sock.once("connect", () => {
      sock.setTimeout(0);
      this.state = "connected";
      if (this.everConnected) this.reconnects++;
      this.everConnected = true;
      this.retryDelay = this.reconnectMin;
      // The hello is not an event: the daemon answers nothing to it.
      if (this.debug) sock.write(DEBUG_HELLO);
      this.write();
    });
    sock.on("timeout", () => sock.destroy(new Error(`connect timed out after ${this.connectTimeout} ms`)));
    sock.on("data", (chunk: string) => this.onData(chunk));
    sock.on("error", (err: Error) => this.onLost(sock, err));
    sock.on("close", () => this.onLost(sock, undefined));
  }

  private onData(chunk: string): void {
    let rx = this.rx + chunk;
    let start = 0;
    let nl: number;
    while ((nl = rx.indexOf("\n", start)) !== -1) {
      this.answer(rx.slice(start, nl));
      start = nl + 1;
    }
    this.rx = start === rx.length ? "" : rx.slice(start);
  }

  /** One answer line: it belongs to the oldest line still unanswered. */
  private answer(line: string): void {
    let ok = line === OK_ANSWER;
    if (!ok) {
      try {
        ok = (JSON.parse(line) as { success?: unknown }).success === true;
      } catch {
        ok = false;
      }
    }
    const front = this.pending[0];
    if (front === undefined) {
      // An answer to nothing we sent: count it, there is nothing to match it with.
      if (!ok) this.errors++;
      return;
    }
    if (typeof front === "number") {
      if (ok) this.sent++;
      else this.errors++;
      this.pendingEvents--;
      if (front === 1) this.pending.shift();
      else this.pending[0] = front - 1;
    } else {
      this.pending.shift();
      if (!ok) this.errors++;
      this.settle(front, ok);
    }
  }

  /** The connection failed or closed: what it did not answer is lost; retry after a back-off. */
  private onLost(sock: net.Socket, err: Error | undefined): void {
    if (sock !== this.sock) return;
    this.sock = undefined;
    sock.destroy();
    const wasConnected = this.state === "connected";
    if (this.pendingEvents > 0 || !wasConnected || err !== undefined) {
      const why = err ? err.message : "connection closed";
      this.warnOnce(
        (wasConnected
          ? `connection to the daemon at ${this.socket} lost (${why})`
          : `daemon not reachable at ${this.socket} (${why})`) + RECONNECTS,
      );
    }
    this.lost += this.pendingEvents;
    this.pendingEvents = 0;
    for (const p of this.pending) if (typeof p !== "number") this.settle(p, false);
    this.pending = [];
    this.rx = "";
    if (this.state === "closed") return;
    this.state = "backoff";
    this.retryAt = Date.now() + this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, this.reconnectMax);
    // Whatever was waiting for this connection cannot go out on it.
    this.loseBuffer();
  }

  private disconnect(): void {
    const sock = this.sock;
    if (sock === undefined) return;
    this.sock = undefined;
    sock.destroy();
    this.lost += this.pendingEvents;
    this.pendingEvents = 0;
    for (const p of this.pending) if (typeof p !== "number") this.settle(p, false);
    this.pending = [];
  }

  /** Counts the buffered events as lost and fails the flushes among them. */
  private loseBuffer(): void {
    if (this.buf.length === 0) return;
    live.delete(this);
    if (this.bufEvents > 0) {
      this.warnOnce(`daemon not reachable at ${this.socket}${RECONNECTS}`);
      this.lost += this.bufEvents;
    }
    const buf = this.buf;
    this.buf = [];
    this.bufEvents = 0;
    this.bufBytes = 0;
    this.markers = 0;
    for (const item of buf) if (typeof item !== "string") this.settle(item, false);
  }

  private settle(w: FlushWaiter, ok: boolean): void {
    if (w.done) return;
    w.done = true;
    if (w.timer !== undefined) clearTimeout(w.timer);
    this.waiters--;
    // With no flush waiting, the socket does not keep the process alive.
    if (this.waiters === 0) this.sock?.unref();
    w.resolve(ok);
  }

  private warnOnce(message: string): void {
    if (this.warned) return;
    this.warned = true;
    try {
      this.warnFn(`outrigger: ${message}`);
    } catch {
      // A warning that throws must not reach the application.
    }
  }
}
