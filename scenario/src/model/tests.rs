//! Parsing and validation of scenario files, with the errors a user reads.

use super::*;
use chaos_proto::Fault;

fn err(text: &str) -> ScenarioErrors {
    Scenario::parse(text, "t.toml").expect_err("should be invalid")
}

#[test]
fn minimal_scenario_parses_with_defaults() {
    let s = Scenario::parse("", "demo.toml").unwrap();
    assert_eq!(s.name, "demo");
    assert_eq!(s.cluster.nodes, 3);
    assert_eq!(s.cluster.backend.name(), "netns");
    assert_eq!(s.schedule.rounds, 1);
}

#[test]
fn unknown_field_names_file_line_and_choices() {
    let e = err("[cluster]\nnodes = 3\nbackendd = \"netns\"\n");
    let e = &e.0[0];
    assert_eq!((e.file.as_str(), e.line, e.column), ("t.toml", 3, 1));
    assert!(e.message.contains("unknown field `backendd`"), "{e}");
    assert!(e.message.contains("backend"), "{e}");
}

#[test]
fn unknown_kind_selector_backend_list_choices() {
    let text = "[[faults]]\nname = \"a\"\nkind = \"kil\"\ntarget = \"one\"\n";
    let e = &err(text).0[0];
    assert_eq!(e.line, 3, "{e}");
    assert_eq!(e.field, "faults[0].kind");
    assert!(
        e.message.contains("kill") && e.message.contains("partition"),
        "{e}"
    );

    let text = "[[faults]]\nname = \"a\"\nkind = \"kill\"\ntarget = \"leeder\"\n";
    let e = &err(text).0[0];
    assert_eq!(e.line, 4, "{e}");
    assert_eq!(e.field, "faults[0].target");
    assert!(
        e.message.contains("leeder") && e.message.contains("followers"),
        "{e}"
    );

    let e = &err("[cluster]\nbackend = \"dockr\"\n").0[0];
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.message.contains("local") && e.message.contains("netns") && e.message.contains("docker"),
        "{e}"
    );
}

#[test]
fn a_field_of_another_kind_is_refused_at_its_line_with_the_valid_fields() {
    let text = "[[faults]]\nname = \"cut\"\nkind = \"partition\"\ntarget = \"one\"\npercent = 20\n";
    let e = &err(text).0[0];
    assert_eq!((e.line, e.field.as_str()), (5, "faults[0].percent"), "{e}");
    assert!(
        e.to_string().starts_with(
            "t.toml:5:11: field `faults[0].percent`: unknown field `percent`, expected `traffic`"
        ),
        "{e}"
    );
    assert!(e.message.contains("name, target, weight"), "{e}");
    // A missing parameter is refused, not defaulted.
    let text = "[[faults]]\nname = \"l\"\nkind = \"loss\"\ntarget = \"one\"\n";
    let e = &err(text).0[0];
    assert!(e.message.contains("missing field `percent`"), "{e}");
    // The old container kinds say what they became.
    let text = "[[faults]]\nname = \"c\"\nkind = \"container_stop\"\ntarget = \"one\"\n";
    let e = &err(text).0[0];
    assert_eq!((e.line, e.field.as_str()), (3, "faults[0].kind"), "{e}");
    assert!(
        e.message.contains("kind = \"machine\" with action = \"stop\""),
        "{e}"
    );
    // Parameters of the fault model parse in place.
    let text = "[setup.start]\ncommand = \"sleep 9\"\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"one\"\nsignal = \"SIGTERM\"\n[[faults]]\nname = \"b\"\nkind = \"bandwidth\"\ntarget = \"one\"\nrate_bps = \"500kbit\"\n[[faults]]\nname = \"p\"\nkind = \"partition\"\ntarget = \"one\"\ntraffic = { direction = \"in\" }\n";
    let s = Scenario::parse(text, "t.toml").unwrap();
    assert!(matches!(&s.faults[0].fault, Fault::Kill(k) if k.signal == chaos_proto::Signal::TERM));
    assert!(matches!(&s.faults[1].fault, Fault::Bandwidth(b) if b.rate_bps == 500_000));
    assert!(
        matches!(&s.faults[2].fault, Fault::Partition(p) if p.traffic.direction == chaos_proto::fault::Direction::In)
    );
    // A scenario's process faults act on its system, not on a process named in the file.
    let text = "[setup.start]\ncommand = \"sleep 9\"\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"one\"\nprocess = \"all\"\n";
    let e = &err(text).0[0];
    assert_eq!((e.line, e.field.as_str()), (7, "faults[0].process"), "{e}");
}

#[test]
fn invariants_are_checks_with_a_time_and_refuse_unknown_fields_at_their_line() {
    let text = "[[invariants]]\nname = \"up\"\ncommand = \"true\"\nat = [\"end\"]\ntimeout = \"5s\"\n";
    let s = Scenario::parse(text, "t.toml").unwrap();
    let inv = &s.invariants[0];
    assert_eq!((inv.name(), inv.at.as_slice()), ("up", &[When::End][..]));
    assert_eq!(inv.check.timeout, Some(Dur::secs(5)));
    let text = "[[invariants]]\nname = \"up\"\ncommand = \"true\"\ntimeuot = \"5s\"\n";
    let e = &err(text).0[0];
    assert_eq!((e.line, e.field.as_str()), (4, "invariants[0].timeuot"), "{e}");
    assert!(
        e.message.contains("unknown field `timeuot`") && e.message.contains("`timeout`"),
        "{e}"
    );
}

#[test]
fn semantic_errors_are_located() {
    let text = "\n[cluster]\nnodes = 3\n\n[[faults]]\nname = \"x\"\nkind = \"loss\"\ntarget = [\"n1\", \"n9\"]\npercent = 300\n";
    let errs = err(text);
    let fields: Vec<_> = errs.0.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert!(fields.contains(&("faults[0].target", 8)), "{errs}");
    assert!(fields.contains(&("faults[0].percent", 9)), "{errs}");
    assert!(
        errs.to_string()
            .contains("no node `n9`; the nodes are n1, n2, n3"),
        "{errs}"
    );
}

#[test]
fn leader_selector_needs_probe_and_templates_are_checked() {
    let text = "[setup.start]\ncommand = [\"sleep\", \"{{ node.nmae }}\"]\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"leader\"\n";
    let errs = err(text);
    let s = errs.to_string();
    assert!(s.contains("needs a [leader] probe"), "{s}");
    assert!(
        s.contains("setup.start.command") && s.contains("bad template"),
        "{s}"
    );
}

#[test]
fn durations_and_ranges() {
    let text =
        "[[faults]]\nname = \"p\"\nkind = \"partition\"\ntarget = \"one\"\nduration = [\"2s\", \"1s\"]\n";
    let e = &err(text).0[0];
    assert_eq!(e.field, "faults[0].duration");
    let e = &err("[schedule]\npause = \"5 parsecs\"\n").0[0];
    assert!(e.message.contains("not a duration"), "{e}");
    assert_eq!(e.line, 2);
}

#[test]
fn adapter_and_command_workloads_refuse_each_others_fields() {
    let e = err("[workload]\ntype = \"adapter\"\n[[workload.ops]]\nkind = \"read\"\n").to_string();
    assert!(e.contains("needs [workload.adapter]"), "{e}");
    let e = err(
        "[workload]\ntype = \"adapter\"\n[workload.adapter]\ncommand = \"a\"\n[[workload.ops]]\nkind = \"read\"\ncommand = \"cat x\"\n",
    )
    .to_string();
    assert!(
        e.contains("workload.ops[0].command") && e.contains("have no `command`"),
        "{e}"
    );
    let e = err("[workload]\ntype = \"command\"\n[[workload.ops]]\nkind = \"cas\"\ncommand = \"x\"\n")
        .to_string();
    assert!(
        e.contains("workload.ops[0].kind") && e.contains("`cas` needs an adapter workload"),
        "{e}"
    );
    let e = err("[workload]\ntype = \"command\"\n[[workload.ops]]\nkind = \"read\"\n").to_string();
    assert!(e.contains("needs `command`"), "{e}");
    let e = err(
        "[workload]\ntype = \"command\"\n[workload.exit_codes]\nfail = [0, 2]\nunknown = [2]\n[[workload.ops]]\nkind = \"read\"\ncommand = \"cat x\"\n",
    )
    .to_string();
    assert!(
        e.contains("exit code 0 is always `ok`") && e.contains("exit code 2 is listed both"),
        "{e}"
    );
    let e = err("[workload]\ntype = \"adapter\"\n[workload.adapter]\ncommand = \"{{ nope }}\"\n[[workload.ops]]\nkind = \"read\"\n")
        .to_string();
    assert!(
        e.contains("workload.adapter.command") && e.contains("bad template"),
        "{e}"
    );
    let e = err("[[setup.once]]\ncommand = \"true\"\nnode = \"n9\"\n").to_string();
    assert!(
        e.contains("setup.once[0].node") && e.contains("no node `n9`"),
        "{e}"
    );
    let ok = Scenario::parse(
        "[workload]\ntype = \"adapter\"\n[workload.adapter]\ncommand = [\"a\", \"{{ client }}\"]\non = \"runner\"\n[[workload.ops]]\nkind = \"generate\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(ok.workload.unwrap().adapter.unwrap().on, AdapterPlace::Runner);
}

#[test]
fn services_need_unique_names_and_faults_name_existing_ones() {
    let e =
        err("[[setup.services]]\ncommand = \"a\"\n[[setup.services]]\nname = \"system\"\ncommand = \"b\"\n")
            .to_string();
    assert!(
        e.contains("setup.services[0].name") && e.contains("needs a `name`"),
        "{e}"
    );
    assert!(
        e.contains("setup.services[1].name") && e.contains("is taken"),
        "{e}"
    );
    let e = err(
        "[setup.start]\ncommand = \"a\"\n[[setup.services]]\nname = \"side\"\ncommand = \"b\"\n\
         [[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"one\"\nservice = \"sid\"\n\
         [[faults]]\nname = \"l\"\nkind = \"loss\"\npercent = 5\ntarget = \"one\"\nservice = \"side\"\n",
    )
    .to_string();
    assert!(
        e.contains("no service `sid`; the services are system, side"),
        "{e}"
    );
    assert!(
        e.contains("faults[1].service") && e.contains("belongs to process faults"),
        "{e}"
    );
    // Services alone are enough for process faults.
    Scenario::parse(
        "[[setup.services]]\nname = \"db\"\ncommand = \"a\"\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"one\"\nservice = \"db\"\n",
        "t.toml",
    )
    .unwrap();
}

#[test]
fn measure_checks_name_their_peer_and_bounds_at_their_line() {
    let text = "[[invariants]]\nname = \"fast\"\nmeasure = { to = \"n2\", min_mbit = 50 }\n";
    let s = Scenario::parse(text, "t.toml").unwrap();
    let m = s.invariants[0].check.measure.as_ref().unwrap();
    assert_eq!(
        (m.to.as_str(), m.min_mbit, m.duration),
        ("n2", Some(50.0), Dur::secs(2))
    );
    let text = "[[invariants]]\nname = \"fast\"\nmeasure = { to = \"n9\", duration = \"2m\", udp_rate = \"fast\" }\n";
    let errs = err(text);
    let fields: Vec<_> = errs.0.iter().map(|e| (e.field.as_str(), e.line)).collect();
    for field in ["to", "duration", "udp_rate"] {
        let want = format!("invariants[0].measure.{field}");
        assert!(fields.contains(&(want.as_str(), 3)), "{field}: {errs}");
    }
    assert!(errs.to_string().contains("unknown node \"n9\""), "{errs}");
    let both = "[[invariants]]\nname = \"x\"\ncommand = \"true\"\nmeasure = { to = \"n2\" }\n";
    assert!(err(both).to_string().contains("exactly one of"));
    let typo = "[[invariants]]\nname = \"x\"\nmeasure = { to = \"n2\", min_mbits = 5 }\n";
    assert!(err(typo).to_string().contains("unknown field `min_mbits`"));
}

#[test]
fn cluster_labels_parse_and_empty_pairs_are_refused() {
    let s = Scenario::parse(
        "[cluster]\nbackend = \"hosts\"\nnodes = 2\nlabels = { rack = \"1\", room = \"b\" }\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(s.cluster.labels.len(), 2);
    assert_eq!(s.cluster.labels["rack"], "1");
    assert!(Scenario::parse("", "t.toml").unwrap().cluster.labels.is_empty());

    let e = &err("[cluster]\nnodes = 2\nlabels = { rack = \"\" }\n").0[0];
    assert_eq!(e.field, "cluster.labels");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("non-empty value"), "{e}");
}

#[test]
fn docker_includes_parse_and_bad_paths_are_refused_where_written() {
    let s = Scenario::parse(
        "[cluster]\nnodes = 2\n[cluster.docker]\ninclude = [\"/usr/lib/jvm/x\", \"/usr/share/java\"]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(s.cluster.docker.include, ["/usr/lib/jvm/x", "/usr/share/java"]);
    // Written back when set, left out when not.
    assert!(toml::to_string(&s).unwrap().contains("[cluster.docker]"));
    let plain = Scenario::parse("", "t.toml").unwrap();
    assert!(plain.cluster.docker.is_empty());
    assert!(!toml::to_string(&plain).unwrap().contains("docker"));

    let text = "[cluster.docker]\ninclude = [\n  \"/opt/a\",\n  \"opt/b\",\n  \"/\",\n  \"/opt/a\",\n]\n";
    let errors = err(text).0;
    let found: Vec<(&str, usize)> = errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("cluster.docker.include[1]", 4),
            ("cluster.docker.include[2]", 5),
            ("cluster.docker.include[3]", 6)
        ],
        "{errors:?}"
    );
    assert!(errors[0].message.contains("from `/`"), "{}", errors[0]);
    assert!(errors[2].message.contains("twice"), "{}", errors[2]);
    let e = &err("[cluster.docker]\nincludes = []\n").0[0];
    assert!(e.message.contains("unknown field `includes`"), "{e}");
}

#[test]
fn txn_mix_and_consistency_model_are_validated_where_they_are_written() {
    let adapter = "[workload]\ntype = \"adapter\"\n[workload.adapter]\ncommand = \"a\"\n";
    let ok = Scenario::parse(
        &format!("{adapter}[workload.txn]\nmax_ops = 6\n[[workload.ops]]\nkind = \"txn\"\n[history]\nconsistency_model = \"read-committed\"\n"),
        "t.toml",
    )
    .unwrap();
    let txn = ok.workload.unwrap().txn.unwrap();
    assert_eq!((txn.min_ops, txn.max_ops, txn.read_percent), (1, 6, 50));
    assert_eq!(
        ok.history.consistency_model,
        Some(chaos_check::ConsistencyModel::ReadCommitted)
    );

    let e = err(&format!(
        "{adapter}[workload.txn]\nmin_ops = 3\nmax_ops = 2\nread_percent = 120\nmax_writes_per_key = 0\n[[workload.ops]]\nkind = \"read\"\n"
    ))
    .to_string();
    for needle in [
        "workload.txn.max_ops",
        "at least min_ops (3)",
        "workload.txn.read_percent",
        "workload.txn.max_writes_per_key",
        "add [[workload.ops]] kind = \"txn\"",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let e = err("[workload]\ntype = \"command\"\n[[workload.ops]]\nkind = \"txn\"\ncommand = \"x\"\n")
        .to_string();
    assert!(
        e.contains("workload.ops[0].kind") && e.contains("`txn` needs an adapter workload"),
        "{e}"
    );
    let e = err("[history]\nconsistency_model = \"serialisable\"\n").to_string();
    assert!(
        e.contains("history.consistency_model") && e.contains("serializable"),
        "{e}"
    );
}

#[test]
fn service_readiness_checks_are_validated_at_their_line() {
    let text = r#"
[[setup.services]]
name = "store"
command = ["store"]
[[setup.services.ready]]
name = "store up"
command = ["true"]
regex = "("
[[setup.services]]
name = "manager"
command = ["manager"]
[[setup.services.ready]]
log = true
regex = "started"
"#;
    let errs = err(text);
    let fields: Vec<_> = errs.0.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert!(
        fields.contains(&("setup.services[0].ready[0].regex", 8)),
        "{errs}"
    );
    assert!(fields.contains(&("setup.services[1].ready[0].log", 13)), "{errs}");
    assert!(errs.to_string().contains("logs/manager.log"), "{errs}");
    // A valid one parses, and its checks belong to that service.
    let ok = text
        .replace("regex = \"(\"", "")
        .replace("log = true", "command = [\"true\"]");
    let s = Scenario::parse(&ok, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.setup.services[0].ready.len(), 1);
    assert_eq!(s.setup.services[1].ready[0].regex.as_deref(), Some("started"));
    assert!(s.setup.ready.is_empty());
}

#[test]
fn a_builtin_adapter_is_shipped_by_name_and_a_wrong_name_lists_the_valid_ones() {
    let ok = Scenario::parse(
        "[[setup.ship]]\nbuiltin = \"chaos-adapter-postgres\"\n[setup.start]\ncommand = [\"{{ bin['chaos-adapter-postgres'] }}\"]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(ok.setup.ship[0].name(), "chaos-adapter-postgres");
    assert_eq!(ok.setup.ship[0].from, "");

    let e = err("[[setup.ship]]\nbuiltin = \"chaos-adapter-postgress\"\n").to_string();
    assert!(
        e.starts_with("t.toml:2:") && e.contains("setup.ship[0].builtin"),
        "file, line and field: {e}"
    );
    assert!(
        e.contains("`chaos-adapter-postgress` is not an adapter shipped with chaos")
            && e.contains(
                "chaos-adapter-echo, chaos-adapter-redis, chaos-adapter-postgres, chaos-adapter-zookeeper"
            ),
        "{e}"
    );
    let e = err("[[setup.ship]]\nfrom = \"etcd\"\nbuiltin = \"chaos-adapter-echo\"\n").to_string();
    assert!(e.contains("setup.ship[0]") && e.contains("not both"), "{e}");
    let e = err("[[setup.ship]]\nto = \"/x\"\n").to_string();
    assert!(e.contains("setup.ship[0].from") && e.contains("`builtin`"), "{e}");
}

#[test]
fn a_runner_side_adapter_names_builtins_in_bin_without_shipping_them() {
    let adapter = |on: &str, name: &str| {
        format!(
            "[workload]\ntype = \"adapter\"\n[workload.adapter]\ncommand = [\"{{{{ bin['{name}'] }}}}\"]\non = \"{on}\"\n[[workload.ops]]\nkind = \"read\"\n"
        )
    };
    Scenario::parse(&adapter("runner", "chaos-adapter-postgres"), "t.toml").unwrap();
    // On a node, `bin` holds what was shipped there: nothing here.
    let e = err(&adapter("node", "chaos-adapter-postgres")).to_string();
    assert!(
        e.contains("workload.adapter.command") && e.contains("bad template"),
        "{e}"
    );
    // Not a built-in: undefined on the runner too.
    let e = err(&adapter("runner", "chaos-adapter-nope")).to_string();
    assert!(e.contains("bad template"), "{e}");
    let s = Scenario::parse(&adapter("runner", "chaos-adapter-postgres"), "t.toml").unwrap();
    assert!(crate::template::runner_uses(&s, "chaos-adapter-postgres"));
    assert!(!crate::template::runner_uses(&s, "chaos-adapter-echo"));
}
