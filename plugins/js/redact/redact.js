// `redact` in JavaScript: the same handler, byte for byte, as plugins/redact (Rust).
//
// In: batches of events and, at `init`, a config `{"fields": ["password", "token"]}`. Out: one
// verdict per event: `replace` with every top-level payload field named in `fields` set to
// "***", or `keep` when the event has none of them, or its payload is not a JSON object the
// Rust plugin would accept (lone surrogate escapes, nesting deeper than 127). A replaced payload
// is re-serialised as the Rust plugin does: compact, keys sorted by code point at every level,
// numbers exactly as written (exponent spelled `e+`/`e-`). Counts redacted fields in the plugin
// counter `redacted`. The contract: docs/plugins.md, "The redact contract".
//
// Built with componentize-js (build.sh): StarlingMonkey runs this module inside the component.

import { log, counterAdd } from 'outrigger:plugin/host@0.1.0';

/** Field names to redact, set by `init`. */
let fields = [];

/** A JSON number kept as its source text, so nothing is lost to doubles. */
class Num {
  constructor(text) {
    this.text = text;
  }
}

/** What `parse` returns for JSON the Rust plugin refuses: the event is kept. */
const REFUSED = Symbol('refused');

/** serde_json's recursion limit: the top-level object is depth 1; 127 is the deepest accepted. */
const MAX_DEPTH = 127;

export function init(config) {
  const text = config.trim();
  let cfg = {};
  if (text !== '' && text !== 'null') {
    try {
      cfg = JSON.parse(text);
    } catch (e) {
      throw `redact config: ${e.message}`;
    }
  }
  const list = cfg !== null && typeof cfg === 'object' ? cfg.fields : undefined;
  if (list !== undefined && (!Array.isArray(list) || list.some((f) => typeof f !== 'string'))) {
    throw 'redact config: `fields` must be a list of strings';
  }
  fields = list ?? [];
  if (fields.length === 0) {
    log('warn', 'no `fields` configured: nothing will be redacted');
  }
}

export function onBatch(events) {
  let redacted = 0;
  const verdicts = events.map((ev) => {
    // Cheap pre-check: most payloads name none of the fields.
    if (!namesAField(ev.payload)) {
      return { tag: 'keep' };
    }
    const obj = parse(ev.payload);
    if (obj === REFUSED) {
      return { tag: 'keep' };
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj) || obj instanceof Num) {
      return { tag: 'keep' };
    }
    let n = 0;
    for (const f of fields) {
      if (Object.hasOwn(obj, f)) {
        obj[f] = '***';
        n += 1;
      }
    }
    if (n === 0) {
      return { tag: 'keep' };
    }
    redacted += n;
    ev.payload = write(obj);
    return { tag: 'replace', val: ev };
  });
  if (redacted > 0) {
    counterAdd('redacted', BigInt(redacted));
  }
  return verdicts;
}

/**
 * Parses a payload as the Rust plugin does, or returns REFUSED: invalid JSON, a lone surrogate
 * escape anywhere (even in a value a later duplicate key replaces), or nesting deeper than
 * MAX_DEPTH. Numbers become `Num`s.
 */
function parse(text) {
  // Payload text is well-formed UTF-16 (it came from UTF-8), so lone surrogates can only come
  // from `\uD8xx`-style escapes; most payloads have none.
  const surrogateEscape = hasSurrogateEscape(text);
  if (surrogateEscape && hasLoneSurrogate(text)) return REFUSED;
  if (tooDeep(text)) return REFUSED;
  // Code unit order is code point order unless there are astral chars (surrogate pairs).
  // (encodeURIComponent writes an astral char's UTF-8 lead byte as %F0-%F4; the engine runs
  // regular expressions slowly, native string functions fast.)
  byUnits = !surrogateEscape && encodeURIComponent(text).indexOf('%F') < 0;
  try {
    return JSON.parse(text, keepNumberText);
  } catch {
    return REFUSED;
  }
}

/** Whether object keys of the payload being written sort by UTF-16 code unit (set by `parse`). */
let byUnits = true;

/** Whether any configured field name occurs in the text. */
function namesAField(text) {
  for (let i = 0; i < fields.length; i++) {
    if (text.indexOf(fields[i]) >= 0) return true;
  }
  return false;
}

/** `JSON.parse` reviver: numbers keep their source text, the exponent as serde_json spells it. */
function keepNumberText(_key, value, context) {
  if (typeof value !== 'number') return value;
  const src = context.source;
  const e = Math.max(src.indexOf('e'), src.indexOf('E'));
  if (e < 0) return new Num(src);
  const sign = src[e + 1] === '-' || src[e + 1] === '+' ? '' : '+';
  return new Num(src.slice(0, e) + 'e' + sign + src.slice(e + 1));
}

/** Whether the text has a `\uD800`-`\uDFFF` escape (or a `\\` followed by one: a false alarm). */
function hasSurrogateEscape(text) {
  for (let i = text.indexOf('\\u'); i >= 0; i = text.indexOf('\\u', i + 2)) {
    if ((text.charCodeAt(i + 2) | 0x20) !== 0x64) continue;
    const c = text.charCodeAt(i + 3) | 0x20;
    if (c === 0x38 || c === 0x39 || (c >= 0x61 && c <= 0x66)) return true;
  }
  return false;
}

/** Every escape in order (outside strings valid JSON has no backslash). */
const ESCAPE = /\\(?:u[0-9a-fA-F]{4}|[^u])/g;

/**
 * Whether a `\uD800`-`\uDBFF` escape is not directly followed by a `\uDC00`-`\uDFFF` one, or
 * a low one comes alone.
 */
function hasLoneSurrogate(text) {
  let highEnd = -1; // where an unpaired high surrogate escape ends
  for (const m of text.matchAll(ESCAPE)) {
    const unit = m[0].length === 6 ? parseInt(m[0].slice(2), 16) : -1;
    const low = unit >= 0xdc00 && unit <= 0xdfff;
    if (highEnd >= 0 && !(low && m.index === highEnd)) return true;
    if (highEnd < 0 && low) return true;
    highEnd = unit >= 0xd800 && unit <= 0xdbff ? m.index + 6 : -1;
  }
  return highEnd >= 0;
}

/** Whether containers nest deeper than MAX_DEPTH (serde_json's recursion limit). */
function tooDeep(text) {
  // Cheap bound first: that deep needs more than MAX_DEPTH opening brackets.
  let opens = 0;
  for (let i = text.indexOf('['); i >= 0; i = text.indexOf('[', i + 1)) opens++;
  for (let i = text.indexOf('{'); i >= 0; i = text.indexOf('{', i + 1)) opens++;
  if (opens <= MAX_DEPTH) return false;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped char
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_DEPTH) return true;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return false;
}

/** Compact JSON, keys sorted by code point: what serde_json writes for the parsed value. */
function write(v) {
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v); // escapes exactly the characters serde_json escapes
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object':
      if (v === null) return 'null';
      if (v instanceof Num) return v.text;
      if (Array.isArray(v)) return '[' + v.map(write).join(',') + ']';
      return (
        '{' +
        (byUnits ? Object.keys(v).sort() : Object.keys(v).sort(byCodePoint))
          .map((k) => JSON.stringify(k) + ':' + write(v[k]))
          .join(',') +
        '}'
      );
    default:
      throw new Error(`unexpected ${typeof v} in a parsed payload`);
  }
}

/** Orders strings by code point (UTF-8 byte order), not by UTF-16 unit as `sort()` does. */
function byCodePoint(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      // A surrogate (an astral char) is above U+E000..U+FFFF in code point order.
      const sx = x >= 0xd800 && x <= 0xdfff;
      const sy = y >= 0xd800 && y <= 0xdfff;
      if (sx !== sy && Math.min(x, y) >= 0xd800) return sx ? 1 : -1;
      return x - y;
    }
  }
  return a.length - b.length;
}
