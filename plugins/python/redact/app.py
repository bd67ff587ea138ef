"""The `redact` handler in Python: the same behaviour, byte for byte, as plugins/redact (Rust).

Replaces the top-level payload fields named in config `fields` with "***" and counts them in
the plugin counter `redacted`. A payload that names none of the fields, is not a JSON object, or
is JSON the Rust plugin refuses (a lone surrogate escape, nesting deeper than 127) is kept
untouched. A redacted one is re-serialised as the Rust plugin does: compact, keys sorted by code
point at every level, numbers exactly as written (exponent spelled `e+`/`e-`). The contract:
docs/plugins.md, "The redact contract".
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

FIELDS: list = []

# serde_json's recursion limit: the top-level object is depth 1; 127 is the deepest accepted.
MAX_DEPTH = 127
# Payload text is valid UTF-8, so lone surrogates can only come from `\uD8xx`-style escapes.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Every escape in order (outside strings valid JSON has no backslash).
ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|[^u])")


class Num(str):
    """A JSON number kept as its source text, so nothing is lost to floats."""


def _number(text: str) -> Num:
    e = max(text.find("e"), text.find("E"))
    if e < 0:
        return Num(text)
    sign = "" if text[e + 1] in "+-" else "+"
    return Num(text[:e] + "e" + sign + text[e + 1 :])


def _refuse(name: str):
    raise ValueError(f"not JSON: {name}")


# Numbers are parsed into placeholder strings "\ue000<i>\ue001" (private-use chars), so that the
# json module's C encoder writes everything else; the placeholders are then swapped for the
# numbers' text. A payload that holds those chars itself takes the pure-Python writer instead.
PLACEHOLDER_CHARS = re.compile("[\ue000\ue001]|\\\\u[eE]00[01]")
PLACEHOLDER = re.compile('"\ue000(\\d+)\ue001"')


def parse(text: str):
    """`(tree, numbers)` as the Rust plugin parses the payload, or None where it refuses it.
    `numbers` lists the number texts the tree's placeholders stand for; None when the tree
    holds `Num`s instead."""
    if SURROGATE_ESCAPE.search(text) and has_lone_surrogate(text):
        return None
    if too_deep(text):
        return None
    try:
        if PLACEHOLDER_CHARS.search(text):
            hooks = dict(parse_int=_number, parse_float=_number, parse_constant=_refuse)
            return json.loads(text, **hooks), None
        numbers = []

        def placeholder(t: str) -> str:
            numbers.append(_number(t))
            return f"\ue000{len(numbers) - 1}\ue001"

        hooks = dict(parse_int=placeholder, parse_float=placeholder, parse_constant=_refuse)
        return json.loads(text, **hooks), numbers
    except ValueError:
        return None


def dump(tree, numbers) -> str:
    """The tree as the Rust plugin writes it (see `write`)."""
    if numbers is None:
        out: list = []
        write(tree, out)
        return "".join(out)
    text = json.dumps(tree, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return PLACEHOLDER.sub(lambda m: numbers[int(m.group(1))], text) if numbers else text


def has_lone_surrogate(text: str) -> bool:
    """Whether a \\uD800-\\uDBFF escape is not directly followed by a \\uDC00-\\uDFFF one, or the
    reverse: anywhere, even in a value that a later duplicate key replaces."""
    high_end = -1  # where an unpaired high surrogate escape ends
    for m in ESCAPE.finditer(text):
        unit = int(m.group()[2:], 16) if len(m.group()) == 6 else -1
        low = 0xDC00 <= unit <= 0xDFFF
        if high_end >= 0 and not (low and m.start() == high_end):
            return True
        if high_end < 0 and low:
            return True
        high_end = m.start() + 6 if 0xD800 <= unit <= 0xDBFF else -1
    return high_end >= 0


def too_deep(text: str) -> bool:
    """Whether containers nest deeper than MAX_DEPTH."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def write(v, out: list) -> None:
    """Compact JSON, keys sorted by code point, numbers verbatim: what serde_json writes."""
    if isinstance(v, Num):
        out.append(v)
    elif isinstance(v, str):
        out.append(json.dumps(v, ensure_ascii=False))
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif v is None:
        out.append("null")
    elif isinstance(v, list):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            write(x, out)
        out.append("]")
    else:
        out.append("{")
        for i, k in enumerate(sorted(v)):
            if i:
                out.append(",")
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            write(v[k], out)
        out.append("}")


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
            parsed = parse(ev.payload)
            obj, numbers = parsed if parsed else (None, None)
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
            ev.payload = dump(obj, numbers)
            verdicts.append(types.Verdict_Replace(ev))
        if redacted:
            host.counter_add("redacted", redacted)
        return verdicts
