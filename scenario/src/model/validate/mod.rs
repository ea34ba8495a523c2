//! Validation of a parsed scenario: every problem found, each located at its field, section by
//! section — what serde cannot say (cross references, templates, regexes, ranges).

use std::time::Duration;

use chaos_proto::Fault;

use super::errors::{Problems, Seg, key};
use super::*;
use crate::template::{self, Templates, Vars};

mod workload;

/// Renders templates with sample variables to find mistakes before anything runs.
struct Tmpl {
    templates: Templates,
    sample: Vars,
    /// As a runner-side adapter's command sees them (`bin` on the runner).
    runner: Vars,
}

impl Tmpl {
    /// [`Tmpl::call`] for a runner-side adapter's templates, with an operation's variables.
    fn call_runner(&self, p: &mut Problems, path: &[Seg], text: &str) {
        if let Err(e) = self.templates.render(text, &self.runner.with_op_vars()) {
            p.add(path, format!("bad template: {e}"));
        }
    }

    /// Adds a problem at `path` when `text` does not render (`extra`: with an operation's
    /// variables too).
    fn call(&self, p: &mut Problems, path: &[Seg], text: &str, extra: bool) {
        let vars = if extra {
            self.sample.with_op_vars()
        } else {
            self.sample.clone()
        };
        if let Err(e) = self.templates.render(text, &vars) {
            p.add(path, format!("bad template: {e}"));
        }
    }
}

impl Scenario {
    /// Finds every problem of the scenario, section by section.
    pub(super) fn check(&self, p: &mut Problems) {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            p.add(
                &[key("name")],
                format!(
                    "{:?} cannot name a run directory: use letters, digits, `-`, `_` and `.`",
                    self.name
                ),
            );
        }
        if !(self.timeout_multiplier.is_finite() && self.timeout_multiplier > 0.0) {
            p.add(
                &[key("timeout_multiplier")],
                "must be a positive number, e.g. 1.0 or 2.5",
            );
        }
        let n = self.cluster.nodes;
        if n == 0 || n > 253 {
            p.add(
                &[key("cluster"), key("nodes")],
                format!("{n} nodes: use 1 to 253"),
            );
        }
        for (k, v) in &self.cluster.labels {
            if k.is_empty() || v.is_empty() {
                p.add(
                    &[key("cluster"), key("labels")],
                    format!(
                        "label {k:?} = {v:?}: a selector pairs a non-empty label name with a \
                         non-empty value, e.g. labels = {{ rack = \"1\" }}"
                    ),
                );
            }
        }
        for (i, include) in self.cluster.docker.include.iter().enumerate() {
            let at = [key("cluster"), key("docker"), key("include"), Seg::Index(i)];
            let path = std::path::Path::new(include);
            if !path.is_absolute() {
                p.add(
                    &at,
                    format!(
                        "{include:?}: write the host path in full, from `/` (it is also the \
                         file's path in the node image)"
                    ),
                );
            } else if path.parent().is_none() {
                p.add(
                    &at,
                    "`/` cannot be baked into an image: name the files or directories",
                );
            } else if self.cluster.docker.include[..i].contains(include) {
                p.add(&at, format!("{include:?} is listed twice"));
            }
        }
        let tm = Tmpl {
            templates: Templates::new(),
            sample: template::sample_vars(self),
            runner: template::sample_runner_vars(self),
        };

        self.check_setup(p, &tm);
        self.check_workload(p, &tm);
        self.check_faults(p);
        self.check_schedule(p);
        self.check_invariants(p, &tm);
        self.check_end(p, &tm);
    }

    /// Checks `[setup]` and `[leader]`.
    fn check_setup(&self, p: &mut Problems, tm: &Tmpl) {
        let names = self.node_names();
        // setup
        for (i, ship) in self.setup.ship.iter().enumerate() {
            let path = [key("setup"), key("ship"), Seg::Index(i)];
            match &ship.builtin {
                None if ship.from.trim().is_empty() => p.add(
                    &[&path[..], &[key("from")]].concat(),
                    "empty: name a program or a path (or a built-in adapter with `builtin`)",
                ),
                None => {}
                Some(_) if !ship.from.is_empty() => p.add(
                    &path,
                    "give `from` (a file on the runner) or `builtin` (an adapter of chaos), not both",
                ),
                Some(name) if chaos::backend::workspace_binary::builtin_adapter(name).is_none() => p.add(
                    &[&path[..], &[key("builtin")]].concat(),
                    format!(
                        "`{name}` is not an adapter shipped with chaos; use one of {}",
                        chaos::backend::workspace_binary::builtin_adapter_names()
                    ),
                ),
                Some(_) => {}
            }
            if let Some(to) = &ship.to {
                tm.call(p, &[&path[..], &[key("to")]].concat(), to, false);
            }
        }
        for (i, file) in self.setup.files.iter().enumerate() {
            let path = [key("setup"), key("files"), Seg::Index(i)];
            tm.call(p, &[&path[..], &[key("to")]].concat(), &file.to, false);
            tm.call(p, &[&path[..], &[key("content")]].concat(), &file.content, false);
        }
        for (i, cmd) in self.setup.commands.iter().enumerate() {
            for t in cmd.templates() {
                tm.call(p, &[key("setup"), key("commands"), Seg::Index(i)], t, false);
            }
        }
        if let Some(start) = &self.setup.start {
            let path = [key("setup"), key("start")];
            for t in start.command.templates() {
                tm.call(p, &[&path[..], &[key("command")]].concat(), t, false);
            }
            for (k, v) in &start.env {
                tm.call(p, &[&path[..], &[key("env"), key(k)]].concat(), v, false);
            }
            for (field, v) in [("cwd", &start.cwd), ("data_dir", &start.data_dir)] {
                if let Some(v) = v {
                    tm.call(p, &[&path[..], &[key(field)]].concat(), v, false);
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, service) in self.setup.services.iter().enumerate() {
            let path = [key("setup"), key("services"), Seg::Index(i)];
            let name = &service.name;
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                p.add(
                    &[&path[..], &[key("name")]].concat(),
                    "a service needs a `name` of letters, digits, `-` and `_` (its log is logs/NAME.log)",
                );
            } else if name == "system" || !seen.insert(name.clone()) {
                p.add(
                    &[&path[..], &[key("name")]].concat(),
                    format!("service name `{name}` is taken (`system` is [setup.start]; names are unique)"),
                );
            }
            for t in service.command.templates() {
                tm.call(p, &[&path[..], &[key("command")]].concat(), t, false);
            }
            for (k, v) in &service.env {
                tm.call(p, &[&path[..], &[key("env"), key(k)]].concat(), v, false);
            }
        }
        if let Some(start) = &self.setup.start
            && !start.name.is_empty()
        {
            p.add(
                &[key("setup"), key("start"), key("name")],
                "[setup.start] is the service `system`; names belong to [[setup.services]]",
            );
        }
        for (i, check) in self.setup.ready.iter().enumerate() {
            let path = [key("setup"), key("ready"), Seg::Index(i)];
            self.check_check(p, &path, check, &names, tm);
        }
        self.check_service_readiness(p, &names, tm);
        for (i, step) in self.setup.once.iter().enumerate() {
            let path = [key("setup"), key("once"), Seg::Index(i)];
            for t in step.command.templates() {
                tm.call(p, &[&path[..], &[key("command")]].concat(), t, false);
            }
            if let Some(node) = &step.node
                && !names.contains(node)
            {
                p.add(
                    &[&path[..], &[key("node")]].concat(),
                    format!("no node `{node}`; the nodes are {}", names.join(", ")),
                );
            }
        }

        // leader
        if let Some(probe) = &self.leader {
            let path = [key("leader")];
            let sources = probe.command.is_some() as u8 + probe.http.is_some() as u8;
            if sources != 1 {
                p.add(
                    &path,
                    "give exactly one of `command` or `http` to ask a node for the leader",
                );
            }
            if let Some(c) = &probe.command {
                for t in c.templates() {
                    tm.call(p, &[key("leader"), key("command")], t, false);
                }
            }
            if let Some(h) = &probe.http {
                self.check_http(p, &[key("leader"), key("http")], h, tm);
            }
            check_regex(p, &[key("leader"), key("leader")], &probe.leader, true);
            if let Some(r) = &probe.self_id {
                check_regex(p, &[key("leader"), key("self_id")], r, true);
            }
        }
    }

    /// Checks `[[faults]]`.
    fn check_faults(&self, p: &mut Problems) {
        let names = self.node_names();
        let n = self.cluster.nodes;
        // faults
        let mut seen = std::collections::HashSet::new();
        for (i, case) in self.faults.iter().enumerate() {
            let path = [key("faults"), Seg::Index(i)];
            let at = |f: &str| [&path[..], &[key(f)]].concat();
            if case.name.trim().is_empty() {
                p.add(&at("name"), "empty: give the case a name");
            } else if !seen.insert(case.name.clone()) {
                p.add(&at("name"), format!("another case is also named `{}`", case.name));
            }
            if case.duration.min > case.duration.max {
                p.add(
                    &at("duration"),
                    "the range's first duration is longer than its second",
                );
            }
            if case.duration.max.0.is_zero() {
                p.add(&at("duration"), "must be longer than 0s");
            }
            if let Some(service) = &case.service {
                let services = self.services();
                if case.fault.family() != chaos_proto::kinds::Family::Process {
                    p.add(
                        &at("service"),
                        format!(
                            "`service` belongs to process faults (kill, pause, restart), not `{}`",
                            case.fault.kind()
                        ),
                    );
                } else if !services.iter().any(|(s, _)| s == service) {
                    let known: Vec<&str> = services.iter().map(|(s, _)| *s).collect();
                    p.add(
                        &at("service"),
                        format!("no service `{service}`; the services are {}", known.join(", ")),
                    );
                }
            }
            match &case.target {
                Selector::Nodes(list) => {
                    for name in list {
                        if !names.contains(name) {
                            p.add(
                                &at("target"),
                                format!("no node `{name}`; the nodes are {}", names.join(", ")),
                            );
                        }
                    }
                }
                Selector::Random(k) if *k > n => {
                    p.add(&at("target"), format!("random:{k} but the cluster has {n} nodes"));
                }
                sel if sel.needs_leader() && self.leader.is_none() => {
                    p.add(
                        &at("target"),
                        format!("selector `{sel}` needs a [leader] probe to find the leader; add one"),
                    );
                }
                _ => {}
            }
            check_fault(p, &path, &case.fault, !self.services().is_empty());
        }
    }

    /// Checks `[schedule]`.
    fn check_schedule(&self, p: &mut Problems) {
        // schedule
        let s = &self.schedule;
        if s.rounds == 0 {
            p.add(&[key("schedule"), key("rounds")], "must be at least 1");
        }
        if s.pause.min > s.pause.max {
            p.add(
                &[key("schedule"), key("pause")],
                "the range's first duration is longer than its second",
            );
        }
        if let Some(k) = s.picks {
            if k == 0 {
                p.add(&[key("schedule"), key("picks")], "must be at least 1");
            }
            if self.faults.iter().all(|c| c.weight == 0) {
                p.add(
                    &[key("schedule"), key("picks")],
                    "every fault case has weight 0: nothing to pick",
                );
            }
        }
    }

    /// Checks `[[invariants]]`.
    fn check_invariants(&self, p: &mut Problems, tm: &Tmpl) {
        let names = self.node_names();
        // invariants
        let mut seen = std::collections::HashSet::new();
        for (i, inv) in self.invariants.iter().enumerate() {
            let path = [key("invariants"), Seg::Index(i)];
            for field in inv.unknown.keys() {
                p.add(
                    &[&path[..], &[key(field)]].concat(),
                    format!(
                        "unknown field `{field}`, expected one of {}",
                        INVARIANT_FIELDS
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if inv.name().trim().is_empty() {
                p.add(
                    &[&path[..], &[key("name")]].concat(),
                    "empty: give the invariant a name",
                );
            } else if !seen.insert(inv.name().to_string()) {
                p.add(
                    &[&path[..], &[key("name")]].concat(),
                    format!("another invariant is also named `{}`", inv.name()),
                );
            }
            if inv.at.is_empty() {
                p.add(
                    &[&path[..], &[key("at")]].concat(),
                    "empty: say when it runs (start, heal, end)",
                );
            }
            self.check_check(p, &path, &inv.check, &names, tm);
        }
    }

    /// Checks `[history]` and `[teardown]`.
    fn check_end(&self, p: &mut Problems, tm: &Tmpl) {
        // history
        for (i, c) in self.history.checkers.iter().enumerate() {
            if !chaos_check::CHECKER_NAMES.contains(&c.as_str()) {
                p.add(
                    &[key("history"), key("checkers"), Seg::Index(i)],
                    format!(
                        "unknown checker `{c}`; valid checkers: {}",
                        chaos_check::CHECKER_NAMES.join(", ")
                    ),
                );
            }
        }
        if let Some(f) = self.history.max_error_fraction
            && !(0.0..=1.0).contains(&f)
        {
            p.add(
                &[key("history"), key("max_error_fraction")],
                "must be between 0 and 1",
            );
        }

        // teardown
        for (i, cmd) in self.teardown.commands.iter().enumerate() {
            for t in cmd.templates() {
                tm.call(p, &[key("teardown"), key("commands"), Seg::Index(i)], t, false);
            }
        }
        for (i, c) in self.teardown.collect.iter().enumerate() {
            tm.call(p, &[key("teardown"), key("collect"), Seg::Index(i)], c, false);
        }
    }

    fn check_http(&self, p: &mut Problems, path: &[Seg], h: &HttpRequest, tm: &Tmpl) {
        tm.call(p, &[path, &[key("addr")]].concat(), &h.addr, false);
        tm.call(p, &[path, &[key("path")]].concat(), &h.path, false);
        if let Some(b) = &h.body {
            tm.call(p, &[path, &[key("body")]].concat(), b, false);
        }
        if hyper::Method::from_bytes(h.method.as_bytes()).is_err() {
            p.add(
                &[path, &[key("method")]].concat(),
                format!("`{}` is not an HTTP method", h.method),
            );
        }
        if !h.path.starts_with('/') {
            p.add(&[path, &[key("path")]].concat(), "must start with `/`");
        }
    }

    /// Each service's own `ready` checks: valid checks, and no `log = true` on a service other
    /// than `[setup.start]` (log checks read `system.log`, which would judge the wrong process).
    fn check_service_readiness(&self, p: &mut Problems, names: &[String], tm: &Tmpl) {
        let starts = self
            .setup
            .start
            .iter()
            .map(|s| (vec![key("setup"), key("start")], s, true))
            .chain(
                self.setup
                    .services
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (vec![key("setup"), key("services"), Seg::Index(i)], s, false)),
            );
        for (path, start, is_system) in starts {
            for (j, check) in start.ready.iter().enumerate() {
                let path = [&path[..], &[key("ready"), Seg::Index(j)]].concat();
                self.check_check(p, &path, check, names, tm);
                if check.log && !is_system {
                    p.add(
                        &[&path[..], &[key("log")]].concat(),
                        format!(
                            "`log = true` judges system.log, not service `{}`'s log; check its log with a command instead, e.g. command = [\"grep\", \"-q\", \"PATTERN\", \"{{{{ node.root }}}}/logs/{}.log\"]",
                            start.name, start.name
                        ),
                    );
                }
            }
        }
    }

    fn check_check(&self, p: &mut Problems, path: &[Seg], c: &Check, names: &[String], tm: &Tmpl) {
        let at = |f: &str| [path, &[key(f)]].concat();
        let sources =
            c.command.is_some() as u8 + c.http.is_some() as u8 + c.log as u8 + c.measure.is_some() as u8;
        if sources != 1 {
            p.add(
                path,
                "give exactly one of `command`, `http`, `log = true` or `measure` to say what to check",
            );
        }
        if let Some(m) = &c.measure {
            if !names.contains(&m.to) {
                p.add(
                    &[path, &[key("measure"), key("to")]].concat(),
                    format!("unknown node {:?}; the nodes are {}", m.to, names.join(", ")),
                );
            }
            if m.duration.0.is_zero() || m.duration.0 > Duration::from_secs(60) {
                p.add(
                    &[path, &[key("measure"), key("duration")]].concat(),
                    "must be more than 0 and at most 60s",
                );
            }
            if let Some(rate) = &m.udp_rate
                && let Err(e) = chaos_proto::kinds::parse_rate(rate)
            {
                p.add(&[path, &[key("measure"), key("udp_rate")]].concat(), e);
            }
            if c.agree.is_some() {
                p.add(&at("agree"), "a measurement has nothing to agree on; use `regex`");
            }
        }
        if let Some(cmd) = &c.command {
            for t in cmd.templates() {
                tm.call(p, &at("command"), t, false);
            }
        }
        if let Some(h) = &c.http {
            self.check_http(p, &at("http"), h, tm);
        }
        if c.log && c.regex.is_none() && c.not_regex.is_none() && c.agree.is_none() {
            p.add(
                path,
                "a `log` check needs `regex`, `not_regex` or `agree` to judge the log",
            );
        }
        if let Some(r) = &c.regex {
            check_regex(p, &at("regex"), r, false);
        }
        if let Some(r) = &c.not_regex {
            check_regex(p, &at("not_regex"), r, false);
        }
        if let Some(r) = &c.agree {
            check_regex(p, &at("agree"), r, true);
            if matches!(c.on, OnNodes::Any | OnNodes::Leader) {
                p.add(
                    &at("agree"),
                    "`agree` compares nodes: run it `on` all or several nodes",
                );
            }
        }
        match &c.on {
            OnNodes::Nodes(list) => {
                for name in list {
                    if !names.contains(name) {
                        p.add(
                            &at("on"),
                            format!("no node `{name}`; the nodes are {}", names.join(", ")),
                        );
                    }
                }
            }
            OnNodes::Leader if self.leader.is_none() => {
                p.add(
                    &at("on"),
                    "`leader` needs a [leader] probe to find the leader; add one",
                );
            }
            _ => {}
        }
        if let Some(t) = c.timeout
            && t.0.is_zero()
        {
            p.add(&at("timeout"), "must be longer than 0s");
        }
    }
}

/// Rewrites serde's "unknown variant `x`, expected one of `a`, `b`" into "unknown fault kind `x`;
/// valid choices: a, b", naming what the field holds.
/// What the fault model cannot say about a fault in a scenario: process faults act on the
/// system the scenario starts (so they need `[setup.start]` and take no `process`), and values
/// the node would refuse are refused before anything starts.
fn check_fault(p: &mut Problems, path: &[Seg], fault: &Fault, has_start: bool) {
    use chaos_proto::kinds::Family;
    let at = |f: &str| [path, &[key(f)]].concat();
    let kind = fault.kind();
    if fault.family() == Family::Process {
        if !has_start {
            p.add(
                &at("kind"),
                format!("`{kind}` acts on the system's processes: add [setup.start] (or [[setup.services]])"),
            );
        }
        let given = match fault {
            Fault::Pause(f) => f.process.is_some(),
            Fault::Kill(f) => f.process.is_some(),
            Fault::Restart(f) => f.process.is_some(),
            _ => false,
        };
        if given {
            p.add(
                &at("process"),
                format!(
                    "a scenario's `{kind}` acts on the system started by [setup.start]; `process` is \
                     for `chaos fault inject`"
                ),
            );
        }
    }
    match fault {
        Fault::Loss(f) => {
            if !(0.0..=100.0).contains(&f.percent) {
                p.add(
                    &at("percent"),
                    format!("{} is not a percentage from 0 to 100", f.percent),
                );
            }
            if !(0.0..=100.0).contains(&f.correlation) {
                p.add(
                    &at("correlation"),
                    format!("{} is not a percentage from 0 to 100", f.correlation),
                );
            }
        }
        Fault::Delay(f) => {
            if f.delay.0.is_zero() {
                p.add(&at("delay"), "must be longer than 0s");
            } else if f.delay.0 > Duration::from_secs(60) || f.jitter.0 > Duration::from_secs(60) {
                p.add(&at("delay"), "delay and jitter are at most 60s");
            }
        }
        Fault::Packet(f) => {
            if let Err(e) = f.effects.validate() {
                p.add(&[path, &[key("effects"), key(e.field)]].concat(), e.reason);
            } else if f.effects == chaos_proto::fault::PacketEffects::default() {
                p.add(
                    &at("effects"),
                    "no effect: give at least one of delay_us, loss_percent, duplicate_percent, \
                     corrupt_percent, reorder_percent",
                );
            }
        }
        Fault::Bandwidth(f) if f.rate_bps == 0 => {
            p.add(&at("rate_bps"), "must be greater than 0 (e.g. \"500kbit\")")
        }
        Fault::Link(f) if f.up.is_none() && f.mtu.is_none() => {
            p.add(path, "a `link` case needs `up` and/or `mtu`")
        }
        Fault::Restart(f) if f.grace.0 > Duration::from_secs(60) => p.add(&at("grace"), "at most 60s"),
        _ => {}
    }
}

fn check_regex(p: &mut Problems, path: &[Seg], re: &str, needs_group: bool) {
    match regex::Regex::new(re) {
        Err(e) => p.add(path, format!("bad regex: {e}")),
        Ok(r) if needs_group && r.captures_len() < 2 => {
            p.add(path, "needs a capture group `( … )` around the part to compare")
        }
        Ok(_) => {}
    }
}
