//! Running checks (readiness checks, invariants) and the leader probe against the live system.
//!
//! A check observes something on each node — a command's output, an HTTP reply fetched through
//! the node's TCP proxy, or the system's log — and judges it: exit status or HTTP status, a regex
//! that must match, one that must not, and an `agree` regex whose captures must be the same on
//! every node (members agreeing on a leader, a revision, a hash). A check is retried until it
//! passes or its timeout (scaled by `timeout_multiplier`) expires; the time it took is the
//! recovery time after a heal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use regex::Regex;
use tokio_util::sync::CancellationToken;

use super::http;
use super::model::{Check, CommandLine, Dur, HttpRequest, LeaderProbe, MeasureCheck, OnNodes, Scenario};
use super::template::{Templates, Vars};
use chaos::cluster::Node;
use chaos::ext::NodeExt;

/// Bound of one attempt of a check on one node.
const ATTEMPT_BOUND: Duration = Duration::from_secs(10);

/// Identical failures in a row after which a check's runner says it may never pass.
pub const SAME_FAILURES: u32 = 3;

/// Default check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Dur = Dur::secs(30);

/// Default pause between attempts.
pub const DEFAULT_INTERVAL: Dur = Dur::millis(500);

/// Default leader probe timeout.
pub const DEFAULT_LEADER_TIMEOUT: Dur = Dur::secs(15);

/// The running system, as checks see it.
pub struct System {
    /// The scenario being run.
    pub scenario: Arc<Scenario>,
    /// The nodes, in order.
    pub nodes: Vec<Arc<dyn Node>>,
    /// Template variables per node.
    pub vars: Vec<Vars>,
    /// The template engine.
    pub templates: Templates,
    /// Path of the system's log on each node.
    pub log_paths: Vec<String>,
    /// `bin` as a runner-side adapter's command sees it: paths on the runner
    /// ([`crate::template::runner_bin`]).
    pub runner_bin: std::collections::BTreeMap<String, String>,
    /// What `measure` checks measured, until the engine records it.
    pub measurements: Measurements,
}

/// A rendered command as errors show it: program and arguments as run (not their templates).
pub(crate) fn shown(spec: &chaos_proto::ProcSpec) -> String {
    std::iter::once(spec.command.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What to observe.
#[derive(Clone, Copy)]
enum Source<'a> {
    Command(&'a CommandLine),
    Http(&'a HttpRequest),
    Log,
    /// With the check's name, which the measurement is recorded under.
    Measure(&'a MeasureCheck, &'a str),
}

/// The measurements `measure` checks made, each with when it ended and the check's name: the
/// engine moves them into the run's history ([`crate::workload::Recorder::measurement`]), so
/// the report shows them whether the check passed or not.
#[derive(Default)]
pub struct Measurements(std::sync::Mutex<Vec<(Instant, String, chaos::net::Measurement)>>);

impl Measurements {
    fn push(&self, check: &str, m: chaos::net::Measurement) {
        if let Ok(mut log) = self.0.lock() {
            log.push((Instant::now(), check.to_string(), m));
        }
    }

    /// Takes every measurement recorded so far.
    pub fn drain(&self) -> Vec<(Instant, String, chaos::net::Measurement)> {
        self.0
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }
}

/// How one node fared in one attempt.
#[derive(Debug, Clone)]
struct NodeVerdict {
    node: String,
    result: Result<Option<String>, String>,
}

/// The outcome of a check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed within its timeout.
    pub passed: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Time from the first attempt to the verdict, milliseconds.
    pub elapsed_ms: u64,
    /// What the last attempt saw (why it failed, or what agreed).
    pub detail: String,
    /// Nodes that failed the last attempt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
}

fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

impl System {
    fn name(&self, i: usize) -> &str {
        self.nodes[i].name()
    }

    /// Renders `text` for node `i`.
    pub fn render(&self, i: usize, text: &str) -> Result<String, String> {
        self.templates.render(text, &self.vars[i])
    }

    /// Renders a command line for node `i` into a process spec.
    pub fn command_spec(&self, i: usize, cmd: &CommandLine) -> Result<chaos_proto::ProcSpec, String> {
        let argv = cmd
            .argv()
            .iter()
            .map(|a| self.render(i, a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut spec = chaos_proto::ProcSpec::new(argv[0].clone(), argv[1..].to_vec());
        spec.cwd = Some(self.nodes[i].root_dir().to_string());
        Ok(spec)
    }

    /// Observes `source` on node `i` once: the text to judge, or why there is none.
    async fn observe(&self, i: usize, source: Source<'_>, bound: Duration) -> Result<String, String> {
        let node = &self.nodes[i];
        match source {
            Source::Command(cmd) => {
                let spec = self.command_spec(i, cmd)?;
                let shown = crate::checks::shown(&spec);
                let out = node
                    .run_timeout(spec, None, bound)
                    .await
                    .map_err(|e| format!("`{shown}`: {e}"))?;
                let text = format!("{}{}", out.stdout_str(), out.stderr_str());
                if out.status.success() {
                    Ok(text)
                } else {
                    Err(format!("`{shown}`: {}: {}", out.status, tail(&text, 300)))
                }
            }
            Source::Http(h) => {
                let addr = self.render(i, &h.addr)?;
                let path = self.render(i, &h.path)?;
                let body = h
                    .body
                    .as_ref()
                    .map(|b| self.render(i, b).map(Bytes::from))
                    .transpose()?;
                let method = hyper::Method::from_bytes(h.method.as_bytes()).map_err(|e| e.to_string())?;
                let reply = http::request(node.clone(), &addr, &method, &path, body, bound)
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = match h.status {
                    Some(s) => reply.status == s,
                    None => (200..300).contains(&reply.status),
                };
                if ok {
                    Ok(reply.text())
                } else {
                    Err(format!(
                        "{} http://{addr}{path}: status {}: {}",
                        h.method,
                        reply.status,
                        tail(&reply.text(), 300)
                    ))
                }
            }
            Source::Measure(m, check) => self.measure(i, m, check, bound).await,
            Source::Log => {
                let path = &self.log_paths[i];
                let bytes = tokio::time::timeout(bound, node.read_bytes(path))
                    .await
                    .map_err(|_| format!("reading {path}: no answer within {bound:?}"))?
                    .map_err(|e| format!("reading {path}: {e}"))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// Measures from node `i` to `m.to`: the summary line, or why the thresholds do not hold.
    async fn measure(
        &self,
        i: usize,
        m: &MeasureCheck,
        check: &str,
        bound: Duration,
    ) -> Result<String, String> {
        let to = self
            .nodes
            .iter()
            .find(|n| n.name() == m.to)
            .ok_or_else(|| format!("measure: no node {}", m.to))?;
        let mut options = chaos::net::MeasureOptions {
            protocol: m.protocol,
            duration: m.duration.0,
            ..chaos::net::MeasureOptions::default()
        };
        if let Some(rate) = &m.udp_rate {
            options.udp_rate_bps = chaos_proto::kinds::parse_rate(rate)?;
        }
        // The measurement's own length comes on top of the attempt's bound.
        let bound = bound + m.duration.0 + Duration::from_secs(5);
        let result = tokio::time::timeout(bound, chaos::net::measure(&*self.nodes[i], &**to, &options))
            .await
            .map_err(|_| format!("measure {} → {}: no result within {bound:?}", self.name(i), m.to))?
            .map_err(|e| e.to_string())?;
        let summary = result.summary();
        let mbit = result.mbit_per_s();
        let loss = result.report.loss_percent;
        self.measurements.push(check, result);
        if let Some(min) = m.min_mbit
            && mbit < min
        {
            return Err(format!("below {min} Mbit/s: {summary}"));
        }
        if let Some(max) = m.max_loss_percent
            && loss > max
        {
            return Err(format!("above {max} % loss: {summary}"));
        }
        Ok(summary)
    }

    /// Judges node `i`'s observation against a check's regexes: the `agree` capture when passed.
    fn judge(check: &Check, text: &str) -> Result<Option<String>, String> {
        // Regexes were validated when the scenario was loaded.
        if let Some(re) = &check.regex
            && let Ok(r) = Regex::new(re)
            && !r.is_match(text)
        {
            return Err(format!("output does not match /{re}/: {}", tail(text, 300)));
        }
        if let Some(re) = &check.not_regex
            && let Ok(r) = Regex::new(re)
            && let Some(m) = r.find(text)
        {
            return Err(format!("output matches /{re}/: {}", tail(m.as_str(), 300)));
        }
        if let Some(re) = &check.agree
            && let Ok(r) = Regex::new(re)
        {
            return match r.captures(text) {
                Some(c) => Ok(Some(
                    c.iter()
                        .skip(1)
                        .map(|g| g.map(|m| m.as_str()).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(" "),
                )),
                None => Err(format!(
                    "nothing to compare: /{re}/ does not match: {}",
                    tail(text, 300)
                )),
            };
        }
        Ok(None)
    }

    async fn attempt(
        &self,
        check: &Check,
        source: Source<'_>,
        targets: &[usize],
        bound: Duration,
    ) -> Vec<NodeVerdict> {
        join_all(targets.iter().map(|&i| async move {
            let result = match self.observe(i, source, bound).await {
                // A measurement's figures are what it reports, pass or fail.
                Ok(text) if matches!(source, Source::Measure(..)) => {
                    Self::judge(check, &text).map(|_| Some(text))
                }
                Ok(text) => Self::judge(check, &text),
                Err(e) => Err(e),
            };
            NodeVerdict {
                node: self.name(i).to_string(),
                result,
            }
        }))
        .await
    }

    /// Runs `check` until it passes or its timeout expires (or `cancel` fires).
    pub async fn run_check(&self, check: &Check, cancel: &CancellationToken) -> CheckResult {
        self.run_check_noting(check, cancel, &|_| {}).await
    }

    /// [`System::run_check`], calling `note` once with a line saying so when the check has failed
    /// the same way [`SAME_FAILURES`] times in a row — a failure that may never change (a typo in
    /// a command, a port nobody listens on), said early rather than at the timeout. It keeps
    /// trying until its timeout unless the check's `give_up_after` says after how many identical
    /// failures to stop.
    pub async fn run_check_noting(
        &self,
        check: &Check,
        cancel: &CancellationToken,
        note: &(dyn Fn(String) + Send + Sync),
    ) -> CheckResult {
        let timeout = self
            .scenario
            .scaled(check.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT).0);
        let interval = check.interval.unwrap_or(DEFAULT_INTERVAL).0;
        let source = match (&check.command, &check.http, &check.measure) {
            (Some(c), _, _) => Source::Command(c),
            (None, Some(h), _) => Source::Http(h),
            (None, None, Some(m)) => Source::Measure(m, &check.name),
            (None, None, None) => Source::Log,
        };
        let started = Instant::now();
        let deadline = started + timeout;
        let mut attempts = 0;
        let mut last: String;
        let mut failed_nodes;
        let mut same = 0u32;
        let mut previous = String::new();
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let bound = remaining
                .min(self.scenario.scaled(ATTEMPT_BOUND))
                .max(Duration::from_millis(500));
            let targets: Result<Vec<usize>, String> = match &check.on {
                OnNodes::All | OnNodes::Any => Ok((0..self.nodes.len()).collect()),
                OnNodes::Nodes(names) => Ok(names
                    .iter()
                    .filter_map(|n| self.nodes.iter().position(|x| x.name() == n))
                    .collect()),
                OnNodes::Leader => self.find_leader(bound).await.map(|i| vec![i]),
            };
            let verdict = match targets {
                Err(e) => Err((format!("no leader to run on: {e}"), Vec::new())),
                Ok(targets) => {
                    let results = self.attempt(check, source, &targets, bound).await;
                    Self::combine(check, &results)
                }
            };
            match verdict {
                Ok(detail) => {
                    return CheckResult {
                        name: check.name.clone(),
                        passed: true,
                        attempts,
                        elapsed_ms: started.elapsed().as_millis() as u64,
                        detail,
                        failed_nodes: Vec::new(),
                    };
                }
                Err((detail, nodes)) => {
                    same = if detail == previous { same + 1 } else { 1 };
                    previous.clone_from(&detail);
                    last = detail;
                    failed_nodes = nodes;
                }
            }
            if same == SAME_FAILURES {
                let line = format!(
                    "check `{}` has failed the same way {same} times in a row; it may never pass \
                     (still trying until its timeout of {timeout:?}): {last}",
                    check.name
                );
                tracing::warn!("{line}");
                note(line);
            }
            if check.give_up_after.is_some_and(|n| same >= n) {
                return CheckResult {
                    name: check.name.clone(),
                    passed: false,
                    attempts,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    detail: format!(
                        "failed the same way {same} times in a row (give_up_after = {same}), after {:?}: {last}",
                        started.elapsed()
                    ),
                    failed_nodes,
                };
            }
            if Instant::now() + interval >= deadline || cancel.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = cancel.cancelled() => break,
            }
        }
        CheckResult {
            name: check.name.clone(),
            passed: false,
            attempts,
            elapsed_ms: started.elapsed().as_millis() as u64,
            detail: if cancel.is_cancelled() {
                format!("interrupted; last attempt: {last}")
            } else {
                format!("did not pass within {timeout:?} ({attempts} attempts); last attempt: {last}")
            },
            failed_nodes,
        }
    }

    /// Combines per-node verdicts: `Ok(detail)` when the check passes, else why and which nodes.
    fn combine(check: &Check, results: &[NodeVerdict]) -> Result<String, (String, Vec<String>)> {
        let failures: Vec<&NodeVerdict> = results.iter().filter(|r| r.result.is_err()).collect();
        if check.on == OnNodes::Any {
            return if failures.len() < results.len() {
                let ok = results.iter().find(|r| r.result.is_ok()).map(|r| r.node.clone());
                Ok(format!("passed on {}", ok.unwrap_or_default()))
            } else {
                Err((
                    failures
                        .iter()
                        .map(|f| {
                            format!(
                                "{}: {}",
                                f.node,
                                f.result.as_ref().err().cloned().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    Vec::new(),
                ))
            };
        }
        if !failures.is_empty() {
            return Err((
                failures
                    .iter()
                    .map(|f| {
                        format!(
                            "{}: {}",
                            f.node,
                            f.result.as_ref().err().cloned().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                failures.iter().map(|f| f.node.clone()).collect(),
            ));
        }
        if check.agree.is_some() {
            let captures: Vec<(String, String)> = results
                .iter()
                .map(|r| {
                    (
                        r.node.clone(),
                        r.result.clone().ok().flatten().unwrap_or_default(),
                    )
                })
                .collect();
            let first = captures.first().map(|c| c.1.clone()).unwrap_or_default();
            if captures.iter().any(|c| c.1 != first) {
                let shown = captures
                    .iter()
                    .map(|(n, c)| format!("{n}={c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err((format!("nodes disagree: {shown}"), Vec::new()));
            }
            return Ok(format!("all agree on {first}"));
        }
        if check.measure.is_some() {
            let figures: Vec<String> = results
                .iter()
                .filter_map(|r| r.result.clone().ok().flatten())
                .collect();
            return Ok(figures.join("; "));
        }
        Ok(format!("passed on {} node(s)", results.len()))
    }

    /// Asks every node once who the leader is; the leader is the node a majority of all nodes
    /// name. `Err` says why there is none (no majority, unknown identity, probe failures).
    pub async fn find_leader(&self, bound: Duration) -> Result<usize, String> {
        let Some(probe) = &self.scenario.leader else {
            return Err("the scenario has no [leader] probe".into());
        };
        let source = match (&probe.command, &probe.http) {
            (Some(c), _) => Source::Command(c),
            (None, Some(h)) => Source::Http(h),
            (None, None) => return Err("the [leader] probe has neither `command` nor `http`".into()),
        };
        let leader_re = Regex::new(&probe.leader).map_err(|e| e.to_string())?;
        let self_re = probe
            .self_id
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        let n = self.nodes.len();
        let answers =
            join_all((0..n).map(|i| async move { (i, self.observe(i, source, bound).await) })).await;
        let capture = |re: &Regex, text: &str| {
            re.captures(text)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let mut votes: Vec<(String, usize)> = Vec::new();
        let mut self_ids: Vec<Option<String>> = vec![None; n];
        let mut problems = Vec::new();
        for (i, answer) in answers {
            match answer {
                Ok(text) => {
                    if let Some(re) = &self_re {
                        self_ids[i] = capture(re, &text);
                    }
                    match capture(&leader_re, &text) {
                        Some(id) => match votes.iter_mut().find(|(v, _)| *v == id) {
                            Some((_, c)) => *c += 1,
                            None => votes.push((id, 1)),
                        },
                        None => problems.push(format!("{}: names no leader", self.name(i))),
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", self.name(i))),
            }
        }
        votes.sort_by_key(|v| std::cmp::Reverse(v.1));
        let Some((id, count)) = votes.first().cloned() else {
            return Err(format!("no node names a leader ({})", problems.join("; ")));
        };
        if count * 2 <= n {
            return Err(format!(
                "no majority names the same leader (votes: {}; {})",
                votes
                    .iter()
                    .map(|(v, c)| format!("{v}×{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                problems.join("; ")
            ));
        }
        let found = if self_re.is_some() {
            self_ids.iter().position(|s| s.as_deref() == Some(id.as_str()))
        } else {
            self.vars.iter().position(|v| {
                v.node
                    .as_ref()
                    .is_some_and(|nv| nv.name == id || nv.ip == id || nv.index.to_string() == id)
            })
        };
        found.ok_or_else(|| format!("the leader `{id}` a majority names is none of the nodes"))
    }

    /// Retries [`System::find_leader`] until the probe's timeout.
    pub async fn wait_leader(&self, cancel: &CancellationToken) -> Result<usize, String> {
        let probe: Option<&LeaderProbe> = self.scenario.leader.as_ref();
        let timeout = self
            .scenario
            .scaled(probe.and_then(|p| p.timeout).unwrap_or(DEFAULT_LEADER_TIMEOUT).0);
        let deadline = Instant::now() + timeout;
        loop {
            let bound = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(500), self.scenario.scaled(ATTEMPT_BOUND));
            match self.find_leader(bound).await {
                Ok(i) => return Ok(i),
                Err(e) if Instant::now() + DEFAULT_INTERVAL.0 >= deadline || cancel.is_cancelled() => {
                    return Err(format!("no leader within {timeout:?}: {e}"));
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(DEFAULT_INTERVAL.0) => {}
                _ = cancel.cancelled() => return Err("interrupted".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(agree: Option<&str>, on: OnNodes) -> Check {
        Check {
            name: "c".into(),
            on,
            command: None,
            http: None,
            log: true,
            measure: None,
            regex: Some("ok".into()),
            not_regex: Some("panic".into()),
            agree: agree.map(str::to_string),
            timeout: None,
            interval: None,
            give_up_after: None,
        }
    }

    fn verdict(node: &str, text: &str, c: &Check) -> NodeVerdict {
        NodeVerdict {
            node: node.into(),
            result: System::judge(c, text),
        }
    }

    #[test]
    fn regexes_judge_each_node_and_agree_compares_them() {
        let c = check(Some(r"rev=(\d+) hash=(\d+)"), OnNodes::All);
        let same = [
            verdict("n1", "ok rev=5 hash=9", &c),
            verdict("n2", "ok rev=5 hash=9", &c),
        ];
        assert_eq!(System::combine(&c, &same).unwrap(), "all agree on 5 9");
        let differ = [
            verdict("n1", "ok rev=5 hash=9", &c),
            verdict("n2", "ok rev=6 hash=9", &c),
        ];
        let (why, _) = System::combine(&c, &differ).unwrap_err();
        assert!(why.contains("n1=5 9, n2=6 9"), "{why}");
        let bad = [
            verdict("n1", "ok rev=5 hash=9", &c),
            verdict("n2", "panic: boom", &c),
        ];
        let (why, nodes) = System::combine(&c, &bad).unwrap_err();
        assert_eq!(nodes, ["n2"]);
        assert!(why.contains("does not match /ok/"), "{why}");
    }

    #[test]
    fn any_passes_when_one_node_does() {
        let c = check(None, OnNodes::Any);
        let results = [verdict("n1", "nope", &c), verdict("n2", "ok", &c)];
        assert_eq!(System::combine(&c, &results).unwrap(), "passed on n2");
        let results = [verdict("n1", "nope", &c), verdict("n2", "panic ok", &c)];
        assert!(System::combine(&c, &results).is_err());
    }
}
