//! A native evaluator for the common shapes of conditions, answering without the CEL
//! interpreter when it can be sure of CEL's answer.
//!
//! In: the compiled expression's AST, lowered once by [`Fast::lower`] (an expression with any
//! other shape gives `None` and is always interpreted); then, per event, the event's fields and
//! the decoded top-level fields of its `data`. Out: `Some(bool)` when the answer is certain,
//! `None` when only the interpreter can say (a missing field, values of different kinds, a
//! shape it does not know): the caller then runs CEL, which also produces the error. The
//! shapes: `&&`, `||`, `!`, `==`, `!=`, `<`, `<=`, `>`, `>=`, `in [literals]`, `has(data.F…)`,
//! over `type`, `run_id`, `ts_ns`, `attributes.K`, `data.F…` and literals. No state, no I/O.

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use serde_json::{Map, Value as J};

use crate::event::Event;

/// An event's `data`, decoded on first use (only when some part of the expression reads it).
pub struct LazyData<'a> {
    decode: &'a dyn Fn() -> Option<Map<String, J>>,
    cell: std::cell::OnceCell<Option<Map<String, J>>>,
}

impl<'a> LazyData<'a> {
    /// `decode` gives the fields the expression reads, or `None` when data is not an object.
    pub fn new(decode: &'a dyn Fn() -> Option<Map<String, J>>) -> LazyData<'a> {
        LazyData {
            decode,
            cell: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> Option<&Map<String, J>> {
        self.cell.get_or_init(|| (self.decode)()).as_ref()
    }
}

/// A lowered expression.
#[derive(Clone, Debug)]
pub enum Fast {
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    Cmp(Op, Operand, Operand),
    In(Operand, Vec<Lit>),
    /// `has(data.a.b)`: the path below `data`.
    Has(Vec<String>),
    Lit(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
pub enum Operand {
    Type,
    RunId,
    TsNs,
    Attr(String),
    /// `data.a.b`: the path below `data`.
    Data(Vec<String>),
    Lit(Lit),
}

/// A scalar, of one of the kinds CEL gives JSON and literals.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
}

impl Fast {
    /// Lowers `e`, or `None` when some part of it is not one of the known shapes.
    pub fn lower(e: &IdedExpr) -> Option<Fast> {
        match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Lit(*b.inner())),
            Expr::Select(sel) if sel.test => {
                let mut path = data_path(&sel.operand)?;
                path.push(sel.field.clone());
                Some(Fast::Has(path))
            }
            Expr::Call(call) if call.target.is_none() => {
                let arg = |i: usize| call.args.get(i);
                match (call.func_name.as_str(), call.args.len()) {
                    (operators::LOGICAL_AND, 2) => Some(Fast::And(
                        Box::new(Fast::lower(arg(0)?)?),
                        Box::new(Fast::lower(arg(1)?)?),
                    )),
                    (operators::LOGICAL_OR, 2) => Some(Fast::Or(
                        Box::new(Fast::lower(arg(0)?)?),
                        Box::new(Fast::lower(arg(1)?)?),
                    )),
                    (operators::LOGICAL_NOT, 1) => Some(Fast::Not(Box::new(Fast::lower(arg(0)?)?))),
                    (operators::IN, 2) => {
                        let Expr::List(list) = &arg(1)?.expr else {
                            return None;
                        };
                        let lits = list
                            .elements
                            .iter()
                            .map(|x| match &x.expr {
                                Expr::Literal(l) => literal(l),
                                _ => None,
                            })
                            .collect::<Option<Vec<_>>>()?;
                        Some(Fast::In(operand(arg(0)?)?, lits))
                    }
                    (name, 2) => {
                        let op = match name {
                            operators::EQUALS => Op::Eq,
                            operators::NOT_EQUALS => Op::Ne,
                            operators::LESS => Op::Lt,
                            operators::LESS_EQUALS => Op::Le,
                            operators::GREATER => Op::Gt,
                            operators::GREATER_EQUALS => Op::Ge,
                            _ => return None,
                        };
                        Some(Fast::Cmp(op, operand(arg(0)?)?, operand(arg(1)?)?))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// CEL's answer on `e`, whose data is decoded from `data` only if it is read, when it is
    /// certain.
    pub fn eval(&self, e: &Event, data: &LazyData) -> Option<bool> {
        match self {
            Fast::Lit(b) => Some(*b),
            // CEL: false && x is false whatever x is (an error too), and so is x && false.
            // The right side is looked at only when the left does not settle it.
            Fast::And(a, b) => match a.eval(e, data) {
                Some(false) => Some(false),
                l => match (l, b.eval(e, data)) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
            },
            Fast::Or(a, b) => match a.eval(e, data) {
                Some(true) => Some(true),
                l => match (l, b.eval(e, data)) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            },
            Fast::Not(a) => a.eval(e, data).map(|b| !b),
            Fast::Has(path) => {
                let (last, up) = path.split_last()?;
                let mut map = data.get()?;
                for k in up {
                    match map.get(k)? {
                        J::Object(m) => map = m,
                        _ => return None,
                    }
                }
                Some(map.contains_key(last))
            }
            Fast::Cmp(op, l, r) => compare(*op, value(l, e, data)?, value(r, e, data)?),
            Fast::In(x, list) => {
                let x = value(x, e, data)?;
                let mut found = false;
                for l in list {
                    // Elements of another kind: CEL's equality across kinds is its own to say.
                    found |= compare(Op::Eq, x, l.val())?;
                }
                Some(found)
            }
        }
    }
}

impl Fast {
    /// For `has(data.F) && R`, where `R` can only be true when `data.F` is one of some string
    /// literals: those literals as JSON text (`"failed"`). An object whose text holds none of
    /// them (and no escape) makes the whole expression false, without decoding it.
    pub fn needles(&self, field: &str) -> Option<Vec<Vec<u8>>> {
        let Fast::And(has, rest) = self else {
            return None;
        };
        if !matches!(&**has, Fast::Has(p) if p.len() == 1 && p[0] == field) {
            return None;
        }
        let mut out = Vec::new();
        rest.collect_needles(field, &mut out).then_some(out)
    }

    fn collect_needles(&self, field: &str, out: &mut Vec<Vec<u8>>) -> bool {
        let on_field = |o: &Operand| matches!(o, Operand::Data(p) if p.len() == 1 && p[0] == field);
        let mut push = |l: &Lit| match l {
            // Text JSON writes as is: no quote, backslash or control character.
            Lit::Str(s) if !s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) => {
                out.push(format!("\"{s}\"").into_bytes());
                true
            }
            _ => false,
        };
        match self {
            Fast::In(x, lits) if on_field(x) => lits.iter().all(&mut push),
            Fast::Cmp(Op::Eq, x, Operand::Lit(l)) | Fast::Cmp(Op::Eq, Operand::Lit(l), x)
                if on_field(x) =>
            {
                push(l)
            }
            Fast::Or(a, b) => a.collect_needles(field, out) && b.collect_needles(field, out),
            _ => false,
        }
    }
}

/// The path below `data` that `e` spells (`data.a.b` is `["a", "b"]`), if it is one.
fn data_path(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Expr::Ident(name) if name == "data" => Some(Vec::new()),
        Expr::Select(sel) if !sel.test => {
            let mut p = data_path(&sel.operand)?;
            p.push(sel.field.clone());
            Some(p)
        }
        _ => None,
    }
}

fn operand(e: &IdedExpr) -> Option<Operand> {
    match &e.expr {
        Expr::Literal(l) => literal(l).map(Operand::Lit),
        Expr::Ident(name) => match name.as_str() {
            "type" => Some(Operand::Type),
            "run_id" => Some(Operand::RunId),
            "ts_ns" => Some(Operand::TsNs),
            _ => None,
        },
        Expr::Select(sel) if !sel.test => match &sel.operand.expr {
            Expr::Ident(name) if name == "attributes" => Some(Operand::Attr(sel.field.clone())),
            _ => {
                let p = data_path(e)?;
                (!p.is_empty()).then_some(Operand::Data(p))
            }
        },
        _ => None,
    }
}

fn literal(l: &LiteralValue) -> Option<Lit> {
    Some(match l {
        LiteralValue::Null => Lit::Null,
        LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
        LiteralValue::Int(i) => Lit::Int(*i.inner()),
        LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
        LiteralValue::Double(d) => Lit::Float(*d.inner()),
        LiteralValue::String(s) => Lit::Str(s.inner().to_string()),
        LiteralValue::Bytes(_) => return None,
    })
}

/// A scalar as [`compare`] sees it, borrowed from the event, its data or a literal.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
}

impl Lit {
    fn val(&self) -> Val<'_> {
        match self {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Int(i) => Val::Int(*i),
            Lit::UInt(u) => Val::UInt(*u),
            Lit::Float(f) => Val::Float(*f),
            Lit::Str(s) => Val::Str(s),
        }
    }
}

/// An operand's value on the event, as CEL would see it; `None` when it is missing or is not
/// a scalar (CEL would report the first, and compare the second by its own rules).
fn value<'a>(o: &'a Operand, e: &'a Event, data: &'a LazyData) -> Option<Val<'a>> {
    Some(match o {
        Operand::Lit(l) => l.val(),
        Operand::Type => Val::Str(&e.kind),
        Operand::RunId => Val::Str(e.run_id.as_deref().unwrap_or("")),
        Operand::TsNs => Val::Int(e.ts_ns.min(i64::MAX as u64) as i64),
        Operand::Attr(k) => Val::Str(
            e.attributes
                .iter()
                .rev()
                .find(|(ak, _)| ak == k)
                .map(|(_, v)| v.as_str())?,
        ),
        Operand::Data(path) => {
            let (first, rest) = path.split_first()?;
            let mut v = data.get()?.get(first)?;
            for k in rest {
                v = match v {
                    J::Object(m) => m.get(k)?,
                    _ => return None,
                };
            }
            match v {
                J::Null => Val::Null,
                J::Bool(b) => Val::Bool(*b),
                J::String(s) => Val::Str(s),
                J::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => Val::Int(i),
                    (None, Some(u)) => Val::UInt(u),
                    _ => Val::Float(n.as_f64()?),
                },
                J::Array(_) | J::Object(_) => return None,
            }
        }
    })
}

/// `a op b` for two scalars of the same kind; `None` across kinds.
fn compare(op: Op, a: Val, b: Val) -> Option<bool> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Val::Null, Val::Null) => Some(Ordering::Equal),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(&y)),
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(&y)),
        (Val::UInt(x), Val::UInt(y)) => Some(x.cmp(&y)),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(&y),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        _ => return None,
    };
    match op {
        Op::Eq => Some(ord == Some(Ordering::Equal)),
        Op::Ne => Some(ord != Some(Ordering::Equal)),
        // Ordering of null and bool: CEL's own rules (an error for null).
        _ if matches!(a, Val::Null | Val::Bool(_)) => None,
        Op::Lt => ord.map(|o| o == Ordering::Less),
        Op::Le => ord.map(|o| o != Ordering::Greater),
        Op::Gt => ord.map(|o| o == Ordering::Greater),
        Op::Ge => ord.map(|o| o != Ordering::Less),
    }
}
