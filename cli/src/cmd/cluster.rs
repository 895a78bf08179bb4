//! `atoll cluster`: the nodes of the cluster, their roles, which one leads, and which ones
//! answer.

use std::io::{self, Write};
use std::time::Duration;

use atoll_net::client::{Client, ClientError, Connection};
use atoll_net::protocol::{NodeInfo, NodeMetadata, Value};
use atoll_net::tls::TlsContext;

use super::{
    configuration_error, connect, node_words, probe_config, probe_each, role_name, CliError,
    ClusterArgs,
};
use crate::output::{self, Format};

/// List the nodes of the cluster.
///
/// Asks the leader for the configuration (CLUSTER), then dials every node with a short timeout
/// and asks it LEADER and DESCRIBE (atoll nodes: STATUS), to show which nodes answer. Columns:
/// id, address, role (voter, standby or spare), leader (yes/no), reachable (yes/no), applied
/// (the node's applied Raft index), corrupt (its databases found corrupt, refusing writes),
/// repairing (yes while it is rebuilt from the leader after finding its data damaged); the
/// last three from atoll nodes only, `-` for dqlite nodes and nodes that do not answer.
///
/// When no leader can be found, the configuration is read from any node that answers, the
/// table is printed with no leader, and the command fails.
///
/// Example: atoll cluster --cluster 127.0.0.1:9001,127.0.0.1:9002 --format json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Output format: table, csv, or json (an array of objects: id, address, role, leader,
    /// reachable, applied_index (null when unknown)).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "table",
        hide_possible_values = true
    )]
    pub format: Format,
}

/// Time to dial and question one node for the reachability column.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One row of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The configuration entry.
    pub node: NodeInfo,
    /// Whether it is the leader.
    pub leader: bool,
    /// Whether it answered LEADER and DESCRIBE in time, or why not.
    pub reachable: Result<(), String>,
    /// The node's applied index (atoll nodes only).
    pub applied_index: Option<u64>,
    /// How many of its databases are corrupt and refuse writes (atoll nodes only).
    pub corrupt_databases: Option<u64>,
    /// Whether it is being rebuilt from the leader after finding its data damaged (atoll nodes
    /// only).
    pub repairing: Option<bool>,
}

/// Dials `address` and asks LEADER and DESCRIBE. An atoll node (it accepts atoll's version
/// word) is asked STATUS, which carries DESCRIBE format 1 (its applied index) and whether it is
/// repairing; any other node DESCRIBE format 0, the only one dqlite survives.
fn probe(address: &str, tls: Option<&TlsContext>) -> Result<Option<(NodeMetadata, bool)>, String> {
    let config = probe_config(PROBE_TIMEOUT, PROBE_TIMEOUT, tls);
    if let Some(mut connection) = Connection::connect_atoll(address, &config).map_err(node_words)? {
        let status = connection.status().map_err(node_words)?;
        return Ok(Some((status.metadata, status.repairing)));
    }
    let mut connection = Connection::connect(address, &config).map_err(node_words)?;
    connection.leader().map_err(node_words)?;
    connection.describe().map_err(node_words)?;
    Ok(None)
}

/// Probes every node at once, so unreachable nodes cost one timeout in all.
fn probe_all(
    nodes: &[NodeInfo],
    leader_id: Option<u64>,
    tls: Option<&TlsContext>,
) -> Vec<NodeStatus> {
    let answers = probe_each(nodes, |node| probe(&node.address, tls));
    nodes
        .iter()
        .zip(answers)
        .map(|(node, probe)| {
            let answer = probe.as_ref().ok().copied().flatten();
            let metadata = answer.map(|(metadata, _)| metadata);
            NodeStatus {
                node: node.clone(),
                leader: Some(node.id) == leader_id,
                applied_index: metadata.map(|m| m.applied_index),
                corrupt_databases: metadata.map(|m| m.corrupt_databases),
                repairing: answer.map(|(_, repairing)| repairing),
                reachable: probe.map(|_| ()),
            }
        })
        .collect()
}

/// The configuration as the leader knows it, with every node probed.
pub fn collect(client: &mut Client) -> Result<Vec<NodeStatus>, ClientError> {
    let nodes = client.cluster()?;
    let leader_id = client.leader()?.map(|(id, _)| id);
    Ok(probe_all(&nodes, leader_id, client.config().tls.as_ref()))
}

/// The configuration from the first node that answers CLUSTER, when there is no leader.
fn collect_without_leader(args: &ClusterArgs) -> Option<Vec<NodeStatus>> {
    let config = probe_config(PROBE_TIMEOUT, PROBE_TIMEOUT, args.tls_context.as_ref());
    args.cluster.iter().find_map(|address| {
        let nodes = Connection::connect(address, &config)
            .and_then(|mut c| c.cluster())
            .ok()?;
        (!nodes.is_empty()).then(|| probe_all(&nodes, None, args.tls_context.as_ref()))
    })
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// Writes the listing in `format` (CSV is written like the shell's tables, as CSV).
pub fn write(out: &mut impl Write, nodes: &[NodeStatus], format: Format) -> io::Result<()> {
    match format {
        Format::Json => {
            let objects: Vec<String> = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{{\"id\":{},\"address\":{},\"role\":{},\"leader\":{},\"reachable\":{},\
                         \"applied_index\":{},\"corrupt_databases\":{},\"repairing\":{}}}",
                        n.node.id,
                        output::json_string(&n.node.address),
                        output::json_string(role_name(n.node.role)),
                        n.leader,
                        n.reachable.is_ok(),
                        n.applied_index
                            .map_or("null".to_owned(), |index| index.to_string()),
                        n.corrupt_databases
                            .map_or("null".to_owned(), |count| count.to_string()),
                        n.repairing
                            .map_or("null".to_owned(), |repairing| repairing.to_string())
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
                "leader",
                "reachable",
                "applied",
                "corrupt",
                "repairing",
            ]
            .iter()
            .map(|c| c.to_string())
            .collect();
            let rows: Vec<Vec<Value>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        Value::Text(n.node.id.to_string()),
                        Value::Text(n.node.address.clone()),
                        Value::Text(role_name(n.node.role).into()),
                        Value::Text(yes_no(n.leader).into()),
                        Value::Text(match &n.reachable {
                            Ok(()) => "yes".into(),
                            Err(why) => format!("no ({why})"),
                        }),
                        Value::Text(
                            n.applied_index
                                .map_or("-".to_owned(), |index| index.to_string()),
                        ),
                        Value::Text(
                            n.corrupt_databases
                                .map_or("-".to_owned(), |count| count.to_string()),
                        ),
                        Value::Text(n.repairing.map_or("-", yes_no).into()),
                    ]
                })
                .collect();
            output::write_table_or_csv(out, &columns, &rows, format)
        }
    }
}

/// Runs `atoll cluster`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    let mut client = match connect(&args.cluster) {
        Ok(client) => client,
        Err(no_leader) => {
            // Show what can be seen without a leader: that is when the listing matters most.
            if let Some(nodes) = collect_without_leader(&args.cluster) {
                write(&mut stdout, &nodes, args.format)?;
                stdout.flush()?;
            }
            return Err(no_leader);
        }
    };
    let nodes = collect(&mut client).map_err(|e| configuration_error(&e))?;
    write(&mut stdout, &nodes, args.format)?;
    stdout.flush()?;
    Ok(())
}
