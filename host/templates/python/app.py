"""`{name}`: an Outrigger handler plugin in Python, built with componentize-py.

Outrigger calls `init` once per instance with the plugin's config (JSON text, from `{name}.yml`
beside the .wasm or `plugins.chain[].config`); raising `Err("why")` there refuses the plugin.
Then `on_batch` gets whole batches: return one verdict per event, in order:
`types.Verdict_Keep()`, `types.Verdict_Drop()` or `types.Verdict_Replace(event)`. Module
globals survive between batches of the same instance. Log with `host.log`: the component is
built with `--stub-wasi` (see build.sh), so `print` would trap.
"""

import wit_world
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        host.log(types.Level.INFO, f"{name} starting with config {config}")

    def on_batch(self, events):
        # Shows up as outrigger_plugin_counter_total{plugin="{name}", name="events"}.
        host.counter_add("events", len(events))
        return [types.Verdict_Keep() for _ in events]
