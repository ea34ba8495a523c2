//! `infra/`, the CloudFormation stack of the ec2 backend: it passes `cfn-lint` (PyPI), holds
//! nothing that bills while idle, and the runner's IAM policy only terminates chaos's instances.

use std::path::PathBuf;
use std::process::Command;

fn infra(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../infra")
        .join(file)
}

/// Resource types that cost money while no test runs (hourly, monthly or per idle address).
const BILLS_WHILE_IDLE: &[&str] = &[
    "AWS::EC2::Instance",
    "AWS::EC2::NatGateway",
    "AWS::EC2::EIP",
    "AWS::EC2::Volume",
    "AWS::EC2::Host",
    "AWS::EC2::VPNConnection",
    "AWS::EC2::TransitGateway",
    "AWS::EC2::TransitGatewayAttachment",
    "AWS::EC2::ClientVpnEndpoint",
    "AWS::ElasticLoadBalancing::LoadBalancer",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::RDS::DBInstance",
    "AWS::RDS::DBCluster",
    "AWS::KMS::Key",
    "AWS::SecretsManager::Secret",
    "AWS::Route53::HostedZone",
    "AWS::CloudWatch::Alarm",
    "AWS::EKS::Cluster",
    "AWS::ECS::Service",
    "AWS::ElastiCache::CacheCluster",
    "AWS::NetworkFirewall::Firewall",
    "AWS::GlobalAccelerator::Accelerator",
];

/// The `Type:` of every resource of the template (one per line in its YAML).
fn resource_types(template: &str) -> Vec<String> {
    template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Type: "))
        .filter(|t| t.starts_with("AWS::"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_template_has_nothing_that_bills_while_idle() {
    let template = std::fs::read_to_string(infra("chaos-ec2.yaml")).unwrap();
    let types = resource_types(&template);
    for wanted in [
        "AWS::EC2::VPC",
        "AWS::EC2::InternetGateway",
        "AWS::EC2::Subnet",
        "AWS::EC2::RouteTable",
        "AWS::EC2::SecurityGroup",
        "AWS::S3::Bucket",
    ] {
        assert!(types.iter().any(|t| t == wanted), "no {wanted} in {types:?}");
    }
    for t in &types {
        assert!(!BILLS_WHILE_IDLE.contains(&t.as_str()), "{t} bills while idle");
    }
    // An interface endpoint bills hourly; a gateway endpoint is free.
    let endpoints = types.iter().filter(|t| *t == "AWS::EC2::VPCEndpoint").count();
    assert_eq!(template.matches("VpcEndpointType: Gateway").count(), endpoints);
    // The bucket forgets what a killed runner left, and is private.
    assert!(template.contains("ExpirationInDays: 1"));
    assert!(template.contains("RestrictPublicBuckets: true"));
    // A detector that cannot fail is no detector.
    let with_nat = format!("{template}\n  Nat:\n    Type: AWS::EC2::NatGateway\n");
    assert!(
        resource_types(&with_nat)
            .iter()
            .any(|t| BILLS_WHILE_IDLE.contains(&t.as_str()))
    );
}

#[test]
fn the_template_passes_cfn_lint() {
    let template = infra("chaos-ec2.yaml");
    let out = match Command::new("cfn-lint").arg(&template).output() {
        Ok(out) => out,
        Err(e) => {
            chaos_testkit::skip("the_template_passes_cfn_lint", "cfn-lint", &e);
            return;
        }
    };
    assert!(
        out.status.success(),
        "cfn-lint {}:\n{}{}",
        template.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_runner_policy_terminates_only_tagged_instances() {
    let text = std::fs::read_to_string(infra("runner-policy.json")).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let mut actions = Vec::new();
    for s in statements {
        assert_eq!(s["Effect"], "Allow");
        let listed: Vec<&str> = match &s["Action"] {
            serde_json::Value::String(a) => vec![a.as_str()],
            other => other
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect(),
        };
        for action in &listed {
            assert!(!action.contains('*'), "no wildcard action: {action}");
            if *action == "ec2:TerminateInstances" {
                assert_eq!(
                    s["Condition"]["Null"]["ec2:ResourceTag/io.chaos.cluster"],
                    "false"
                );
            }
        }
        actions.extend(listed);
    }
    // Every call the backend makes, and nothing to pass roles or touch IAM.
    for needed in [
        "ec2:RunInstances",
        "ec2:CreateTags",
        "ec2:TerminateInstances",
        "ec2:DescribeInstances",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeImages",
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "s3:ListAllMyBuckets",
    ] {
        assert!(actions.contains(&needed), "the policy lacks {needed}");
    }
    assert!(actions.iter().all(|a| !a.starts_with("iam:")), "{actions:?}");
}
