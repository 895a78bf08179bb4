//! Data-driven interaction tests (etcd's `interaction_test.go` style): each file in
//! `tests/testdata/` is a script of commands, each followed by `----` and the transcript it
//! must produce. `REWRITE=1 cargo test -p atoll-raft --test t20_interaction` regenerates the
//! transcripts; review the diff before committing it.
//!
//! Commands (node ids are numbers; the first argument of a request is the node asked):
//! `add-nodes IDS.. [classic|no-pre-vote|small]`, `campaign N`, `stabilize`, `process N`,
//! `deliver [N]`, `tick N [COUNT]`, `propose N DATA`, `put N KEY VALUE`, `isolate N`, `heal`,
//! `crash N`, `restart N`, `status`, `log N`, `add N ID ROLE`, `assign N ID ROLE`,
//! `remove N ID`, `transfer N [ID]`, `read-index N CONTEXT`, `read-states N`, `snapshot N`,
//! `disk-stall N`, `disk-release N`, `connection-closed N FROM` (N's connection with FROM was
//! closed by FROM).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use atoll_raft::message::DisplayEntries;
use atoll_raft::sim::network::Network;
use atoll_raft::{Config, MemberRole, NodeId};
use atoll_storage::{LogRead, MemLog};

fn classic(config: &mut Config) {
    config.pre_vote = false;
    config.check_quorum = false;
}

fn no_pre_vote(config: &mut Config) {
    config.pre_vote = false;
}

fn small(config: &mut Config) {
    config.append_entries_max = 2;
    config.snapshot_chunk_bytes = 16;
    config.snapshot_chunks_inflight_max = 2;
    config.snapshot_trailing_entries = 0;
}

fn plain(_: &mut Config) {}

fn role(name: &str) -> MemberRole {
    match name {
        "voter" => MemberRole::Voter,
        "standby" => MemberRole::Standby,
        "spare" => MemberRole::Spare,
        other => panic!("unknown role {other:?}"),
    }
}

struct Runner {
    network: Option<Network>,
}

impl Runner {
    fn network(&mut self) -> &mut Network {
        self.network.as_mut().expect("add-nodes first")
    }

    fn run(&mut self, command: &str) -> String {
        let words: Vec<&str> = command.split_whitespace().collect();
        let number = |position: usize| -> u64 {
            words
                .get(position)
                .unwrap_or_else(|| panic!("{command}: argument {position} missing"))
                .parse()
                .unwrap_or_else(|_| panic!("{command}: argument {position} is not a number"))
        };
        match words[0] {
            "add-nodes" => {
                let ids: Vec<u64> = words[1..].iter().filter_map(|w| w.parse().ok()).collect();
                let configure = match words.last().copied() {
                    Some("classic") => classic,
                    Some("no-pre-vote") => no_pre_vote,
                    Some("small") => small,
                    _ => plain,
                };
                self.network = Some(Network::with_config(&ids, configure));
                "ok\n".to_string()
            }
            "campaign" => result(self.network().node_mut(number(1)).campaign()),
            "stabilize" => self.network().stabilize(),
            "process" => self.network().process(number(1)),
            "deliver" => {
                let to = words.get(1).map(|_| number(1));
                self.network().deliver(to)
            }
            "tick" => {
                let count = if words.len() > 2 { number(2) as u32 } else { 1 };
                self.network().tick(number(1), count)
            }
            "propose" => {
                let data = words[2..].join(" ");
                match self.network().propose(number(1), data.as_bytes()) {
                    Ok(index) => format!("index {index}\n"),
                    Err(error) => format!("error: {error}\n"),
                }
            }
            "put" => match self.network().put(number(1), number(2), number(3)) {
                Ok(index) => format!("index {index}\n"),
                Err(error) => format!("error: {error}\n"),
            },
            "isolate" => {
                self.network().isolate(number(1));
                "ok\n".to_string()
            }
            "heal" => {
                self.network().heal();
                "ok\n".to_string()
            }
            "crash" => {
                self.network().crash(number(1));
                "ok\n".to_string()
            }
            "restart" => {
                self.network().restart(number(1));
                "ok\n".to_string()
            }
            "status" => self.network().status(),
            "log" => {
                let node = self.network().node(number(1));
                let log = node.log();
                let mut entries = Vec::new();
                if log.first_index() <= log.last_index() {
                    log.entries(
                        log.first_index(),
                        log.last_index().next(),
                        u64::MAX,
                        &mut entries,
                    )
                    .expect("memory");
                }
                format!(
                    "first={} last={} {}\n",
                    log.first_index(),
                    log.last_index(),
                    DisplayEntries(&entries)
                )
            }
            "add" => {
                let id = NodeId(number(2));
                let network = self.network();
                if !network.nodes.contains_key(&id) {
                    network.add_node(id, MemLog::new());
                }
                let address = format!("n{}", id.0);
                result(
                    network
                        .node_mut(number(1))
                        .add(id, &address, role(words[3])),
                )
            }
            "assign" => {
                let id = NodeId(number(2));
                result(
                    self.network()
                        .node_mut(number(1))
                        .assign(id, role(words[3])),
                )
            }
            "remove" => {
                let id = NodeId(number(2));
                result(self.network().node_mut(number(1)).remove(id))
            }
            "transfer" => {
                let target = words.get(2).map(|_| NodeId(number(2)));
                match self
                    .network()
                    .node_mut(number(1))
                    .transfer_leadership(target)
                {
                    Ok(id) => format!("transferring to {id}\n"),
                    Err(error) => format!("error: {error}\n"),
                }
            }
            "read-index" => result(self.network().node_mut(number(1)).read_index(number(2))),
            "read-states" => {
                let id = NodeId(number(1));
                let mut out = String::new();
                for read in &self.network().nodes[&id].read_states {
                    let _ = writeln!(out, "index={} context={}", read.index, read.context);
                }
                out
            }
            "snapshot" => {
                self.network().snapshot(number(1));
                let meta = self
                    .network()
                    .node(number(1))
                    .snapshot_meta()
                    .expect("taken")
                    .clone();
                format!(
                    "snapshot {}/{} size={}\n",
                    meta.term, meta.index, meta.size_bytes
                )
            }
            "disk-stall" => {
                let id = NodeId(number(1));
                self.network()
                    .nodes
                    .get_mut(&id)
                    .expect("node")
                    .disk_stalled = true;
                "ok\n".to_string()
            }
            "connection-closed" => {
                let from = NodeId(number(2));
                self.network()
                    .node_mut(number(1))
                    .leader_connection_closed(from);
                "ok\n".to_string()
            }
            "disk-release" => {
                self.network().release_disk(number(1));
                "ok\n".to_string()
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

fn result(outcome: Result<(), atoll_raft::Error>) -> String {
    match outcome {
        Ok(()) => "ok\n".to_string(),
        Err(error) => format!("error: {error}\n"),
    }
}

/// Runs one script; returns the file as it should read (commands with their transcripts).
fn run_script(text: &str) -> (String, Vec<String>) {
    let mut runner = Runner { network: None };
    let mut rewritten = String::new();
    let mut mismatches = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        let command = line.trim();
        assert_eq!(
            lines.next(),
            Some("----"),
            "`----` expected after {command:?}"
        );
        let mut expected = String::new();
        while let Some(next) = lines.peek() {
            if next.is_empty() {
                break;
            }
            expected.push_str(next);
            expected.push('\n');
            lines.next();
        }
        let mut actual = runner.run(command);
        if actual.is_empty() {
            actual = "ok\n".to_string();
        }
        if actual != expected {
            mismatches.push(format!(
                "command {command:?}\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
        let _ = write!(rewritten, "{command}\n----\n{actual}");
    }
    (rewritten, mismatches)
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

#[test]
fn test_interaction_scripts() {
    let rewrite = std::env::var_os("REWRITE").is_some();
    let mut paths: Vec<PathBuf> = fs::read_dir(testdata())
        .expect("tests/testdata exists")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "expected at least three scripts");
    let mut failures = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path).expect("script");
        let (rewritten, mismatches) = run_script(&text);
        if rewrite {
            fs::write(&path, rewritten).expect("rewrite");
        } else if !mismatches.is_empty() {
            failures.push(format!("{}:\n{}", path.display(), mismatches.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "transcripts differ (REWRITE=1 regenerates them):\n{}",
        failures.join("\n")
    );
}
