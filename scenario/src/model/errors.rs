//! Errors of scenario files, and where they are: TOML spans turned into file:line:column and a
//! field path, and serde's messages made friendlier (the valid choices of closed sets).

use std::fmt;
use std::ops::Range;

use super::CASE_FIELDS;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a scenario file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file (or source name).
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The field's path, e.g. `faults[2].kind` (empty for the whole file).
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a scenario file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ScenarioErrors {
    pub(super) fn one(file: &str, message: impl Into<String>) -> ScenarioErrors {
        ScenarioErrors(vec![ScenarioError {
            file: file.to_string(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
        }])
    }
}

/// A step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Maps byte offsets to line/column and field paths to spans, from the parsed document.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, col)
    }

    /// The span of the value at `path`, or of its nearest existing ancestor.
    pub(super) fn span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut table = Some(doc.get_ref());
        let mut value: Option<&toml::Spanned<toml::de::DeValue>> = None;
        for seg in path {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
                (Seg::Index(i), _, Some(v)) => v.get_ref().as_array().and_then(|a| a.get(*i)),
                _ => None,
            };
            let Some(next) = next else { break };
            best = Some(next.span());
            value = Some(next);
            table = match next.get_ref() {
                toml::de::DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        best
    }

    /// The deepest field path whose key or value span contains `span`. Tables are searched
    /// through their entries rather than by their own span, because an array-of-tables item's
    /// span covers only its `[[header]]`.
    pub(super) fn path_at(&self, span: &Range<usize>) -> Vec<Seg> {
        fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
            outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
        }
        fn in_table(t: &toml::de::DeTable, span: &Range<usize>) -> Option<Vec<Seg>> {
            for (k, v) in t.iter() {
                if let Some(mut rest) = in_value(v.get_ref(), span) {
                    rest.insert(0, Seg::Key(k.get_ref().to_string()));
                    return Some(rest);
                }
                if contains(&v.span(), span) || contains(&k.span(), span) {
                    return Some(vec![Seg::Key(k.get_ref().to_string())]);
                }
            }
            None
        }
        fn in_value(v: &toml::de::DeValue, span: &Range<usize>) -> Option<Vec<Seg>> {
            match v {
                toml::de::DeValue::Table(t) => in_table(t, span),
                toml::de::DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
                    let mut rest = in_value(item.get_ref(), span)
                        .or_else(|| contains(&item.span(), span).then(Vec::new))?;
                    rest.insert(0, Seg::Index(i));
                    Some(rest)
                }),
                _ => None,
            }
        }
        self.doc
            .as_ref()
            .and_then(|doc| in_table(doc.get_ref(), span))
            .unwrap_or_default()
    }
}

/// Collects validation problems with their field paths.
pub(super) struct Problems<'a> {
    pub(super) file: &'a str,
    pub(super) locator: &'a Locator<'a>,
    pub(super) list: Vec<ScenarioError>,
}

impl Problems<'_> {
    pub(super) fn add(&mut self, path: &[Seg], message: impl Into<String>) {
        let (line, column) = match self.locator.span_of(path) {
            Some(span) => self.locator.line_col(span.start),
            None => (0, 0),
        };
        self.list.push(ScenarioError {
            file: self.file.to_string(),
            line,
            column,
            field: path_string(path),
            message: message.into(),
        });
    }
}

pub(super) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// The field of a fault case (`faults[2]`) an error message is about: `kind` for an unknown
/// kind, the field for an unknown one.
pub(super) fn fault_field(path: &[Seg], message: &str) -> Option<String> {
    match path {
        [Seg::Key(k), Seg::Index(_)] if k == "faults" => {}
        _ => return None,
    }
    if message.starts_with("unknown variant `") {
        return Some("kind".into());
    }
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field.to_string())
}

pub(super) fn friendlier(message: &str, field: &str) -> String {
    if field.starts_with("faults[")
        && let Some(rest) = message.strip_prefix("unknown field `")
    {
        // The kind's own fields are listed by serde; the case's are always allowed.
        return format!(
            "unknown field `{}; or the case's own fields: {}",
            rest.trim_end_matches('.'),
            CASE_FIELDS.join(", ")
        );
    }
    if let Some(old) = ["container_pause", "container_stop", "container_disconnect"]
        .into_iter()
        .find(|old| message.starts_with(&format!("unknown variant `{old}`")))
    {
        let action = old.trim_start_matches("container_");
        return format!(
            "fault kind `{old}` is now kind = \"machine\" with action = \"{action}\" (the cluster's \
             machine faults)"
        );
    }
    let Some(rest) = message.strip_prefix("unknown variant `") else {
        return message.to_string();
    };
    let Some((value, expected)) = rest.split_once("`, expected ") else {
        return message.to_string();
    };
    let choices: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split([',', ' '])
        .map(|c| c.trim_matches('`'))
        .filter(|c| !c.is_empty() && *c != "or")
        .collect();
    let last = field.rsplit('.').next().unwrap_or(field);
    let last = last.split('[').next().unwrap_or(last);
    let noun = match (field.split(['.', '[']).next().unwrap_or(""), last) {
        ("faults", "kind") => "fault kind",
        ("workload", "type") => "workload type",
        ("workload", "kind") => "operation kind",
        ("invariants", "at") => "invariant time",
        (_, "backend") => "backend",
        _ => "value",
    };
    format!("unknown {noun} `{value}`; valid choices: {}", choices.join(", "))
}
