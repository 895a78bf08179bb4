//! `atoll status`: how each node of the cluster is doing.

use std::io::{self, Write};
use std::time::Duration;

use atoll_net::client::Connection;
use atoll_net::protocol::{NodeInfo, NodeStatus, Value};
use atoll_net::tls::TlsContext;

use super::{
    configuration, connect, node_words, probe_config, probe_each, role_name, CliError, ClusterArgs,
};
use crate::output::{self, Format};

/// Time to dial and question one node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Show each node's health: role, term, applied index, lag, last contact, disk, memory.
///
/// Asks the leader for the configuration, then every node for its status (STATUS, atoll's
/// request). Columns: id, address, role (voter/standby/spare, and `leader` for the leader;
/// `(repairing)` follows while the node is rebuilt from the leader after finding its data
/// damaged), term, applied (the node's applied Raft index), lag (entries the leader has
/// committed that the node has not applied), contact (time since the node last heard from
/// the leader; `-` on the leader), disk_free (bytes free for its data directory), dbs
/// (databases it holds), rss (its resident memory), version. A node that does not answer
/// shows why. Exits non-zero when a node does not answer.
///
/// Example: atoll status --cluster 127.0.0.1:9001 --format json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Output format: table, csv, or json (an array of objects with the columns above, numbers
    /// as numbers, bytes in bytes, contact in milliseconds; null when unknown).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "table",
        hide_possible_values = true
    )]
    pub format: Format,
}

fn probe(address: &str, tls: Option<&TlsContext>) -> Result<NodeStatus, String> {
    let config = probe_config(PROBE_TIMEOUT, PROBE_TIMEOUT, tls);
    match Connection::connect_atoll(address, &config).map_err(node_words)? {
        Some(mut connection) => connection.status().map_err(node_words),
        None => Err("not an atoll node".to_owned()),
    }
}

/// `bytes` with a binary unit.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The status rows: each node with its answer.
fn collect(
    nodes: &[NodeInfo],
    tls: Option<&TlsContext>,
) -> Vec<(NodeInfo, Result<NodeStatus, String>)> {
    let answers = probe_each(nodes, |node| probe(&node.address, tls));
    nodes.iter().cloned().zip(answers).collect()
}

fn write(
    out: &mut impl Write,
    rows: &[(NodeInfo, Result<NodeStatus, String>)],
    format: Format,
) -> io::Result<()> {
    let commit = rows
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.metadata.state == 3)
        .map(|s| s.metadata.commit_index)
        .max();
    let role = |node: &NodeInfo, status: Option<&NodeStatus>| {
        let role = if status.is_some_and(|s| s.metadata.state == 3) {
            "leader"
        } else {
            role_name(node.role)
        };
        if status.is_some_and(|s| s.repairing) {
            format!("{role} (repairing)")
        } else {
            role.to_owned()
        }
    };
    let lag = |s: &NodeStatus| commit.map(|c| c.saturating_sub(s.metadata.applied_index));
    let contact = |s: &NodeStatus| {
        (s.metadata.state != 3 && s.last_contact_ms != u64::MAX).then_some(s.last_contact_ms)
    };
    match format {
        Format::Json => {
            let number = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
            let objects: Vec<String> = rows
                .iter()
                .map(|(node, status)| {
                    let s = status.as_ref().ok();
                    format!(
                        "{{\"id\":{},\"address\":{},\"role\":{},\"reachable\":{},\"error\":{},\
                         \"term\":{},\"applied_index\":{},\"lag\":{},\"last_contact_ms\":{},\
                         \"disk_free_bytes\":{},\"databases\":{},\"rss_bytes\":{},\"version\":{}}}",
                        node.id,
                        output::json_string(&node.address),
                        output::json_string(&role(node, s)),
                        s.is_some(),
                        status
                            .as_ref()
                            .err()
                            .map_or("null".to_owned(), |e| output::json_string(e)),
                        number(s.map(|s| s.metadata.term)),
                        number(s.map(|s| s.metadata.applied_index)),
                        number(s.and_then(lag)),
                        number(s.and_then(contact)),
                        number(s.map(|s| s.disk_free_bytes)),
                        number(s.map(|s| s.databases)),
                        number(s.map(|s| s.rss_bytes).filter(|r| *r > 0)),
                        s.map_or("null".to_owned(), |s| output::json_string(&s.version)),
                    )
                })
                .collect();
            writeln!(out, "[{}]", objects.join(",\n"))
        }
        Format::Table | Format::Csv => {
            let columns: Vec<String> = [
                "id",
                "address",
                "role",
                "term",
                "applied",
                "lag",
                "contact",
                "disk_free",
                "dbs",
                "rss",
                "version",
            ]
            .iter()
            .map(|c| c.to_string())
            .collect();
            let dash = || Value::Text("-".into());
            let values: Vec<Vec<Value>> = rows
                .iter()
                .map(|(node, status)| {
                    let head = vec![
                        Value::Text(node.id.to_string()),
                        Value::Text(node.address.clone()),
                        Value::Text(role(node, status.as_ref().ok())),
                    ];
                    let tail = match status {
                        Ok(s) => vec![
                            Value::Text(s.metadata.term.to_string()),
                            Value::Text(s.metadata.applied_index.to_string()),
                            Value::Text(lag(s).map_or("-".into(), |l| l.to_string())),
                            Value::Text(contact(s).map_or("-".into(), |c| format!("{c} ms"))),
                            Value::Text(human_bytes(s.disk_free_bytes)),
                            Value::Text(s.databases.to_string()),
                            Value::Text(if s.rss_bytes > 0 {
                                human_bytes(s.rss_bytes)
                            } else {
                                "-".into()
                            }),
                            Value::Text(s.version.clone()),
                        ],
                        Err(why) => {
                            let mut tail = vec![Value::Text(format!("unreachable ({why})"))];
                            tail.extend((0..7).map(|_| dash()));
                            tail
                        }
                    };
                    head.into_iter().chain(tail).collect()
                })
                .collect();
            output::write_table_or_csv(out, &columns, &values, format)
        }
    }
}

/// Runs `atoll status`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut client = connect(&args.cluster)?;
    let nodes = configuration(&mut client)?;
    let rows = collect(&nodes, args.cluster.tls_context.as_ref());
    let mut stdout = io::stdout().lock();
    write(&mut stdout, &rows, args.format)?;
    stdout.flush()?;
    let down: Vec<String> = rows
        .iter()
        .filter(|(_, s)| s.is_err())
        .map(|(n, _)| n.id.to_string())
        .collect();
    if !down.is_empty() {
        return Err(CliError::new(format!(
            "node(s) {} did not answer",
            down.join(", ")
        )));
    }
    Ok(())
}
