//! The checker trait, verdicts, and composition.

use serde::{Deserialize, Serialize};

use crate::history::History;

/// Whether a history passed a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// The history satisfies the property.
    Valid,
    /// The history violates the property; the verdict says how.
    Invalid,
    /// The checker could not decide (nothing to check, or its budget ran out).
    Unknown,
}

impl Validity {
    /// The lower-case name (`valid`, `invalid`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Invalid => "invalid",
            Validity::Unknown => "unknown",
        }
    }

    /// Combines two results: any invalid makes the whole invalid, else any unknown makes it unknown.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }
}

/// What a checker concluded about a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Name of the checker that produced it.
    pub checker: String,
    /// The result.
    pub valid: Validity,
    /// One or a few sentences a person can act on.
    pub explanation: String,
    /// Machine-readable details (checker-specific JSON).
    pub details: serde_json::Value,
    /// Ids of the operations that show the violation (empty when valid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<u64>,
    /// The verdicts of composed checkers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Verdict>,
}

impl Verdict {
    /// A verdict with no details and no offending operations.
    pub fn new(checker: &str, valid: Validity, explanation: impl Into<String>) -> Verdict {
        Verdict {
            checker: checker.to_string(),
            valid,
            explanation: explanation.into(),
            details: serde_json::Value::Null,
            ops: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Adds machine-readable details.
    pub fn with_details(mut self, details: serde_json::Value) -> Verdict {
        self.details = details;
        self
    }

    /// Adds the ids of the operations showing the violation.
    pub fn with_ops(mut self, ops: Vec<u64>) -> Verdict {
        self.ops = ops;
        self
    }

    /// This verdict and all nested ones, depth first (the composite itself first).
    pub fn flatten(&self) -> Vec<&Verdict> {
        let mut all = vec![self];
        for child in &self.children {
            all.extend(child.flatten());
        }
        all
    }

    /// The leaf verdicts (those of individual checkers).
    pub fn leaves(&self) -> Vec<&Verdict> {
        if self.children.is_empty() {
            vec![self]
        } else {
            self.children.iter().flat_map(|c| c.leaves()).collect()
        }
    }
}

/// A property of histories. Checkers are pure: the same history always gets the same verdict
/// (unless a wall-clock limit is configured explicitly, see [`crate::Budget`]).
pub trait Checker: Send + Sync {
    /// The checker's name, as used by `chaos check --checker NAME`.
    fn name(&self) -> &str;

    /// Checks a history.
    fn check(&self, history: &History) -> Verdict;
}

/// Runs several checkers and combines their verdicts (invalid beats unknown beats valid).
pub struct Compose {
    checkers: Vec<Box<dyn Checker>>,
}

impl Compose {
    /// Composes these checkers; they run in the given order.
    pub fn new(checkers: Vec<Box<dyn Checker>>) -> Compose {
        Compose { checkers }
    }

    /// The composed checkers' names.
    pub fn names(&self) -> Vec<&str> {
        self.checkers.iter().map(|c| c.name()).collect()
    }
}

impl Checker for Compose {
    fn name(&self) -> &str {
        "compose"
    }

    fn check(&self, history: &History) -> Verdict {
        let children: Vec<Verdict> = self.checkers.iter().map(|c| c.check(history)).collect();
        if children.is_empty() {
            return Verdict::new("compose", Validity::Unknown, "no checkers were selected");
        }
        let valid = children.iter().fold(Validity::Valid, |acc, v| acc.and(v.valid));
        let failing: Vec<String> = children
            .iter()
            .filter(|v| v.valid != Validity::Valid)
            .map(|v| format!("{} is {}", v.checker, v.valid.as_str()))
            .collect();
        let explanation = if failing.is_empty() {
            format!("all {} checkers found the history valid", children.len())
        } else {
            format!(
                "{} of {} checkers: {}",
                failing.len(),
                children.len(),
                failing.join(", ")
            )
        };
        let mut ops: Vec<u64> = children.iter().flat_map(|c| c.ops.iter().copied()).collect();
        ops.sort_unstable();
        ops.dedup();
        Verdict {
            checker: "compose".to_string(),
            valid,
            explanation,
            details: serde_json::Value::Null,
            ops,
            children,
        }
    }
}
