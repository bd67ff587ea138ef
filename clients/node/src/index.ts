// The package's entry point: the fail-open client and the daemon supervisor, nothing else.
// In: nothing at load time (no side effects beyond the client's one beforeExit hook, installed
// by the first client made). Out: the two classes and their option and event types.

export { Outrigger } from "./client.js";
export type { ObserveOptions, OutriggerOptions, OutriggerStats } from "./client.js";
export { OutriggerSidecar, controlUrlFromConfig } from "./sidecar.js";
export type {
  ExitEvent,
  GaveUpEvent,
  ReadyEvent,
  RestartEvent,
  RestartReason,
  SidecarOptions,
  SidecarState,
} from "./sidecar.js";
