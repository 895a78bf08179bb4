//! The client's leader discovery and retry rules against two scripted nodes built from the
//! reactor: which node leads is a shared variable the test flips, so every failover case is
//! deterministic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use atoll_net::client::{Client, ClientConfig, ClientError};
use atoll_net::protocol::{Request, Response, Rows, RowsEnd, Value};
use atoll_net::reactor::{Event, Reactor, ReactorConfig};

/// Index of the leading node; `NO_LEADER` when none leads.
const NO_LEADER: usize = usize::MAX;

struct Cluster {
    addresses: Vec<String>,
    leader: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Two scripted nodes. LEADER names the leading node's address (or ""); OPEN and CLIENT
    /// succeed everywhere; EXEC_SQL and QUERY_SQL on a non-leader answer 10250 "not leader"; on
    /// the leader, EXEC_SQL "LOST" answers 10506, "CRASH" closes the connection, anything else
    /// RESULT(node + 1, 1); QUERY_SQL answers one row holding node + 1.
    fn start() -> Cluster {
        let leader = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut reactors = Vec::new();
        for _ in 0..2 {
            let reactor =
                Reactor::bind("127.0.0.1:0".parse().unwrap(), ReactorConfig::default()).unwrap();
            reactors.push(reactor);
        }
        let addresses: Vec<String> = reactors
            .iter()
            .map(|r| r.local_addr().unwrap().to_string())
            .collect();
        let mut threads = Vec::new();
        for (index, mut reactor) in reactors.into_iter().enumerate() {
            let leader = leader.clone();
            let stop = stop.clone();
            let addresses = addresses.clone();
            threads.push(std::thread::spawn(move || {
                serve(&mut reactor, index, &addresses, &leader, &stop)
            }));
        }
        Cluster {
            addresses,
            leader,
            stop,
            threads,
        }
    }

    fn set_leader(&self, index: usize) {
        self.leader.store(index, Ordering::SeqCst);
    }

    fn config(&self) -> ClientConfig {
        ClientConfig {
            leader_timeout: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(10),
            ..ClientConfig::default()
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

fn serve(
    reactor: &mut Reactor,
    index: usize,
    addresses: &[String],
    leader: &AtomicUsize,
    stop: &AtomicBool,
) {
    let mut events = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        reactor
            .poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for event in events.drain(..) {
            let Event::Request { conn, request } = event else {
                continue;
            };
            let leading = leader.load(Ordering::SeqCst);
            let response = match request {
                Request::Leader if leading == NO_LEADER => Response::Server {
                    id: 0,
                    address: String::new(),
                },
                Request::Leader => Response::Server {
                    id: leading as u64 + 1,
                    address: addresses[leading].clone(),
                },
                Request::Client { .. } => Response::Welcome {
                    heartbeat_timeout_ms: 15000,
                },
                Request::Open { .. } => Response::Db { id: 0 },
                Request::ExecSql { .. } if leading != index => {
                    Response::failure(10250, "not leader")
                }
                Request::ExecSql { sql, .. } if sql == "LOST" => {
                    Response::failure(10506, "leadership lost")
                }
                Request::ExecSql { sql, .. } if sql == "CRASH" => {
                    reactor.close(conn);
                    continue;
                }
                Request::QuerySql { .. } if leading != index => {
                    Response::failure(10250, "not leader")
                }
                Request::QuerySql { .. } => Response::Rows(Rows {
                    columns: vec!["node".into()],
                    rows: vec![vec![Value::Integer(index as i64 + 1)]],
                    end: RowsEnd::Done,
                }),
                Request::ExecSql { .. } => Response::Result {
                    last_insert_id: index as u64 + 1,
                    rows_affected: 1,
                },
                _ => Response::Empty,
            };
            let _ = reactor.send(conn, &response);
        }
    }
}

#[test]
fn test_client_follows_the_leader_named_by_a_follower() {
    // Given only the follower's address, the client asks it, dials the named leader, and
    // checks that the leader names itself.
    let cluster = Cluster::start();
    cluster.set_leader(1);
    let client = Client::connect(&[&cluster.addresses[0]], cluster.config()).unwrap();
    assert_eq!(client.leader_address(), Some(cluster.addresses[1].as_str()));
}

#[test]
fn test_not_leader_is_retried_on_the_new_leader() {
    // Leadership moves from node 0 to node 1 between two writes: the second write gets
    // "not leader" from node 0, and the client rediscovers node 1, reopens the database and
    // resends; the caller only sees the success.
    let cluster = Cluster::start();
    let mut client = Client::connect(&cluster.addresses, cluster.config()).unwrap();
    client.open("db").unwrap();
    assert_eq!(client.exec_sql("INSERT 1", &[]).unwrap().last_insert_id, 1);
    cluster.set_leader(1);
    assert_eq!(client.exec_sql("INSERT 2", &[]).unwrap().last_insert_id, 2);
    assert_eq!(client.leader_address(), Some(cluster.addresses[1].as_str()));
}

#[test]
fn test_streamed_query_is_retried_on_the_new_leader() {
    // A streamed query's "not leader" answer arrives before any row, so nothing ran: the client
    // finds the new leader and resends, as for every other request. (Before this was retried,
    // every streamed query on a connection to a deposed leader kept failing.)
    let cluster = Cluster::start();
    let mut client = Client::connect(&cluster.addresses, cluster.config()).unwrap();
    client.open("db").unwrap();
    let rows: Vec<_> = client.query_sql_rows("SELECT", &[]).unwrap().collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].as_ref().unwrap(), &vec![Value::Integer(1)]);
    cluster.set_leader(1);
    let iter = client.query_sql_rows("SELECT", &[]).unwrap();
    assert_eq!(iter.columns(), ["node".to_string()]);
    let rows: Vec<_> = iter.map(Result::unwrap).collect();
    assert_eq!(rows, vec![vec![Value::Integer(2)]]);
    assert_eq!(client.leader_address(), Some(cluster.addresses[1].as_str()));
}

#[test]
fn test_not_leader_inside_a_transaction_is_not_retried() {
    // The transaction lives on the old leader's connection: resending its next statement
    // elsewhere would run it outside the transaction, so the caller gets the failure.
    let cluster = Cluster::start();
    let mut client = Client::connect(&cluster.addresses, cluster.config()).unwrap();
    client.open("db").unwrap();
    client.exec_sql("BEGIN", &[]).unwrap();
    cluster.set_leader(1);
    let error = client.exec_sql("INSERT 1", &[]).unwrap_err();
    assert!(error.is_not_leader(), "{error}");
    // The next call starts afresh on the new leader.
    assert_eq!(client.exec_sql("INSERT 2", &[]).unwrap().last_insert_id, 2);
}

#[test]
fn test_unknown_outcomes_are_reported_not_retried() {
    // Leadership lost mid-write, and a connection that breaks after the write was sent: the
    // write may have happened, so the client says so instead of resending it.
    let cluster = Cluster::start();
    let mut client = Client::connect(&cluster.addresses, cluster.config()).unwrap();
    client.open("db").unwrap();
    match client.exec_sql("LOST", &[]) {
        Err(ClientError::OutcomeUnknown(inner)) => assert!(inner.is_leadership_lost()),
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    match client.exec_sql("CRASH", &[]) {
        Err(ClientError::OutcomeUnknown(inner)) => {
            assert!(matches!(*inner, ClientError::Io(_)), "{inner}")
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    // The client reconnects for the next call.
    assert!(client.exec_sql("INSERT", &[]).is_ok());
}

#[test]
fn test_no_leader_fails_after_the_deadline() {
    // No node knows a leader: discovery retries with backoff, then gives up with what it saw.
    let cluster = Cluster::start();
    cluster.set_leader(NO_LEADER);
    let unreachable: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let addresses = [
        cluster.addresses[0].clone(),
        cluster.addresses[1].clone(),
        unreachable.to_string(),
    ];
    match Client::connect(&addresses, cluster.config()) {
        Err(ClientError::NoLeader { attempts }) => {
            assert!(attempts.iter().any(|a| a.contains("knows no leader")));
            assert!(attempts.iter().any(|a| a.contains("127.0.0.1:1")));
        }
        other => panic!("expected NoLeader, got {other:?}"),
    }
}
