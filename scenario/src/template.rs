//! Templates in scenario files: Jinja syntax (MiniJinja), strict about undefined names, so a typo
//! such as `{{ node.nmae }}` is an error at `chaos validate` time rather than an empty string at
//! run time.
//!
//! Every template sees:
//!
//! | name | what |
//! |---|---|
//! | `scenario` | the scenario's name |
//! | `seed` | the run's seed |
//! | `run_id` | the run's id (`<timestamp>-seed<N>`) |
//! | `values` | the scenario's `[values]` |
//! | `nodes` | every node: `name`, `ip`, `index` (1-based), `root` |
//! | `node` | the node the template is rendered for |
//! | `bin` | paths of shipped files on this node, by file name (`bin.etcd`) |
//!
//! Workload commands also see `client`, `seq`, `key` and `value`. A runner-side adapter's
//! command (`[workload.adapter] on = "runner"`) runs on the runner, so there `bin` holds paths
//! on the runner ([`runner_bin`]): each shipped file's source, and the built-in adapters.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::model::Scenario;

/// One node as templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeVars {
    /// `n1`, `n2`, …
    pub name: String,
    /// The address other nodes reach it at.
    pub ip: String,
    /// 1-based position.
    pub index: usize,
    /// The node's own directory.
    pub root: String,
}

/// Everything a template can refer to.
#[derive(Debug, Clone, Serialize)]
pub struct Vars {
    /// The scenario's name.
    pub scenario: String,
    /// The run's seed.
    pub seed: u64,
    /// The run's id.
    pub run_id: String,
    /// The scenario's `[values]`.
    pub values: BTreeMap<String, toml::Value>,
    /// Every node.
    pub nodes: Vec<NodeVars>,
    /// The node being rendered for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeVars>,
    /// Shipped files on `node`, by file name.
    pub bin: BTreeMap<String, String>,
    /// Per-operation names (`client`, `seq`, `key`, `value`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Vars {
    /// The same variables for `node` (index into `nodes`), with `bin` resolved on it.
    pub fn for_node(&self, index: usize, scenario: &Scenario, templates: &Templates) -> Result<Vars, String> {
        let mut vars = self.clone();
        vars.node = self.nodes.get(index).cloned();
        vars.bin = BTreeMap::new();
        for ship in &scenario.setup.ship {
            let name = ship.name();
            let path = ship_destination(ship, &vars, templates)?;
            vars.bin.insert(name, path);
        }
        Ok(vars)
    }

    /// The same variables plus one workload operation's (`client`, `seq`, `key`, `value`).
    pub fn with_op(&self, client: u64, seq: u64, key: &str, value: &serde_json::Value) -> Vars {
        let mut vars = self.clone();
        vars.extra.insert("client".into(), client.into());
        vars.extra.insert("seq".into(), seq.into());
        vars.extra.insert("key".into(), key.into());
        vars.extra.insert("value".into(), value.clone());
        vars
    }

    /// Sample per-operation names, for validation.
    pub fn with_op_vars(&self) -> Vars {
        self.with_op(0, 0, "k0", &serde_json::Value::from(1))
    }
}

/// The file name a shipped file is known by in `bin`.
pub fn ship_file_name(from: &str) -> String {
    Path::new(from)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| from.to_string())
}

/// Where a shipped file lands on the node `vars.node`.
pub fn ship_destination(
    ship: &super::model::Ship,
    vars: &Vars,
    templates: &Templates,
) -> Result<String, String> {
    match &ship.to {
        Some(to) => templates.render(to, vars),
        None => {
            let root = vars.node.as_ref().map(|n| n.root.as_str()).unwrap_or("");
            Ok(format!("{root}/bin/{}", ship.name()))
        }
    }
}

/// Whether the scenario has a runner-side adapter whose command or environment names the
/// built-in adapter `name`: that one is found (or built) on the runner during setup, so that
/// `bin[name]` there is a path on the runner without a `[[setup.ship]]` for it.
pub fn runner_uses(scenario: &Scenario, name: &str) -> bool {
    let Some(adapter) = scenario.workload.as_ref().and_then(|w| w.adapter.as_ref()) else {
        return false;
    };
    adapter.on == super::model::AdapterPlace::Runner
        && adapter
            .command
            .templates()
            .into_iter()
            .chain(adapter.env.values().map(String::as_str))
            .any(|t| t.contains(name))
}

/// `bin` as a runner-side command sees it: every shipped file by its name, at `sources` (what
/// each `[[setup.ship]]` entry was resolved to on the runner, in order), and every built-in
/// adapter in `builtins` (name, path on the runner).
pub fn runner_bin(
    scenario: &Scenario,
    sources: &[std::path::PathBuf],
    builtins: &[(String, std::path::PathBuf)],
) -> BTreeMap<String, String> {
    let shipped = scenario.setup.ship.iter().zip(sources);
    builtins
        .iter()
        .map(|(name, path)| (name.clone(), path.display().to_string()))
        .chain(shipped.map(|(ship, path)| (ship.name(), path.display().to_string())))
        .collect()
}

/// Variables of an imaginary cluster, to check templates without running anything.
pub fn sample_vars(scenario: &Scenario) -> Vars {
    let nodes: Vec<NodeVars> = (1..=scenario.cluster.nodes.clamp(1, 253))
        .map(|i| NodeVars {
            name: format!("n{i}"),
            ip: format!("10.0.0.{}", i + 1),
            index: i,
            root: format!("/tmp/chaos-validate/n{i}"),
        })
        .collect();
    let base = Vars {
        scenario: scenario.name.clone(),
        seed: 0,
        run_id: "validate".into(),
        values: scenario.values.clone(),
        nodes: nodes.clone(),
        node: nodes.first().cloned(),
        bin: BTreeMap::new(),
        extra: BTreeMap::new(),
    };
    let mut vars = base.clone();
    for ship in &scenario.setup.ship {
        let name = ship.name();
        let root = &nodes[0].root;
        vars.bin.insert(name.clone(), format!("{root}/bin/{name}"));
    }
    vars
}

/// [`sample_vars`] as a runner-side command sees them: `bin` holds every shipped file and every
/// built-in adapter, at imaginary paths on the runner.
pub fn sample_runner_vars(scenario: &Scenario) -> Vars {
    let mut vars = sample_vars(scenario);
    let names = chaos::backend::workspace_binary::BUILTIN_ADAPTERS.map(|a| a.bin.to_string());
    vars.bin = names
        .into_iter()
        .chain(scenario.setup.ship.iter().map(|s| s.name()))
        .map(|name| (name.clone(), format!("/runner/{name}")))
        .collect();
    vars
}

/// The template engine, configured once.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Templates {
    /// Strict undefined names, no auto-escaping.
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_debug(false);
        Templates { env }
    }

    /// Renders `source` with `vars`. Text without `{{` or `{%` is returned as is.
    pub fn render(&self, source: &str, vars: &Vars) -> Result<String, String> {
        self.render_with(source, vars)
    }

    /// Renders `source` with any serializable context (e.g. a task's variables).
    pub fn render_with<T: serde::Serialize>(&self, source: &str, vars: &T) -> Result<String, String> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(source.to_string());
        }
        let value = minijinja::Value::from(minijinja::value::Serde(vars));
        self.env.render_str(source, value).map_err(|e| {
            let mut msg = e.to_string().replace(" (in <string>:", " (template line ");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nodes_and_values_and_rejects_typos() {
        let s = Scenario::parse("[values]\nport = 2380\n", "x.toml").unwrap();
        let t = Templates::new();
        let vars = sample_vars(&s);
        let out = t
            .render(
                "{% for n in nodes %}{{ n.name }}=http://{{ n.ip }}:{{ values.port }}{% if not loop.last %},{% endif %}{% endfor %}",
                &vars,
            )
            .unwrap();
        assert_eq!(
            out,
            "n1=http://10.0.0.2:2380,n2=http://10.0.0.3:2380,n3=http://10.0.0.4:2380"
        );
        let err = t.render("{{ node.nmae }}", &vars).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert_eq!(t.render("plain", &vars).unwrap(), "plain");
    }
}
