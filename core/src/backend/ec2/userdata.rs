//! What an instance is given at launch, and how launches are cut: the user data script (no
//! secret: only presigned S3 GET URLs), the per-batch manifest, the TLS bundle format, batch
//! sizes and the order of capacity fallbacks. Pure functions, unit-tested without AWS.
//!
//! One RunInstances call launches a whole batch with one user data, so the script cannot carry a
//! per-instance URL. It carries two: the agent binary's and the batch **manifest**'s. The runner
//! writes the manifest once RunInstances returned the instances' private addresses: one line
//! `<address> <presigned URL of that instance's TLS bundle>` per instance. The script finds the
//! line naming one of its own addresses, fetches its bundle, and starts the agent. The runner
//! deletes each bundle as soon as its agent listens, and the manifest once the batch is up, so
//! by the time anyone reads the user data (DescribeInstanceAttribute) its URLs lead nowhere.

use std::time::Duration;

use crate::certs::Identity;

/// Everything the user data script needs.
#[derive(Debug, Clone)]
pub struct UserData<'a> {
    /// The cluster id (a comment in the script, for whoever reads it).
    pub cluster: &'a str,
    /// Presigned GET URL of the agent binary.
    pub agent_url: &'a str,
    /// Presigned GET URL of the batch manifest.
    pub manifest_url: &'a str,
    /// Directory on the node for the agent, its TLS files, state and root.
    pub node_dir: &'a str,
    /// Port the agent listens on.
    pub agent_port: u16,
    /// The agent's heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// How long the script keeps trying to fetch before it gives up.
    pub fetch_deadline: Duration,
}

/// Quotes `text` for a POSIX shell (single quotes).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The user data script (a `#!/bin/sh` script cloud-init runs once at first boot).
pub fn render(u: &UserData<'_>) -> String {
    let heartbeat = format!("{}ms", u.heartbeat_timeout.as_millis().max(1));
    format!(
        r#"#!/bin/sh
# chaos ec2 node of cluster {cluster}. No secret in here: the URLs are presigned S3 GETs that
# expire, and the runner deletes what they point to as soon as the agents listen.
set -u
umask 077
DIR={dir}
AGENT_URL={agent_url}
MANIFEST_URL={manifest_url}
DEADLINE=$(( $(date +%s) + {deadline} ))
say() {{ echo "chaos-node: $*" >&2; }}
give_up() {{ say "$*; giving up"; exit 1; }}
fetch() {{
  curl -fsS --max-time 30 -o "$2" "$1" 2>/dev/null || wget -q -T 30 -O "$2" "$1" 2>/dev/null
}}
mkdir -p "$DIR/tls" "$DIR/root" "$DIR/state" || give_up "cannot create $DIR"
until fetch "$AGENT_URL" "$DIR/chaos-agent"; do
  [ "$(date +%s)" -lt "$DEADLINE" ] || give_up "could not fetch the agent"
  sleep 1
done
chmod 0755 "$DIR/chaos-agent"
# This instance's line of the batch manifest: the one naming one of its own addresses.
BUNDLE_URL=
until [ -n "$BUNDLE_URL" ]; do
  if fetch "$MANIFEST_URL" "$DIR/manifest"; then
    for ip in $(ip -4 -o addr show | awk '{{ split($4, a, "/"); print a[1] }}'); do
      BUNDLE_URL=$(awk -v ip="$ip" '$1 == ip {{ print $2 }}' "$DIR/manifest")
      [ -n "$BUNDLE_URL" ] && break
    done
  fi
  [ -n "$BUNDLE_URL" ] && break
  [ "$(date +%s)" -lt "$DEADLINE" ] || give_up "no line of the manifest names this instance"
  sleep 1
done
until fetch "$BUNDLE_URL" "$DIR/bundle.pem"; do
  [ "$(date +%s)" -lt "$DEADLINE" ] || give_up "could not fetch this node's TLS bundle"
  sleep 1
done
rm -f "$DIR/manifest"
# The bundle holds three PEM blocks: the cluster CA, this node's certificate, its key.
awk -v d="$DIR/tls" '/^-+BEGIN / {{ n++ }} {{ f = (n == 1 ? d "/ca.pem" : n == 2 ? d "/node.pem" : d "/node.key"); print > f }}' "$DIR/bundle.pem"
rm -f "$DIR/bundle.pem"
chmod 0644 "$DIR/tls/ca.pem" "$DIR/tls/node.pem"
# Heartbeat loss powers the instance off, which terminates it (shutdown behaviour: terminate).
nohup setsid "$DIR/chaos-agent" --listen 0.0.0.0:{port} --tls-dir "$DIR/tls" \
  --root-dir "$DIR/root" --state-dir "$DIR/state" --heartbeat-timeout {heartbeat} \
  --on-heartbeat-loss poweroff >"$DIR/agent.log" 2>&1 </dev/null &
"#,
        cluster = u.cluster.replace(['\n', '\r'], " "),
        dir = quote(u.node_dir),
        agent_url = quote(u.agent_url),
        manifest_url = quote(u.manifest_url),
        deadline = u.fetch_deadline.as_secs().max(1),
        port = u.agent_port,
    )
}

/// The TLS bundle of one node: CA certificate, node certificate, node key (PEM, in this order —
/// the script splits them by block).
pub fn bundle(ca_pem: &str, identity: &Identity) -> String {
    let mut text = String::new();
    for part in [ca_pem, &identity.cert_pem, &identity.key_pem] {
        text.push_str(part.trim_end());
        text.push('\n');
    }
    text
}

/// The batch manifest: one line `<address> <bundle URL>` per instance.
pub fn manifest<'a>(lines: impl IntoIterator<Item = (String, &'a str)>) -> String {
    lines
        .into_iter()
        .map(|(ip, url)| format!("{ip} {url}\n"))
        .collect()
}

/// Sizes of the batches launching `count` instances at most `batch_size` at a time: as even as
/// possible (100 by 30 → 25, 25, 25, 25), so no batch is a straggler of one.
pub fn batch_sizes(count: usize, batch_size: usize) -> Vec<usize> {
    if count == 0 {
        return Vec::new();
    }
    let batch_size = batch_size.max(1);
    let batches = count.div_ceil(batch_size);
    let (base, extra) = (count / batches, count % batches);
    (0..batches).map(|i| base + usize::from(i < extra)).collect()
}

/// The (subnet, instance type) pairs a batch tries, in order, when the previous one lacked
/// capacity: every subnet (availability zone) with the first type, then with the next type…
/// With no subnet configured, the default VPC's choice (`None`).
pub fn attempts(subnets: &[String], types: &[String]) -> Vec<(Option<String>, String)> {
    let subnets: Vec<Option<String>> = if subnets.is_empty() {
        vec![None]
    } else {
        subnets.iter().cloned().map(Some).collect()
    };
    types
        .iter()
        .flat_map(|t| subnets.iter().map(move |s| (s.clone(), t.clone())))
        .collect()
}

/// Whether an EC2 error code means "no capacity here, try elsewhere".
pub fn is_capacity_error(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "InsufficientCapacity" | "Unsupported"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        render(&UserData {
            cluster: "t-1234",
            agent_url: "https://b.s3.amazonaws.com/agent?X-Amz-Signature=abc",
            manifest_url: "https://b.s3.amazonaws.com/m?X-Amz-Signature=def&x='y'",
            node_dir: "/run/chaos-agent",
            agent_port: 7443,
            heartbeat_timeout: Duration::from_secs(15),
            fetch_deadline: Duration::from_secs(300),
        })
    }

    #[test]
    fn user_data_carries_urls_and_no_key_or_certificate() {
        let script = sample();
        // The bytes themselves: no PEM block, no key material of any kind.
        for needle in ["-----BEGIN", "PRIVATE KEY", "CERTIFICATE", "MII"] {
            assert!(
                !script.contains(needle),
                "user data contains {needle:?}:\n{script}"
            );
        }
        assert!(script.contains("'https://b.s3.amazonaws.com/agent?X-Amz-Signature=abc'"));
        // A quote in a URL cannot end the shell word.
        assert!(script.contains(r"x='\''y'\'''"), "{script}");
        assert!(script.contains("--on-heartbeat-loss poweroff"));
        assert!(script.contains("--heartbeat-timeout 15000ms"));
        assert!(script.len() < 16 * 1024, "EC2 caps user data at 16 KiB");
    }

    #[test]
    fn the_bundle_splits_into_the_agents_files() {
        let id = Identity {
            cert_pem: "-----BEGIN CERTIFICATE-----\nnode\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n".into(),
        };
        let b = bundle("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----", &id);
        assert_eq!(b.matches("-----BEGIN").count(), 3);
        assert!(
            b.find("ca").unwrap() < b.find("node").unwrap()
                && b.find("node").unwrap() < b.find("key").unwrap()
        );
    }

    #[test]
    fn batches_are_even_and_cover_the_count() {
        assert_eq!(batch_sizes(0, 50), Vec::<usize>::new());
        assert_eq!(batch_sizes(10, 50), vec![10]);
        assert_eq!(batch_sizes(100, 30), vec![25, 25, 25, 25]);
        assert_eq!(batch_sizes(101, 50), vec![34, 34, 33]);
        assert_eq!(batch_sizes(1000, 50).len(), 20);
        for (n, b) in [(1, 1), (7, 3), (999, 100), (1000, 1)] {
            let sizes = batch_sizes(n, b);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| *s >= 1 && *s <= b), "{n} by {b}: {sizes:?}");
        }
    }

    #[test]
    fn capacity_fallback_tries_every_subnet_then_the_next_type() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let tries = attempts(&s(&["a", "b"]), &s(&["t3.micro", "t3a.micro"]));
        let tries: Vec<(Option<&str>, &str)> =
            tries.iter().map(|(s, t)| (s.as_deref(), t.as_str())).collect();
        assert_eq!(
            tries,
            vec![
                (Some("a"), "t3.micro"),
                (Some("b"), "t3.micro"),
                (Some("a"), "t3a.micro"),
                (Some("b"), "t3a.micro")
            ]
        );
        assert_eq!(
            attempts(&[], &s(&["t3.micro"])),
            vec![(None, "t3.micro".to_string())]
        );
        assert!(is_capacity_error("InsufficientInstanceCapacity"));
        assert!(!is_capacity_error("UnauthorizedOperation"));
    }
}
