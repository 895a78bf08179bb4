//! `atoll verify`: are the replicas of each database identical?

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::Connection;
use atoll_net::protocol::{Role, Value, VerifyState};
use atoll_net::tls::TlsContext;

use super::{configuration, connect, explain, node_words, probe_config, CliError, ClusterArgs};
use crate::output::{self, Format};

/// How often a node that has not finished is asked again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Check that every replica holds the same databases.
///
/// Asks the leader to place a verify point in the Raft log. Every voter and standby computes,
/// when it applies that entry, a checksum (crc32 of every page) of each database as of that
/// index, so the answers are comparable even while writes go on. Prints one row per node and
/// database: node, db, index, checksum, verdict. The verdict compares each checksum with the one
/// most nodes have: `ok`, `MISMATCH` (the node's copy differs: repair it), `missing` (the node
/// lacks a database the others have) or why the node could not answer. Exits non-zero on any
/// mismatch, missing database or node that did not answer within --timeout. With --repair,
/// each node outvoted on a database is told to rebuild itself from the leader.
///
/// Example: atoll verify --cluster 127.0.0.1:9001 app --repair
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The database to verify (default: every database).
    #[arg(value_name = "DB")]
    pub database: Option<String>,

    /// Tell each node whose copy differs from the one most nodes hold (more than half of those
    /// that answered) to repair itself: it stops (a leader hands over first), moves its data
    /// to `DIR/quarantine/<time>/` and is rebuilt from the leader. Needs atoll's `start`.
    #[arg(long)]
    pub repair: bool,

    /// Output format: table, csv, or json (an array of objects: node, address, db, index,
    /// pages, checksum, verdict).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "table",
        hide_possible_values = true
    )]
    pub format: Format,
}

/// One node's answer: its checksums per database, or why there are none.
type Answer = Result<BTreeMap<String, (u64, u64)>, String>;

/// Asks node `address` for its checksums at `index` until it has them or `deadline` passes.
fn ask(
    address: &str,
    tls: Option<&TlsContext>,
    index: u64,
    database: &str,
    deadline: Instant,
) -> Answer {
    let config = probe_config(Duration::from_secs(2), Duration::from_secs(5), tls);
    let mut connection = Connection::connect(address, &config).map_err(node_words)?;
    loop {
        let answer = connection
            .verify(index, database)
            .map_err(|e| explain(&e))?;
        match answer.state {
            VerifyState::Done => {
                return Ok(answer
                    .databases
                    .into_iter()
                    .map(|d| (d.name, (d.pages, d.checksum)))
                    .collect())
            }
            VerifyState::Unavailable => {
                return Err(format!(
                    "skipped the verify point (applied {}): run verify again",
                    answer.applied_index
                ))
            }
            VerifyState::Pending if Instant::now() >= deadline => {
                return Err(format!(
                    "not done in time (applied {} of {index})",
                    answer.applied_index
                ))
            }
            VerifyState::Pending => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// One row of the report.
struct Row {
    node: u64,
    address: String,
    database: String,
    pages: Option<u64>,
    checksum: Option<u64>,
    verdict: String,
    /// The value this row differs from is held by more than half of the nodes that answered:
    /// this copy is the damaged one.
    outvoted: bool,
}

/// The rows for every node's answer, and whether all agree.
fn compare(answers: &[(u64, String, Answer)]) -> (Vec<Row>, bool) {
    let mut names: Vec<&String> = answers
        .iter()
        .filter_map(|(_, _, a)| a.as_ref().ok())
        .flat_map(|a| a.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut rows = Vec::new();
    let mut healthy = true;
    for (node, address, answer) in answers {
        let answered = answers.iter().filter(|(_, _, a)| a.is_ok()).count();
        let Ok(checksums) = answer else {
            healthy = false;
            rows.push(Row {
                node: *node,
                address: address.clone(),
                database: "-".into(),
                pages: None,
                checksum: None,
                verdict: format!(
                    "no answer ({})",
                    answer.as_ref().err().unwrap_or(&String::new())
                ),
                outvoted: false,
            });
            continue;
        };
        for name in &names {
            // The value most nodes hold (ties: the smallest, so every run picks the same).
            let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
            for (_, _, other) in answers {
                if let Some(value) = other.as_ref().ok().and_then(|a| a.get(*name)) {
                    *votes.entry(*value).or_default() += 1;
                }
            }
            let best = votes.values().copied().max().unwrap_or(0);
            let majority: Vec<(u64, u64)> = votes
                .iter()
                .filter(|(_, n)| **n == best)
                .map(|(v, _)| *v)
                .collect();
            let mine = checksums.get(*name);
            let verdict = match mine {
                None => "missing",
                Some(value) if majority.len() == 1 && majority[0] == *value => "ok",
                Some(_) => "MISMATCH",
            };
            healthy &= verdict == "ok";
            rows.push(Row {
                node: *node,
                address: address.clone(),
                database: (*name).clone(),
                pages: mine.map(|(pages, _)| *pages),
                checksum: mine.map(|(_, checksum)| *checksum),
                verdict: verdict.to_owned(),
                outvoted: verdict == "MISMATCH" && majority.len() == 1 && best * 2 > answered,
            });
        }
    }
    (rows, healthy)
}

fn write(out: &mut impl Write, index: u64, rows: &[Row], format: Format) -> io::Result<()> {
    let text = |v: Option<u64>, hex: bool| match v {
        Some(v) if hex => format!("{v:08x}"),
        Some(v) => v.to_string(),
        None => "-".to_owned(),
    };
    match format {
        Format::Json => {
            let objects: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{{\"node\":{},\"address\":{},\"db\":{},\"index\":{index},\"pages\":{},\
                         \"checksum\":{},\"verdict\":{}}}",
                        r.node,
                        output::json_string(&r.address),
                        output::json_string(&r.database),
                        r.pages.map_or("null".into(), |p| p.to_string()),
                        r.checksum
                            .map_or("null".into(), |c| output::json_string(&format!("{c:08x}"))),
                        output::json_string(&r.verdict)
                    )
                })
                .collect();
            writeln!(out, "[{}]", objects.join(",\n"))
        }
        Format::Table | Format::Csv => {
            let columns: Vec<String> = [
                "node", "address", "db", "index", "pages", "checksum", "verdict",
            ]
            .iter()
            .map(|c| c.to_string())
            .collect();
            let values: Vec<Vec<Value>> = rows
                .iter()
                .map(|r| {
                    vec![
                        Value::Text(r.node.to_string()),
                        Value::Text(r.address.clone()),
                        Value::Text(r.database.clone()),
                        Value::Text(index.to_string()),
                        Value::Text(text(r.pages, false)),
                        Value::Text(text(r.checksum, true)),
                        Value::Text(r.verdict.clone()),
                    ]
                })
                .collect();
            output::write_table_or_csv(out, &columns, &values, format)
        }
    }
}

/// Runs `atoll verify`.
pub fn run(args: Args) -> Result<(), CliError> {
    let database = args.database.clone().unwrap_or_default();
    let mut client = connect(&args.cluster)?;
    let nodes = configuration(&mut client)?;
    let index = client
        .verify_point(&database)
        .map_err(|e| CliError::new(format!("placing a verify point: {}", explain(&e))))?;
    let deadline = Instant::now() + args.cluster.timeout;
    let replicas: Vec<_> = nodes
        .iter()
        .filter(|n| matches!(n.role, Some(Role::Voter | Role::Standby)))
        .collect();
    let answers: Vec<(u64, String, Answer)> = thread::scope(|scope| {
        let asks: Vec<_> = replicas
            .iter()
            .map(|node| {
                let database = &database;
                let tls = args.cluster.tls_context.as_ref();
                scope.spawn(move || ask(&node.address, tls, index, database, deadline))
            })
            .collect();
        replicas
            .iter()
            .zip(asks)
            .map(|(node, ask)| {
                let answer = ask.join().unwrap_or_else(|_| Err("failed".into()));
                (node.id, node.address.clone(), answer)
            })
            .collect()
    });
    let (rows, healthy) = compare(&answers);
    let mut stdout = io::stdout().lock();
    write(&mut stdout, index, &rows, args.format)?;
    stdout.flush()?;
    if rows.is_empty() {
        return Err(CliError::new(if database.is_empty() {
            "the cluster holds no database".to_owned()
        } else {
            format!("there is no database named {database:?} on the cluster")
        }));
    }
    if !healthy && args.repair {
        for row in rows.iter().filter(|r| r.outvoted) {
            let config = args.cluster.client_config();
            let asked = Connection::connect(&row.address, &config)
                .and_then(|mut c| c.repair(&row.database));
            match asked {
                Ok(()) => eprintln!(
                    "node {} ({}) repairs itself: its copy of {:?} is moved aside and rebuilt \
                     from the leader",
                    row.node, row.address, row.database
                ),
                Err(e) => eprintln!(
                    "node {} ({}) could not be asked to repair itself: {}",
                    row.node,
                    row.address,
                    explain(&e)
                ),
            }
        }
    }
    if !healthy {
        return Err(CliError::new(format!(
            "the replicas differ at index {index} (see the verdicts above)"
        )));
    }
    Ok(())
}
