//! Conditions: CEL expressions over one event (SPEC "Conditions").
//!
//! In: the expression text from a config key or an API body, compiled once with
//! [`Condition::compile`]; then one [`Event`] per evaluation. Out: `true` or `false` for the
//! event, or (from [`Condition::eval`]) the reason the expression could not be evaluated on it.
//! The variables are `type` (string), `run_id` (string, `""` when absent), `ts_ns` (int),
//! `attributes` (map of string to string) and `data` (the event's JSON). Only the variables the
//! expression names are built for an event, so `data` is parsed only when it is used.
//! [`Condition::matches`] is the form the pipeline uses: an evaluation error counts in
//! `outrigger_condition_errors_total{where}` and answers `false`. No I/O, no state.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::objects::Key;
use cel::{Context, Env, Program, Value};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::Event;

/// A substring searcher built once per condition.
type Finder = memchr::memmem::Finder<'static>;
use crate::metrics::Metrics;

mod fast;
use fast::Fast;

/// The standard CEL environment, built once: conditions compile and run against it.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// An expression that does not compile, with where in the expression the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column} of the expression: {message}")]
pub struct ConditionError {
    /// What is wrong, as the CEL parser says it.
    pub message: String,
    /// 1-based line within the expression.
    pub line: usize,
    /// 1-based column (in characters) within that line.
    pub column: usize,
}

/// Which of the event's variables an expression names.
#[derive(Clone, Copy, Debug, Default)]
struct Uses {
    kind: bool,
    run_id: bool,
    ts_ns: bool,
    attributes: bool,
    data: bool,
}

/// A compiled condition. Cheap to clone (the program is shared).
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
    uses: Uses,
    /// `F` when the expression is `has(data.F) && …`: an event whose data does not even
    /// contain the key `"F"` is false without parsing it.
    guard: Option<Arc<Finder>>,
    /// The top-level fields of `data` the expression reads, when it reads `data` only as
    /// `data.F` (or `has(data.F)`): only those are decoded from an event's JSON.
    fields: Option<Arc<[String]>>,
    /// The expression lowered to native code, when it has one of the common shapes.
    fast: Option<Arc<Fast>>,
    /// With `guard`: for `has(data.F) && data.F in ["a", …]`, the texts `"a"`, …, one of
    /// which an object's JSON must hold for the expression to be true.
    needles: Option<Arc<[Finder]>>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Condition {
    /// Compiles `src`; a syntax error names its line and column within `src`.
    pub fn compile(src: &str) -> Result<Condition, ConditionError> {
        if src.trim().is_empty() {
            return Err(ConditionError {
                message: "the expression is empty".into(),
                line: 1,
                column: 1,
            });
        }
        let program = ENV.compile(src).map_err(|errs| {
            let first = errs.errors.first();
            let (line, col) = first.map_or((1, 1), |e| e.pos);
            ConditionError {
                message: first.map_or_else(|| errs.to_string(), |e| e.msg.clone()),
                line: line.max(1) as usize,
                column: col.max(1) as usize,
            }
        })?;
        let refs = program.references();
        let uses = Uses {
            kind: refs.has_variable("type"),
            run_id: refs.has_variable("run_id"),
            ts_ns: refs.has_variable("ts_ns"),
            attributes: refs.has_variable("attributes"),
            data: refs.has_variable("data"),
        };
        let guard_field = data_guard(program.expression());
        let guard = guard_field.as_ref().map(|f| {
            let mut quoted = Vec::with_capacity(f.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(f.as_bytes());
            quoted.push(b'"');
            Arc::new(memchr::memmem::Finder::new(&quoted).into_owned())
        });
        let fields = uses
            .data
            .then(|| {
                let mut f = Vec::new();
                data_fields(program.expression(), &mut f).then_some(f)
            })
            .flatten()
            .map(|mut f| {
                f.sort();
                f.dedup();
                Arc::from(f)
            });
        let fast = Fast::lower(program.expression())
            .filter(|_| !uses.data || fields.is_some())
            .map(Arc::new);
        let needles = match (&guard_field, &fast) {
            (Some(field), Some(f)) => f.needles(field).map(|ns| {
                ns.iter()
                    .map(|n| memchr::memmem::Finder::new(n).into_owned())
                    .collect::<Vec<_>>()
                    .into()
            }),
            _ => None,
        };
        Ok(Condition {
            needles,
            source: Arc::from(src),
            program: Arc::new(program),
            uses,
            guard,
            fast,
            fields,
        })
    }

    /// True when the result depends on the event's type alone (it can be remembered per type).
    pub fn uses_only_type(&self) -> bool {
        let u = self.uses;
        !(u.run_id || u.ts_ns || u.attributes || u.data)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the expression names `data`: only then is an event's JSON parsed.
    pub fn uses_data(&self) -> bool {
        self.uses.data
    }

    /// Evaluates the condition on `e`. `Err` says why it could not be (a missing field, a
    /// wrong type, a result that is not a bool).
    pub fn eval(&self, e: &Event) -> Result<bool, String> {
        // `has(data.F) && …` on data without the key anywhere: false, unparsed. (An escaped key
        // could hide it, so data with a backslash is parsed. Non-object data is false here too,
        // where CEL would report `has` on a non-map: the guard reads "events with this field".)
        if let Some(key) = &self.guard
            && key.find(&e.data).is_none()
            && !e.data.contains(&b'\\')
        {
            return Ok(false);
        }
        // `has(data.F) && data.F in [literals]` on an object that holds none of the literals'
        // texts: false (has() is false, or data.F is some other value), unparsed.
        if let Some(needles) = &self.needles
            && data_is_object(&e.data)
            && !e.data.contains(&b'\\')
            && !needles.iter().any(|n| n.find(&e.data).is_some())
        {
            return Ok(false);
        }
        if let Some(f) = &self.fast {
            let decode = || {
                let fields = self.fields.as_deref()?;
                data_is_object(&e.data)
                    .then(|| pick(&e.data, fields).ok())
                    .flatten()
            };
            if let Some(b) = f.eval(e, &fast::LazyData::new(&decode)) {
                return Ok(b);
            }
        }
        // `data`: only the fields the expression reads when it reads fields.
        let mut data = None;
        if self.uses.data {
            let json = match &self.fields {
                // An object: only the fields the expression reads (the rest is skipped, not
                // built). Anything else is decoded whole so CEL reports it as it would.
                Some(fields) if data_is_object(&e.data) => {
                    pick(&e.data, fields).map(serde_json::Value::Object)
                }
                _ => serde_json::from_slice(&e.data),
            }
            .map_err(|err| format!("the event's data is not JSON: {err}"))?;
            data = Some(json);
        }
        let mut ctx = Context::with_env(ENV.clone());
        if self.uses.kind {
            ctx.add_variable_from_value("type", &*e.kind);
        }
        if self.uses.run_id {
            ctx.add_variable_from_value("run_id", e.run_id.as_deref().unwrap_or(""));
        }
        if self.uses.ts_ns {
            ctx.add_variable_from_value("ts_ns", Value::Int(e.ts_ns.min(i64::MAX as u64) as i64));
        }
        if self.uses.attributes {
            let map: HashMap<Key, Value> = e
                .attributes
                .iter()
                .map(|(k, v)| (Key::from(k.clone()), Value::from(v.as_str())))
                .collect();
            ctx.add_variable_from_value("attributes", map);
        }
        if let Some(json) = data {
            ctx.add_variable_from_value("data", json_to_cel(json));
        }
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "the expression gave {}, not a bool",
                other.type_of()
            )),
            Err(err) => Err(err.to_string()),
        }
    }

    /// [`Condition::eval`] for the pipeline: an error is `false`, counted in
    /// `outrigger_condition_errors_total{where=site}`.
    pub fn matches(&self, e: &Event, m: &Metrics, site: &str) -> bool {
        match self.eval(e) {
            Ok(b) => b,
            Err(_) => {
                m.condition_error(site);
                false
            }
        }
    }
}

/// `F` when `expr` is `has(data.F) && …` (the guard the default tail policy uses).
fn data_guard(expr: &cel::IdedExpr) -> Option<String> {
    use cel::common::ast::Expr;
    let Expr::Call(call) = &expr.expr else {
        return None;
    };
    if call.func_name != "_&&_" || call.target.is_some() {
        return None;
    }
    let Expr::Select(sel) = &call.args.first()?.expr else {
        return None;
    };
    match &sel.operand.expr {
        Expr::Ident(name) if sel.test && name == "data" => Some(sel.field.clone()),
        _ => None,
    }
}

/// Collects into `out` every `F` of `data.F` in `expr`; false when `data` is used any other way
/// (as a whole, indexed, or rebound by a comprehension), so the whole object is needed.
fn data_fields(expr: &cel::IdedExpr, out: &mut Vec<String>) -> bool {
    use cel::common::ast::{EntryExpr, Expr};
    match &expr.expr {
        Expr::Select(sel) => match &sel.operand.expr {
            Expr::Ident(name) if name == "data" => {
                out.push(sel.field.clone());
                true
            }
            _ => data_fields(&sel.operand, out),
        },
        Expr::Ident(name) => name != "data",
        Expr::Call(call) => {
            call.target.as_deref().is_none_or(|t| data_fields(t, out))
                && call.args.iter().all(|a| data_fields(a, out))
        }
        Expr::List(list) => list.elements.iter().all(|a| data_fields(a, out)),
        Expr::Map(map) => map.entries.iter().all(|en| match &en.expr {
            EntryExpr::MapEntry(me) => data_fields(&me.key, out) && data_fields(&me.value, out),
            EntryExpr::StructField(sf) => data_fields(&sf.value, out),
        }),
        Expr::Struct(st) => st.entries.iter().all(|en| match &en.expr {
            EntryExpr::MapEntry(me) => data_fields(&me.key, out) && data_fields(&me.value, out),
            EntryExpr::StructField(sf) => data_fields(&sf.value, out),
        }),
        Expr::Comprehension(c) => {
            let binds = |v: &str| v == "data";
            !binds(&c.iter_var)
                && !c.iter_var2.as_deref().is_some_and(binds)
                && !binds(&c.accu_var)
                && [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]
                .into_iter()
                .all(|a| data_fields(a, out))
        }
        Expr::Literal(_) | Expr::Unspecified => true,
    }
}

/// Whether the JSON text starts an object.
fn data_is_object(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The object `data` with only the keys in `fields` (sorted) decoded; the rest skipped.
fn pick(
    data: &[u8],
    fields: &[String],
) -> serde_json::Result<serde_json::Map<String, serde_json::Value>> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let map = serde::de::DeserializeSeed::deserialize(Pick(fields), &mut de)?;
    de.end().map(|()| map)
}

/// Decodes a JSON object keeping only the named keys (sorted); the other values are skipped.
struct Pick<'a>(&'a [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Pick<'_> {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Pick<'_> {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<PickKey<'de>>()? {
            if self.0.binary_search_by(|f| f.as_str().cmp(&key.0)).is_ok() {
                out.insert(key.0.into_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct PickKey<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for PickKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PickKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(PickKey(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PickKey(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// JSON to a CEL value: integers are `int` (`uint` only past `i64::MAX`), so that
/// `data.n > 1000` compares like with like.
fn json_to_cel(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s)),
        J::Array(a) => Value::List(Arc::new(a.into_iter().map(json_to_cel).collect())),
        J::Object(o) => {
            let map: HashMap<Key, Value> = o
                .into_iter()
                .map(|(k, v)| (Key::from(k), json_to_cel(v)))
                .collect();
            Value::from(map)
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// Compiles while the config is read, so that a bad expression is a config error.
impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let src = String::deserialize(d)?;
        Condition::compile(&src)
            .map_err(|e| serde::de::Error::custom(format!("{CONDITION_ERROR_PREFIX}{e}: `{src}`")))
    }
}

/// How a compile error starts when it comes out of deserialising, so that the config reader
/// can find it and name the key it was under.
pub const CONDITION_ERROR_PREFIX: &str = "condition does not compile: ";

/// Why [`evaluate`] gave no value.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The expression does not compile.
    #[error("{0}")]
    Compile(ConditionError),
    /// It compiled but could not be evaluated on this event (a missing field, a bad type).
    #[error("{0}")]
    Eval(String),
}

/// The value of any CEL expression over `e`, as JSON (the debugger's `evaluate`). Every
/// variable is bound, `data` parsed whole; unlike a condition, the result may be of any type.
/// Bytes become base64 text; a function value or an opaque one becomes its type name.
pub fn evaluate(src: &str, e: &Event) -> Result<serde_json::Value, EvalError> {
    let cond = Condition::compile(src).map_err(EvalError::Compile)?;
    let data: serde_json::Value = serde_json::from_slice(&e.data)
        .map_err(|err| EvalError::Eval(format!("the event's data is not JSON: {err}")))?;
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_from_value("type", &*e.kind);
    ctx.add_variable_from_value("run_id", e.run_id.as_deref().unwrap_or(""));
    ctx.add_variable_from_value("ts_ns", Value::Int(e.ts_ns.min(i64::MAX as u64) as i64));
    let attrs: HashMap<Key, Value> = e
        .attributes
        .iter()
        .map(|(k, v)| (Key::from(k.clone()), Value::from(v.as_str())))
        .collect();
    ctx.add_variable_from_value("attributes", attrs);
    ctx.add_variable_from_value("data", json_to_cel(data));
    cond.program
        .execute(&ctx)
        .map(|v| cel_to_json(&v))
        .map_err(|err| EvalError::Eval(err.to_string()))
}

/// A CEL value as JSON (see [`evaluate`]).
fn cel_to_json(v: &Value) -> serde_json::Value {
    use base64::Engine as _;
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::UInt(u) => J::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.to_string()),
        Value::Bytes(b) => J::String(base64::engine::general_purpose::STANDARD.encode(&**b)),
        Value::List(l) => J::Array(l.iter().map(cel_to_json).collect()),
        Value::Map(m) => {
            let mut out: Vec<(String, J)> = m
                .map
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        Key::Int(i) => i.to_string(),
                        Key::Uint(u) => u.to_string(),
                        Key::Bool(b) => b.to_string(),
                        Key::String(s) => s.to_string(),
                    };
                    (k, cel_to_json(v))
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            J::Object(out.into_iter().collect())
        }
        other => J::String(format!("<{}>", other.type_of())),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::event::Line;
    use crate::event::parse_owned;

    fn event(line: &str) -> Event {
        match parse_owned(line.as_bytes(), 1 << 20).unwrap() {
            Line::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    fn eval(src: &str, line: &str) -> Result<bool, String> {
        Condition::compile(src).unwrap().eval(&event(line))
    }

    #[test]
    fn the_spec_examples() {
        let failed = r#"{"type":"test_end","data":{"status":"failed","duration_ms":1500},"attributes":{"suite":"e2e"}}"#;
        let passed = r#"{"type":"test_end","data":{"status":"passed","duration_ms":20},"attributes":{"suite":"unit"}}"#;
        let other = r#"{"type":"test_start","data":{"status":"failed","duration_ms":1500}}"#;
        let c = r#"type == "test_end" && data.status == "failed""#;
        assert_eq!(eval(c, failed), Ok(true));
        assert_eq!(eval(c, passed), Ok(false));
        assert_eq!(eval(c, other), Ok(false));
        assert_eq!(eval("data.duration_ms > 1000", failed), Ok(true));
        assert_eq!(eval("data.duration_ms > 1000", passed), Ok(false));
        assert_eq!(eval(r#"attributes.suite == "e2e""#, failed), Ok(true));
        assert_eq!(eval(r#"attributes.suite == "e2e""#, passed), Ok(false));
    }

    #[test]
    fn only_the_fields_read_are_decoded_and_the_answers_agree() {
        let fields = |src: &str| {
            Condition::compile(src)
                .unwrap()
                .fields
                .map(|f| f.iter().cloned().collect::<Vec<_>>())
        };
        assert_eq!(
            fields(r#"has(data.status) && data.status in ["failed", "error"]"#),
            Some(vec!["status".to_string()])
        );
        assert_eq!(
            fields("data.a.b > 1 || data.c == data.a.d"),
            Some(vec!["a".to_string(), "c".to_string()])
        );
        assert_eq!(fields(r#"type == "x""#), None, "data unused");
        assert_eq!(fields(r#"data["status"] == "x""#), None);
        assert_eq!(fields("size(data) > 2"), None);
        assert_eq!(fields(r#""k" in data"#), None);
        assert_eq!(fields("[1, 2].exists(data, data > 1)"), None);
        assert_eq!(
            fields("data.xs.exists(x, x > 1)"),
            Some(vec!["xs".to_string()])
        );
        // The pruned decode answers as the whole one does, errors included.
        let exprs = [
            r#"has(data.status) && data.status in ["failed", "error"]"#,
            r#"data.status == "failed""#,
            "data.n > 1000",
            "data.a.b == 2",
            "has(data.a.b)",
            "data.xs.exists(x, x > 1)",
        ];
        let lines = [
            r#"{"type":"t","data":{"status":"failed","pad":"xxxx","n":2000}}"#,
            r#"{"type":"t","data":{"pad":{"deep":[1,2,{"status":"failed"}]},"status":"passed"}}"#,
            r#"{"type":"t","data":{"st\u0061tus":"failed"}}"#,
            r#"{"type":"t","data":{"status":"error","status":"passed"}}"#,
            r#"{"type":"t","data":{"a":{"b":2},"xs":[0,3]}}"#,
            r#"{"type":"t","data":{"a":1}}"#,
            r#"{"type":"t","data":[1,2]}"#,
            r#"{"type":"t","data":"status"}"#,
            r#"{"type":"t","data":12}"#,
            r#"{"type":"t","data":{"n":1.5e3}}"#,
        ];
        for src in exprs {
            let pruned = Condition::compile(src).unwrap();
            assert!(pruned.fields.is_some(), "{src}");
            let mut whole = pruned.clone();
            whole.fields = None;
            for line in lines {
                let e = event(line);
                assert_eq!(pruned.eval(&e), whole.eval(&e), "{src} on {line}");
            }
        }
    }

    #[test]
    fn the_native_evaluator_agrees_with_cel() {
        let exprs = [
            r#"has(data.status) && data.status in ["failed", "error"]"#,
            r#"type == "test_end" && data.status == "failed""#,
            r#"type in ["run_end", "test_end"] || data.n >= 1000"#,
            "data.n > 1000",
            "data.n < 1000.5",
            "data.n != 3",
            "!(data.ok == true)",
            "data.a.b == 2 && has(data.a.c)",
            "has(data.a.b)",
            r#"attributes.suite == "e2e""#,
            r#"run_id == "" || run_id < "m""#,
            "ts_ns > 5",
            "data.x == null",
            "data.ok < true",
            r#"false && data.nope == "x""#,
            r#"data.nope == "x" || true"#,
            r#"data.status in ["failed", 1]"#,
            "data.u > 1u",
        ];
        let lines = [
            r#"{"type":"test_end","data":{"status":"failed","pad":"xxxx","n":2000,"ok":true}}"#,
            r#"{"type":"log","run_id":"r1","data":{"pad":{"deep":[1,2,{"status":"failed"}]},"status":"passed"}}"#,
            r#"{"type":"t","data":{"st\u0061tus":"failed","n":1000}}"#,
            r#"{"type":"t","data":{"status":"error","status":"passed"}}"#,
            r#"{"type":"t","data":{"a":{"b":2,"c":null},"x":null}}"#,
            r#"{"type":"t","data":{"a":{"b":"2"},"n":"many","ok":1}}"#,
            r#"{"type":"t","data":{"a":1,"n":1.5e3,"status":7}}"#,
            r#"{"type":"t","data":{"u":18446744073709551615,"n":-4}}"#,
            r#"{"type":"t","data":[1,2],"attributes":{"suite":"e2e"}}"#,
            r#"{"type":"t","data":"status","attributes":{"suite":"unit"}}"#,
            r#"{"type":"run_end","ts":1.5,"data":12}"#,
            r#"{"type":"t"}"#,
        ];
        for src in exprs {
            let fast = Condition::compile(src).unwrap();
            assert!(fast.fast.is_some(), "{src} has a native form");
            let mut cel = fast.clone();
            cel.fast = None;
            cel.needles = None;
            for line in lines {
                let e = event(line);
                assert_eq!(fast.eval(&e), cel.eval(&e), "{src} on {line}");
            }
        }
        for src in [
            "size(data) > 1",
            r#"data.s.startsWith("x")"#,
            "data.n + 1 > 2",
            "data.n * 2 > 1",
        ] {
            assert!(Condition::compile(src).unwrap().fast.is_none(), "{src}");
        }
    }

    #[test]
    fn the_has_guard_answers_without_parsing_and_agrees_with_cel() {
        let c = r#"has(data.status) && data.status in ["failed", "error"]"#;
        assert!(Condition::compile(c).unwrap().guard.is_some());
        assert_eq!(
            eval(c, r#"{"type":"a","data":{"status":"failed"}}"#),
            Ok(true)
        );
        assert_eq!(
            eval(c, r#"{"type":"a","data":{"status":"passed"}}"#),
            Ok(false)
        );
        assert_eq!(eval(c, r#"{"type":"a","data":{"other":1}}"#), Ok(false));
        // No data, or data that is not an object: not matched, not an error.
        assert_eq!(eval(c, r#"{"type":"a"}"#), Ok(false));
        assert_eq!(eval(c, r#"{"type":"a","data":[1,2]}"#), Ok(false));
        // The key named inside a value is parsed and evaluated properly.
        assert_eq!(
            eval(c, r#"{"type":"a","data":{"k":"\"status\""}}"#),
            Ok(false)
        );
        assert_eq!(
            eval(c, r#"{"type":"a","data":{"n":{"status":"failed"}}}"#),
            Ok(false)
        );
        // An escaped key is not missed.
        assert_eq!(
            eval(c, r#"{"type":"a","data":{"status":"error"}}"#),
            Ok(true)
        );
        assert!(
            Condition::compile("data.x == 1 && has(data.y)")
                .unwrap()
                .guard
                .is_none()
        );
        assert!(
            Condition::compile(r#"type in ["a"]"#)
                .unwrap()
                .uses_only_type()
        );
        assert!(!Condition::compile(c).unwrap().uses_only_type());
    }

    #[test]
    fn every_variable_is_bound() {
        let e = r#"{"type":"a","run_id":"r1","ts_ns":42,"data":[1,2.5,"x",null,{"k":true}]}"#;
        assert_eq!(eval(r#"run_id == "r1" && ts_ns == 42"#, e), Ok(true));
        assert_eq!(eval(r#"run_id == """#, r#"{"type":"a"}"#), Ok(true));
        assert_eq!(eval("size(data) == 5 && data[1] > 2.0", e), Ok(true));
        assert_eq!(eval(r#"data[2] == "x" && data[4].k"#, e), Ok(true));
        assert_eq!(eval("size(attributes) == 0", e), Ok(true));
        assert_eq!(
            eval(
                r#"has(data.k) || !has(data.k)"#,
                r#"{"type":"a","data":{}}"#
            ),
            Ok(true)
        );
    }

    #[test]
    fn data_is_parsed_only_when_named() {
        assert!(Condition::compile("data.x == 1").unwrap().uses_data());
        let c = Condition::compile(r#"type == "a""#).unwrap();
        assert!(!c.uses_data());
        // Bytes that are not JSON would fail to parse: unused, they are never looked at.
        let mut e = event(r#"{"type":"a"}"#);
        e.data = bytes::Bytes::from_static(b"{not json");
        assert_eq!(c.eval(&e), Ok(true));
        assert!(Condition::compile("data.x == 1").unwrap().eval(&e).is_err());
    }

    #[test]
    fn a_missing_field_is_false_and_counted() {
        let m = Metrics::new();
        let c = Condition::compile(r#"data.status == "failed""#).unwrap();
        let no_status = event(r#"{"type":"a","data":{"other":1}}"#);
        assert!(c.eval(&no_status).is_err());
        assert!(!c.matches(&no_status, &m, "sinks[0].when"));
        assert!(!c.matches(&no_status, &m, "sinks[0].when"));
        let ok = event(r#"{"type":"a","data":{"status":"failed"}}"#);
        assert!(c.matches(&ok, &m, "sinks[0].when"));
        assert_eq!(m.condition_errors_count("sinks[0].when"), 2);
        let attr = Condition::compile(r#"attributes.suite == "e2e""#).unwrap();
        assert!(!attr.matches(&no_status, &m, "sinks[1].when"));
        assert_eq!(m.condition_errors_count("sinks[1].when"), 1);
        assert!(
            m.render()
                .contains(r#"outrigger_condition_errors_total{where="sinks[0].when"} 2"#)
        );
    }

    #[test]
    fn a_wrong_type_is_an_error() {
        let e = r#"{"type":"a","data":{"n":"ten"}}"#;
        assert!(eval("data.n > 1000", e).is_err());
    }

    #[test]
    fn a_result_that_is_not_a_bool_is_an_error() {
        let e = r#"{"type":"a","data":{"n":3}}"#;
        let err = eval("data.n + 1", e).unwrap_err();
        assert!(err.contains("not a bool"), "{err}");
        let m = Metrics::new();
        let c = Condition::compile("type").unwrap();
        assert!(!c.matches(&event(e), &m, "x"));
        assert_eq!(m.condition_errors_count("x"), 1);
    }

    #[test]
    fn a_compile_error_has_line_and_column() {
        let e = Condition::compile(r#"type == "a" &&& data.x"#).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert_eq!(e.column, 15, "{e}");
        assert!(!e.message.is_empty());
        let e = Condition::compile("type == \"a\" &&\n  data.x ==").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().starts_with("line 2, column "), "{e}");
        assert!(Condition::compile("  ").is_err());
    }

    #[test]
    fn source_is_kept() {
        let c = Condition::compile("ts_ns > 0").unwrap();
        assert_eq!(c.source(), "ts_ns > 0");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""ts_ns > 0""#);
        let back: Condition = serde_json::from_str(r#""ts_ns > 0""#).unwrap();
        assert_eq!(back, c);
        let bad = serde_json::from_str::<Condition>(r#""ts_ns >""#).unwrap_err();
        assert!(bad.to_string().starts_with(CONDITION_ERROR_PREFIX), "{bad}");
    }

    #[test]
    fn evaluate_gives_any_value() {
        let e = event(
            r#"{"type":"t","run_id":"r","data":{"a":{"b":[1,2]},"s":"x"},"attributes":{"k":"v"}}"#,
        );
        assert_eq!(
            evaluate("data.a.b[1] + 1", &e).unwrap(),
            serde_json::json!(3)
        );
        assert_eq!(
            evaluate("data.a", &e).unwrap(),
            serde_json::json!({"b": [1, 2]})
        );
        assert_eq!(evaluate("type + run_id + attributes.k", &e).unwrap(), "trv");
        assert!(matches!(
            evaluate("data.missing", &e),
            Err(EvalError::Eval(_))
        ));
        assert!(matches!(evaluate("data.(", &e), Err(EvalError::Compile(_))));
    }
}
