//! NATS subjects for the `nats` sink: the `subject` template, its `{type}` tokens and the
//! stream subjects that cover it.
//!
//! In: the configured template (`outrigger.events.{type}`) once, then event types. Out: a
//! valid publish subject per type (cached: types repeat), the subject filters a created stream
//! listens on (each token holding `{type}` becomes `*`), and whether a stream's filters cover
//! the template. Pure; no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::Subject;

/// The placeholder replaced by the event type.
const TYPE: &str = "{type}";

/// Most distinct types remembered; past it the cache starts again (types are few in practice,
/// but a sender controls them).
const CACHE_MAX: usize = 4096;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Type,
}

/// A parsed `subject` template.
#[derive(Clone, Debug)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
    /// The whole subject when the template has no `{type}`.
    fixed: Option<Subject>,
    cache: HashMap<Arc<str>, Subject>,
}

/// `s` as a NATS token: every character NATS does not allow in one (`.`, `*`, `>`,
/// whitespace, control characters) becomes `_`; an empty string is `_`.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl SubjectTemplate {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(template: &str) -> Result<SubjectTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(at) = rest.find('{') {
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_string()));
            }
            if rest[at..].starts_with(TYPE) {
                parts.push(Part::Type);
                rest = &rest[at + TYPE.len()..];
            } else {
                let end = rest[at..].find('}').map_or(rest.len(), |e| at + e + 1);
                return Err(format!(
                    "unknown placeholder `{}`: only {{type}} is replaced",
                    &rest[at..end]
                ));
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let t = SubjectTemplate {
            parts,
            fixed: None,
            cache: HashMap::new(),
        };
        // Any type gives a valid subject once the template itself renders to one.
        check_publish_subject(&t.render("x"))?;
        let fixed = (!t.parts.contains(&Part::Type)).then(|| Subject::from(template));
        Ok(SubjectTemplate { fixed, ..t })
    }

    fn render(&self, kind: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Type => out.push_str(&token(kind)),
            }
        }
        out
    }

    /// The subject for an event of type `kind`.
    pub fn subject(&mut self, kind: &Arc<str>) -> Subject {
        if let Some(s) = &self.fixed {
            return s.clone();
        }
        if let Some(s) = self.cache.get(kind) {
            return s.clone();
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        let s = Subject::from(self.render(kind));
        self.cache.insert(kind.clone(), s.clone());
        s
    }

    /// The subject filter a stream needs to take every subject of this template: each token
    /// holding `{type}` becomes `*` (a type never adds a token: its dots become `_`).
    pub fn stream_subject(&self) -> String {
        const MARK: &str = "\u{0}";
        let mut marked = String::new();
        for p in &self.parts {
            match p {
                Part::Text(s) => marked.push_str(s),
                Part::Type => marked.push_str(MARK),
            }
        }
        marked
            .split('.')
            .map(|t| if t.contains(MARK) { "*" } else { t })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// True when every subject of this template matches one of `filters` (a stream's
    /// `subjects`), as far as a sample type shows.
    pub fn covered_by(&self, filters: &[String]) -> bool {
        let sample = self.render("x");
        filters.iter().any(|f| filter_matches(f, &sample))
    }
}

/// Whether the subject filter `filter` (`*` one token, `>` the rest) matches `subject`.
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subject one can publish to: tokens of printable characters, none empty, no wildcards.
fn check_publish_subject(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{s}` contains {c:?}: subjects cannot hold whitespace"
        ));
    }
    for t in s.split('.') {
        if t.is_empty() {
            return Err(format!(
                "`{s}` has an empty token (a leading, trailing or double `.`)"
            ));
        }
        if t.contains('*') || t.contains('>') {
            return Err(format!(
                "`{s}`: `*` and `>` are wildcards, not allowed in a subject to publish to"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(t: &str, kind: &str) -> String {
        SubjectTemplate::parse(t)
            .unwrap()
            .subject(&Arc::from(kind))
            .to_string()
    }

    #[test]
    fn type_becomes_one_token_with_forbidden_characters_replaced() {
        let t = "outrigger.events.{type}";
        assert_eq!(subject(t, "test_end"), "outrigger.events.test_end");
        assert_eq!(subject(t, "otel.span"), "outrigger.events.otel_span");
        assert_eq!(subject(t, "a*b>c d\te\nf"), "outrigger.events.a_b_c_d_e_f");
        assert_eq!(subject(t, "ünïcode-ok$"), "outrigger.events.ünïcode-ok$");
        assert_eq!(subject(t, "."), "outrigger.events._");
        assert_eq!(subject(t, ">"), "outrigger.events._");
        assert_eq!(subject("ev-{type}-x.all", "a.b"), "ev-a_b-x.all");
        assert_eq!(subject("fixed.subject", "a.b"), "fixed.subject");
        assert_eq!(token(""), "_");
    }

    #[test]
    fn the_cache_gives_the_same_subject_and_stays_bounded() {
        let mut t = SubjectTemplate::parse("s.{type}").unwrap();
        let k: Arc<str> = Arc::from("run.end");
        assert_eq!(t.subject(&k), t.subject(&k));
        for i in 0..(CACHE_MAX + 10) {
            t.subject(&Arc::from(format!("t{i}")));
        }
        assert!(t.cache.len() <= CACHE_MAX);
        assert_eq!(t.subject(&k).to_string(), "s.run_end");
    }

    #[test]
    fn bad_templates_say_why() {
        for (t, why) in [
            ("", "empty"),
            ("a..{type}", "empty token"),
            (".a", "empty token"),
            ("a.{type}.", "empty token"),
            ("a.*", "wildcards"),
            ("a.>", "wildcards"),
            ("a b", "whitespace"),
            ("a.{kind}", "unknown placeholder `{kind}`"),
            ("a.{typ", "unknown placeholder `{typ`"),
        ] {
            let e = SubjectTemplate::parse(t).unwrap_err();
            assert!(e.contains(why), "{t:?}: {e}");
        }
    }

    #[test]
    fn stream_subjects_cover_the_template() {
        let cases = [
            ("outrigger.events.{type}", "outrigger.events.*"),
            ("ev-{type}.x", "*.x"),
            ("a.b", "a.b"),
            ("{type}", "*"),
        ];
        for (t, want) in cases {
            let t = SubjectTemplate::parse(t).unwrap();
            assert_eq!(t.stream_subject(), want);
            assert!(t.covered_by(&[want.to_string()]));
        }
        let t = SubjectTemplate::parse("outrigger.events.{type}").unwrap();
        assert!(t.covered_by(&["outrigger.>".into()]));
        assert!(!t.covered_by(&["other.>".into(), "outrigger.events".into()]));
    }

    #[test]
    fn filters_match_like_nats() {
        assert!(filter_matches("a.*.c", "a.b.c"));
        assert!(filter_matches("a.>", "a.b.c"));
        assert!(!filter_matches("a.>", "a"));
        assert!(!filter_matches("a.*", "a.b.c"));
        assert!(filter_matches("a.b", "a.b"));
        assert!(!filter_matches("a.b", "a.c"));
    }
}
