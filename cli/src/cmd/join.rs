//! `atoll join`: prepares a node that joins an existing cluster.

use std::path::PathBuf;
use std::time::Duration;

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::peer;
use atoll_net::tls::TlsContext;

use super::{explain, parse_address, parse_node_id, CliError, NodeSettings};
use atoll_node::secret::JoinToken;
use atoll_node::{self as node, config::NodeConfig};

/// Prepare a node that joins a running cluster.
///
/// Asks a node of the cluster (any of --cluster) for its members, checks that the id and
/// address are free, checks that the join token is the cluster's (a node of the cluster proves
/// it holds the token's secret, for the token's cluster id), and sets up DIR: atoll.conf (with
/// the cluster id and the addresses to join through), cluster.secret and an empty Raft log.
/// Then run it with `atoll start --data-dir DIR`: at its
/// first start it asks the leader to add it (as a spare, as dqlite does), the leader promotes it
/// as the cluster needs (automatic roles: 3 voters, then up to 3 standbys), and it catches up
/// from the log, or from a snapshot when the log was compacted.
///
/// The join token comes from `atoll init` (it prints it) or `atoll token --data-dir DIR` on a
/// node of the cluster; it is a credential, so prefer --join-token-file on shared machines
/// (a command line is visible to other users).
///
/// A TLS cluster (`atoll init --tls`) needs its certificate and key too: copy cluster.crt and
/// cluster.key from a member's data directory (or `atoll cert --out-dir`) and give them as
/// --tls-cert and --tls-key (and --tls-ca if the cluster has one); they are copied into DIR.
///
/// Example:
///   atoll join --data-dir /var/lib/atoll --address 127.0.0.1:9002 --cluster 127.0.0.1:9001 \
///     --join-token-file /root/atoll.token
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory to create (it must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The address to listen on and advertise, HOST:PORT (exactly as clients will dial it).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    pub address: String,

    /// Addresses of one or more nodes of the cluster to join, comma-separated.
    #[arg(
        short = 'c',
        long,
        value_name = "HOST:PORT[,...]",
        value_delimiter = ',',
        required = true,
        value_parser = parse_address
    )]
    pub cluster: Vec<String>,

    /// The cluster's join token (`atoll1-...`, from `atoll init` or `atoll token`).
    #[arg(
        long,
        value_name = "TOKEN",
        required_unless_present = "join_token_file"
    )]
    pub join_token: Option<String>,

    /// A file holding the join token.
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,

    /// This node's id (decimal, or hexadecimal with 0x); default: a random one.
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub id: Option<u64>,

    #[command(flatten)]
    pub settings: NodeSettings,

    #[command(flatten)]
    pub tls: super::TlsArgs,
}

/// What `atoll join` learns from the cluster.
struct ClusterFacts {
    members: Vec<(u64, String)>,
}

/// Asks the first atoll node of `addresses` that answers for the members.
fn ask_cluster(addresses: &[String], tls: Option<&TlsContext>) -> Result<ClusterFacts, CliError> {
    let config = ClientConfig {
        tls: tls.cloned(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let mut problems = Vec::new();
    for address in addresses {
        match Connection::connect_atoll(address, &config) {
            Ok(Some(mut connection)) => {
                let facts = connection.cluster().map(|nodes| ClusterFacts {
                    members: nodes.into_iter().map(|n| (n.id, n.address)).collect(),
                });
                match facts {
                    Ok(facts) => return Ok(facts),
                    Err(e) => problems.push(format!("{address}: {}", explain(&e))),
                }
            }
            Ok(None) => problems.push(format!(
                "{address} is not an atoll node (a dqlite node? atoll joins atoll clusters)"
            )),
            Err(e) => problems.push(format!("{address}: {}", explain(&e))),
        }
    }
    Err(CliError::new(format!(
        "cannot learn the cluster from {}: {}; is the cluster running (`atoll start`)?",
        addresses.join(","),
        problems.join("; ")
    )))
}

/// Time the token check waits for a member's CHALLENGE.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks the token against the cluster: dials a member as a peer would, with a hello for the
/// token's cluster id, and verifies the member's CHALLENGE (its proof of the secret). Nothing is
/// sent after the hello, so the member never accepts this connection.
fn check_token(
    members: &[(u64, String)],
    id: u64,
    address: &str,
    token: &JoinToken,
    tls: Option<&TlsContext>,
) -> Result<(), CliError> {
    let mut problems = Vec::new();
    for (member, at) in members {
        match probe(*member, at, id, address, token, tls) {
            Ok(()) => return Ok(()),
            Err(problem) => problems.push(format!("node {member} at {at}: {problem}")),
        }
    }
    Err(CliError::new(format!(
        "the join token was not accepted by the cluster: {}",
        problems.join("; ")
    )))
}

fn probe(
    member: u64,
    at: &str,
    id: u64,
    address: &str,
    token: &JoinToken,
    tls: Option<&TlsContext>,
) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let target = at
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("resolves to no address")?;
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    match tls {
        None => probe_over(&mut stream, member, id, address, token),
        Some(tls) => {
            let session = tls.client_connection().map_err(|e| e.to_string())?;
            let mut stream = rustls::StreamOwned::new(session, stream);
            probe_over(&mut stream, member, id, address, token)
        }
    }
}

/// The probe's exchange on a connected stream (plaintext or TLS).
fn probe_over(
    stream: &mut (impl std::io::Read + std::io::Write),
    member: u64,
    id: u64,
    address: &str,
    token: &JoinToken,
) -> Result<(), String> {
    let mut nonce = [0u8; peer::NONCE_BYTES];
    peer::os_random(&mut nonce).map_err(|e| format!("drawing a nonce: {e}"))?;
    let hello = peer::Hello {
        from: id,
        to: member,
        cluster_id: token.cluster_id,
        incarnation: node::config::random_u64() | 1,
        nonce,
        address: address.to_owned(),
    };
    let mut bytes = peer::PEER_MAGIC_V1.to_le_bytes().to_vec();
    hello.encode(&mut bytes);
    stream
        .write_all(&bytes)
        .and_then(|()| stream.flush())
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; peer::FRAME_HEADER_BYTES + peer::CHALLENGE_BYTES];
    if let Err(e) = stream.read_exact(&mut answer) {
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "it refused the hello: the token is for another cluster (or the node runs an \
                 atoll without peer authentication)"
                    .to_owned()
            }
            _ => format!("no answer to the hello: {e}"),
        });
    }
    let header = peer::FrameHeader::decode(
        *answer
            .first_chunk::<{ peer::FRAME_HEADER_BYTES }>()
            .expect("the answer has a header"),
        0,
    )
    .map_err(|e| format!("it broke the peer protocol: {e}"))?;
    if header.kind != peer::FrameKind::Challenge {
        return Err(format!("it answered the hello with {:?}", header.kind));
    }
    let hello_payload = &bytes[8 + peer::FRAME_HEADER_BYTES..];
    peer::verify_challenge(
        &token.secret,
        hello_payload,
        &answer[peer::FRAME_HEADER_BYTES..],
    )
    .map_err(|_| "the token's secret is not this cluster's".to_owned())?;
    Ok(())
}

/// The token from --join-token or --join-token-file.
fn read_token(args: &Args) -> Result<JoinToken, CliError> {
    let text = match (&args.join_token, &args.join_token_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| CliError::new(format!("reading {}: {e}", path.display())))?,
        (None, None) => return Err(CliError::new("a join token is needed (--join-token)")),
    };
    JoinToken::parse(&text).map_err(CliError::new)
}

/// Runs `atoll join`.
pub fn run(args: Args) -> Result<(), CliError> {
    let address = args.address.trim().to_owned();
    let token = read_token(&args)?;
    let tls = args.tls.context()?;
    let facts = ask_cluster(&args.cluster, tls.as_ref())?;
    let id = match args.id {
        Some(id) => id,
        // Random, non-zero, below 2^63 (some clients keep ids in signed integers).
        None => (node::config::random_u64() >> 1).max(2),
    };
    if let Some((_, at)) = facts.members.iter().find(|(member, _)| *member == id) {
        return Err(CliError::new(format!(
            "node id {id} is already in the cluster (at {at}); pick another --id"
        )));
    }
    if let Some((member, _)) = facts.members.iter().find(|(_, at)| *at == address) {
        return Err(CliError::new(format!(
            "address {address} is already node {member}'s; remove that node first (`atoll \
             remove`) or pick another address"
        )));
    }
    check_token(&facts.members, id, &address, &token, tls.as_ref())?;
    let mut config = NodeConfig::new(id, address);
    config.cluster_id = token.cluster_id;
    config.join = args.cluster.clone();
    args.settings.apply(&mut config)?;
    node::prepare_join(&args.data_dir, &config, &token.secret)
        .map_err(|e| CliError::new(e.to_string()))?;
    if let (Some(cert), Some(key)) = (&args.tls.tls_cert, &args.tls.tls_key) {
        let (cert, key, ca) =
            node::tls::read_given(cert, key, args.tls.tls_ca.as_deref()).map_err(CliError::new)?;
        node::tls::install(&args.data_dir, &cert, &key, ca.as_deref()).map_err(CliError::new)?;
    }
    println!(
        "prepared node {id} at {} in {} to join the cluster {:016x} ({} member(s)); run it \
         with:\n  atoll start --data-dir {}",
        config.address,
        args.data_dir.display(),
        config.cluster_id,
        facts.members.len(),
        args.data_dir.display()
    );
    Ok(())
}
