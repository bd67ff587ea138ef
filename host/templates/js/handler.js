// `{name}`: an Outrigger handler plugin in JavaScript, built with componentize-js.
//
// Outrigger calls `init` once per instance with the plugin's config (JSON text, from
// `{name}.yml` beside the .wasm or `plugins.chain[].config`); throwing a string there refuses
// the plugin. Then `onBatch` gets whole batches: return one verdict per event, in order:
// `{ tag: 'keep' }`, `{ tag: 'drop' }` or `{ tag: 'replace', val: event }`. An event is
// `{ kind, tsNs (BigInt), runId, attributes: [[key, value]], payload (JSON text) }`. Module
// state survives between batches of the same instance.

import { log, counterAdd } from 'outrigger:plugin/host@0.1.0';

export function init(config) {
  log('info', `{name} starting with config ${config}`);
}

export function onBatch(events) {
  // Shows up as outrigger_plugin_counter_total{plugin="{name}", name="events"}.
  counterAdd('events', BigInt(events.length));
  return events.map(() => ({ tag: 'keep' }));
}
