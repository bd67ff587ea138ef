"""The `redact` handler in Python: the same behaviour, byte for byte, as plugins/redact (Rust).

Replaces the top-level payload fields named in config `fields` with "***" and counts them in
the plugin counter `redacted`. A payload that names none of the fields, or is not a JSON object,
is kept untouched; a redacted one is re-serialised compactly with its keys sorted (as the Rust
plugin's serde_json map does).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

FIELDS: list = []


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global FIELDS
        text = config.strip()
        try:
            cfg = {} if text in ("", "null") else json.loads(text)
        except ValueError as e:
            raise Err(f"redact config: {e}")
        FIELDS = [str(f) for f in cfg.get("fields", [])] if isinstance(cfg, dict) else []
        if not FIELDS:
            host.log(types.Level.WARN, "no `fields` configured: nothing will be redacted")

    def on_batch(self, events):
        verdicts = []
        redacted = 0
        for ev in events:
            if not any(f in ev.payload for f in FIELDS):
                verdicts.append(types.Verdict_Keep())
                continue
            try:
                obj = json.loads(ev.payload)
            except ValueError:
                obj = None
            n = 0
            if isinstance(obj, dict):
                for f in FIELDS:
                    if f in obj:
                        obj[f] = "***"
                        n += 1
            if n == 0:
                verdicts.append(types.Verdict_Keep())
                continue
            redacted += n
            ev.payload = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
            verdicts.append(types.Verdict_Replace(ev))
        if redacted:
            host.counter_add("redacted", redacted)
        return verdicts
