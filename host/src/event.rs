//! Events and the wire formats around them.
//!
//! In: one NDJSON line (native `{"type": …}` or Weave `{"method": …, "payload": …}`), as a slice
//! of a shared receive buffer. Out: an [`Event`] whose `data` is still the bytes that arrived (a
//! `Bytes` slice of that buffer, never re-encoded), or a control line (`hello`, `flush`), or a
//! [`LineError`] that names what is wrong. [`Event::write_native`] turns an event back into a
//! native line for the sinks. [`assign_ids`] gives each accepted event its stable [`Event::id`]
//! (a per-process random prefix and a counter); nothing else here does I/O or keeps state.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest accepted event type, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;

/// One observed event as it flows through the pipeline.
#[derive(Clone, Debug)]
pub struct Event {
    /// The event's id: given once when the event is accepted (or kept from the sender's `id`)
    /// and the same through retries, spools, spills and replays, so that a sink (`Nats-Msg-Id`)
    /// or a consumer can deduplicate. `0` until assigned. On the wire, `"id"`: 32 hex digits.
    pub id: u128,
    /// Its place in the queue's running sequence (given when it is queued; with a durable
    /// queue it is the record's sequence in the write-ahead log and continues across
    /// restarts). `0` for events made inside the host. Never on the wire.
    pub seq: u64,
    /// The event type (`type` on the wire, `kind` in WIT). Shared: types repeat.
    pub kind: Arc<str>,
    /// Unix time in nanoseconds; filled at ingest when the sender gave none.
    pub ts_ns: u64,
    pub run_id: Option<Arc<str>>,
    pub attributes: Vec<(String, String)>,
    /// The event's `data` as the JSON text that arrived (`null` when absent).
    pub data: Bytes,
    /// When the host accepted the event, for the ingest-to-sink latency histogram.
    pub received: Instant,
}

/// What one ingested line turned out to be.
#[derive(Debug)]
pub enum Line {
    Event(Event),
    /// `{"hello": {"ack": false}}`: the client's reply preference; `"debug": true` (with
    /// acks) lets a `pause` breakpoint hold the connection's answers.
    Hello {
        ack: bool,
        debug: bool,
    },
    /// Weave `{"method": "flush"}`: answer once everything before it is delivered.
    Flush,
}

/// Why a line was refused. The text is what the client reads in its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("missing \"type\" (or \"method\" for Weave lines)")]
    MissingType,
    #[error("\"type\" must be 1 to 256 bytes")]
    TypeLength,
    #[error("line is {0} bytes, over max_line_bytes ({1})")]
    TooLong(usize, usize),
    #[error("empty line")]
    Empty,
    #[error("\"id\" must be a string of 1 to 32 hex digits, not all zero")]
    Id,
    #[error("a line has \"type\" (native) or \"method\" (Weave), not both")]
    Mixed,
}

static NULL: &[u8] = b"null";

/// Unix time now, in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct WireLine<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(default)]
    ts_ns: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    attributes: Option<Attributes>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    hello: Option<Hello>,
}

#[derive(Deserialize)]
struct Hello {
    #[serde(default = "yes")]
    ack: bool,
    #[serde(default)]
    debug: bool,
}

fn yes() -> bool {
    true
}

/// `attributes` as an ordered list, refusing anything but string values.
struct Attributes(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attributes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"attributes\" as an object of string values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Attributes, E> {
                Ok(Attributes(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Attributes, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(Attributes(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// FNV-1a, for the interner: short keys, no need for DoS-resistant hashing.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Shares the `type` and `run_id` strings that repeat on a connection, so that parsing
/// allocates only for new ones. Bounded: each set forgets everything past `MAX` entries. Types
/// and run ids are kept apart so that many runs do not flush the few types: a type then stays
/// one allocation however many runs come and go (the tail stage holds the types of open runs).
#[derive(Default)]
pub struct Interner {
    kinds: HashSet<Arc<str>, BuildHasherDefault<Fnv>>,
    runs: HashSet<Arc<str>, BuildHasherDefault<Fnv>>,
}

impl Interner {
    const MAX: usize = 4096;

    pub fn kind(&mut self, s: &str) -> Arc<str> {
        Self::get(&mut self.kinds, s)
    }

    pub fn run(&mut self, s: &str) -> Arc<str> {
        Self::get(&mut self.runs, s)
    }

    fn get(set: &mut HashSet<Arc<str>, BuildHasherDefault<Fnv>>, s: &str) -> Arc<str> {
        if let Some(a) = set.get(s) {
            return a.clone();
        }
        if set.len() >= Self::MAX {
            set.clear();
        }
        let a: Arc<str> = Arc::from(s);
        set.insert(a.clone());
        a
    }
}

/// Parses one line (without its newline). `buf` must contain `line`: `data` becomes a slice
/// of it, so the payload is never copied.
pub fn parse_line(buf: &Bytes, line: &[u8], max_line_bytes: usize) -> Result<Line, LineError> {
    parse_line_with(buf, line, max_line_bytes, None)
}

/// [`parse_line`], sharing repeated `type` and `run_id` strings through `interner`.
pub fn parse_line_with(
    buf: &Bytes,
    line: &[u8],
    max_line_bytes: usize,
    mut interner: Option<&mut Interner>,
) -> Result<Line, LineError> {
    if line.len() > max_line_bytes {
        return Err(LineError::TooLong(line.len(), max_line_bytes));
    }
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Err(LineError::Empty);
    }
    let wire: WireLine =
        serde_json::from_slice(trimmed).map_err(|e| LineError::Json(e.to_string()))?;
    if let Some(h) = wire.hello {
        return Ok(Line::Hello {
            ack: h.ack,
            debug: h.debug,
        });
    }
    let (kind, data) = match (wire.kind, wire.method) {
        // Which of the two would win is a guess: a Weave line's payload would be lost, or a
        // native line's data. Refused, so that the sender learns of it.
        (Some(_), Some(_)) => return Err(LineError::Mixed),
        (Some(k), None) => (k, wire.data),
        (None, Some(m)) if m == "flush" => return Ok(Line::Flush),
        (None, Some(m)) => (m, wire.payload),
        (None, None) => return Err(LineError::MissingType),
    };
    if kind.is_empty() || kind.len() > MAX_TYPE_BYTES {
        return Err(LineError::TypeLength);
    }
    let data = match data {
        Some(raw) => buf.slice_ref(raw.get().as_bytes()),
        None => Bytes::from_static(NULL),
    };
    let ts_ns = match (wire.ts_ns, wire.ts.and_then(|t| seconds_to_ns(t.get()))) {
        (Some(ns), _) => ns,
        (None, Some(ns)) => ns,
        _ => now_ns(),
    };
    let id = match wire.id {
        None => 0,
        Some(hex) => parse_id(&hex).ok_or(LineError::Id)?,
    };
    Ok(Line::Event(Event {
        id,
        seq: 0,
        kind: match interner.as_deref_mut() {
            Some(i) => i.kind(&kind),
            None => Arc::from(&*kind),
        },
        ts_ns,
        run_id: wire.run_id.map(|r| match interner {
            Some(i) => i.run(&r),
            None => Arc::from(&*r),
        }),
        attributes: wire.attributes.map(|a| a.0).unwrap_or_default(),
        data,
        received: Instant::now(),
    }))
}

/// The id prefix of this process: random (std's per-process hash keys) mixed with the start
/// time, so that daemons and restarts never share ids.
static ID_PREFIX: LazyLock<u64> = LazyLock::new(|| {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let prefix = random ^ now_ns().rotate_left(32);
    prefix.max(1)
});
static ID_NEXT: AtomicU64 = AtomicU64::new(1);

/// Gives every event of `events` that has no id yet a new one (one atomic step per call).
pub fn assign_ids(events: &mut [Event]) {
    let missing = events.iter().filter(|e| e.id == 0).count() as u64;
    if missing == 0 {
        return;
    }
    let first = ID_NEXT.fetch_add(missing, Ordering::Relaxed);
    let prefix = (*ID_PREFIX as u128) << 64;
    for (n, e) in (first..).zip(events.iter_mut().filter(|e| e.id == 0)) {
        e.id = prefix | n as u128;
    }
}

/// A new event id.
pub fn new_id() -> u128 {
    ((*ID_PREFIX as u128) << 64) | ID_NEXT.fetch_add(1, Ordering::Relaxed) as u128
}

/// An id as written on the wire: 32 lower-case hex digits.
pub fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

/// Reads an id written as 1 to 32 hex digits; zero is not an id.
pub fn parse_id(hex: &str) -> Option<u128> {
    if hex.is_empty() || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().filter(|id| *id != 0)
}

/// Unix seconds as written (`1732290000.123`) to nanoseconds, exactly for plain decimals
/// (an f64 would round the last digits). Negative or non-numeric values give `None`.
fn seconds_to_ns(text: &str) -> Option<u64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
    {
        let secs: u64 = int.parse().ok()?;
        let mut ns: u64 = 0;
        for i in 0..9 {
            ns = ns * 10 + frac.as_bytes().get(i).map_or(0, |b| (b - b'0') as u64);
        }
        return secs.checked_mul(1_000_000_000)?.checked_add(ns);
    }
    let s: f64 = text.parse().ok()?;
    (s.is_finite() && s >= 0.0).then_some((s * 1e9) as u64)
}

/// Parses a JSON value that is not on a shared buffer (HTTP ingest of an array element,
/// a plugin's emitted event). Copies the line once.
pub fn parse_owned(line: &[u8], max_line_bytes: usize) -> Result<Line, LineError> {
    let buf = Bytes::copy_from_slice(line);
    parse_line(&buf, &buf, max_line_bytes)
}

impl Event {
    /// Builds an event from parts (a plugin's `emit` or `replace`). `data` must be JSON text;
    /// anything else is stored as a JSON string so the output stays valid NDJSON.
    pub fn from_parts(
        kind: String,
        ts_ns: u64,
        run_id: Option<String>,
        attributes: Vec<(String, String)>,
        data: String,
        received: Instant,
    ) -> Event {
        let data = if serde_json::from_str::<&RawValue>(&data).is_ok() {
            Bytes::from(data)
        } else {
            Bytes::from(serde_json::to_vec(&data).unwrap_or_else(|_| NULL.to_vec()))
        };
        Event {
            id: 0,
            seq: 0,
            kind: kind.into(),
            ts_ns,
            run_id: run_id.map(Arc::from),
            attributes,
            data,
            received,
        }
    }

    /// `data` as text. It arrived as valid JSON, hence valid UTF-8.
    pub fn data_str(&self) -> &str {
        std::str::from_utf8(&self.data).unwrap_or("null")
    }

    /// An estimate of the encoded size, for the batcher's `max_bytes`.
    pub fn encoded_len(&self) -> usize {
        64 + self.kind.len()
            + if self.id != 0 { 40 } else { 0 }
            + self.data.len()
            + self.run_id.as_ref().map_or(0, |r| r.len() + 12)
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 6)
                .sum::<usize>()
    }

    /// Appends the event as one native NDJSON line (with its newline).
    pub fn write_native(&self, out: &mut Vec<u8>) {
        write_native_parts(
            out,
            self.id,
            &self.kind,
            self.ts_ns,
            self.run_id.as_deref(),
            &self.attributes,
            &self.data,
        );
    }
}

/// Appends one native NDJSON line (with its newline) from an event's parts; `data` must be
/// JSON text. An `id` of 0 (not assigned) is left out.
pub fn write_native_parts(
    out: &mut Vec<u8>,
    id: u128,
    kind: &str,
    ts_ns: u64,
    run_id: Option<&str>,
    attributes: &[(String, String)],
    data: &[u8],
) {
    out.extend_from_slice(b"{\"type\":");
    write_json_str(out, kind);
    if id != 0 {
        write_id(out, id);
    }
    out.extend_from_slice(b",\"ts_ns\":");
    out.extend_from_slice(itoa_u64(ts_ns, &mut [0u8; 20]));
    if let Some(run) = run_id {
        out.extend_from_slice(b",\"run_id\":");
        write_json_str(out, run);
    }
    if !attributes.is_empty() {
        out.extend_from_slice(b",\"attributes\":{");
        for (i, (k, v)) in attributes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, k);
            out.push(b':');
            write_json_str(out, v);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b"}\n");
}

/// Appends `,"id":"<32 hex digits>"`.
fn write_id(out: &mut Vec<u8>, id: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b",\"id\":\"");
    for i in (0..32).rev() {
        out.push(HEX[((id >> (i * 4)) & 0xf) as usize]);
    }
    out.push(b'"');
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes `s` as a JSON string literal, escaping only what JSON requires.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let hex = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(hex[(b >> 4) as usize]);
                out.push(hex[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Line, LineError> {
        parse_owned(s.as_bytes(), 1 << 20)
    }

    #[test]
    fn native_line_keeps_data_bytes() {
        let Line::Event(ev) = parse(
            r#"{"type":"test_end","data":{"b": 1,  "a":[1,2]},"run_id":"r1","ts":1732290000.5,"attributes":{"k":"v"}}"#,
        )
        .unwrap() else {
            panic!("not an event")
        };
        assert_eq!(&*ev.kind, "test_end");
        assert_eq!(ev.data_str(), r#"{"b": 1,  "a":[1,2]}"#);
        assert_eq!(ev.run_id.as_deref(), Some("r1"));
        assert_eq!(ev.ts_ns, 1_732_290_000_500_000_000);
        assert_eq!(ev.attributes, vec![("k".into(), "v".into())]);
        let mut out = Vec::new();
        ev.write_native(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["a"][1], 2);
        assert_eq!(v["type"], "test_end");
        assert_eq!(v["ts_ns"], 1_732_290_000_500_000_000u64);
    }

    #[test]
    fn weave_lines_and_controls() {
        let Line::Event(ev) =
            parse(r#"{"method":"call_start","payload":{"start":{"id":"x"}}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(&*ev.kind, "call_start");
        assert_eq!(ev.data_str(), r#"{"start":{"id":"x"}}"#);
        assert!(matches!(
            parse(r#"{"method":"flush","payload":{}}"#),
            Ok(Line::Flush)
        ));
        // Both formats at once (found by the weave fuzz target: a payload that closes itself
        // and adds a "type"): refused, not taken as one and the other's fields dropped.
        for mixed in [
            r#"{"method":"call_start","payload":"`","type":"`&t"}"#,
            r#"{"type":"x","data":1,"method":"flush"}"#,
        ] {
            let Err(err) = parse(mixed) else {
                panic!("{mixed} was taken")
            };
            assert!(matches!(err, LineError::Mixed), "{mixed}: {err}");
            assert!(err.to_string().contains("not both"));
        }
        assert!(matches!(
            parse(r#"{"hello":{"ack":false}}"#),
            Ok(Line::Hello {
                ack: false,
                debug: false
            })
        ));
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(matches!(parse("{not json"), Err(LineError::Json(_))));
        assert_eq!(parse(r#"{"data":1}"#).unwrap_err(), LineError::MissingType);
        assert_eq!(parse(r#"{"type":""}"#).unwrap_err(), LineError::TypeLength);
        assert!(matches!(
            parse(r#"{"type":"a","attributes":{"k":1}}"#),
            Err(LineError::Json(_))
        ));
        assert_eq!(
            parse_owned(br#"{"type":"abc"}"#, 5).unwrap_err(),
            LineError::TooLong(14, 5)
        );
    }

    #[test]
    fn ids_are_given_once_and_survive_the_wire() {
        let mut events: Vec<Event> = (0..3)
            .map(
                |i| match parse(&format!(r#"{{"type":"t","data":{i}}}"#)).unwrap() {
                    Line::Event(e) => e,
                    _ => unreachable!(),
                },
            )
            .collect();
        assert!(events.iter().all(|e| e.id == 0));
        assign_ids(&mut events);
        let ids: Vec<u128> = events.iter().map(|e| e.id).collect();
        assert!(ids.iter().all(|id| *id != 0));
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:x?}");
        assign_ids(&mut events);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        // Written and read back (a spool, a spill): the same id.
        let mut out = Vec::new();
        events[1].write_native(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains(&format!(r#""id":"{}""#, format_id(ids[1]))),
            "{text}"
        );
        let Line::Event(back) = parse(text.trim_end()).unwrap() else {
            panic!()
        };
        assert_eq!(back.id, ids[1]);
        // A sender's own id is kept; a bad one is refused with the reason.
        let Line::Event(own) = parse(r#"{"type":"t","id":"00ff"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(own.id, 0xff);
        let long = format!("\"{}\"", "f".repeat(33));
        assert!(parse(r#"{"type":"t","id":12}"#).is_err());
        for bad in ["\"\"", "\"xyz\"", "\"0\"", long.as_str()] {
            assert_eq!(
                parse(&format!(r#"{{"type":"t","id":{bad}}}"#)).unwrap_err(),
                LineError::Id,
                "{bad}"
            );
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn strings_are_escaped() {
        let ev = Event::from_parts(
            "a\"b\n\u{1}".into(),
            1,
            None,
            vec![],
            "not json".into(),
            Instant::now(),
        );
        let mut out = Vec::new();
        ev.write_native(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "a\"b\n\u{1}");
        assert_eq!(v["data"], "not json");
    }
}
