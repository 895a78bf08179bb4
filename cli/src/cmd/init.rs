//! `atoll init`: sets up the data directory of the first node of a new cluster.

use std::path::PathBuf;

use atoll_net::peer::ClusterSecret;

use super::CliError;
use atoll_node::secret::JoinToken;
use atoll_node::{self as node, config::NodeConfig};

/// Set up a new cluster of one voter: this node, in a new, empty data directory.
///
/// Writes DIR/atoll.conf (the node's id, its address, a random cluster id, and the timing and
/// role settings), DIR/cluster.secret (a random secret every node of the cluster proves it
/// holds before the others accept its messages; both files mode 0600) and a Raft log whose
/// first entry is the cluster configuration with this node as its only voter. Then run the
/// node with `atoll start --data-dir DIR`; add nodes with `atoll join --join-token TOKEN`: the
/// token is printed here, and again by `atoll token --data-dir DIR`. Keep it private.
///
/// --tls makes it a TLS cluster: a self-signed cluster certificate and key (ECDSA P-256,
/// valid for 100 years, DIR/cluster.crt and DIR/cluster.key, 0600) that are every node's
/// identity and trust root, as go-dqlite's app.WithTLS; or give your own with --tls-cert,
/// --tls-key (and --tls-ca). Clients then need them too (`atoll cert`).
///
/// The address is what the node listens on and what it tells clients and other nodes to dial:
/// write it exactly as clients will (127.0.0.1:9001, not localhost:9001 if they use the IP).
///
/// Example:
///   atoll init --data-dir /var/lib/atoll --address 127.0.0.1:9001
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory to create (it must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The address to listen on and advertise, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,

    /// This node's id in the cluster (any number but 0).
    #[arg(long, value_name = "N", default_value = "1", value_parser = super::parse_node_id)]
    pub id: u64,

    #[command(flatten)]
    pub settings: super::NodeSettings,

    /// Serve TLS to clients and peers with a new self-signed cluster certificate.
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls: bool,

    #[command(flatten)]
    pub tls_files: super::TlsArgs,
}

/// Runs `atoll init`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut config = NodeConfig::new(args.id, args.address.trim().to_owned());
    args.settings.apply(&mut config)?;
    let secret = ClusterSecret::generate()
        .map_err(|e| CliError::new(format!("drawing the cluster secret: {e}")))?;
    let tls_files = if args.tls {
        let (cert, key) = atoll_net::tls::generate_cluster_certificate()
            .map_err(|e| CliError::new(format!("TLS: {e}")))?;
        Some((cert.into_bytes(), key.into_bytes(), None))
    } else if let (Some(cert), Some(key)) = (&args.tls_files.tls_cert, &args.tls_files.tls_key) {
        let files = node::tls::read_given(cert, key, args.tls_files.tls_ca.as_deref())
            .map_err(CliError::new)?;
        Some(files)
    } else {
        None
    };
    if let Some((cert, key, ca)) = &tls_files {
        // Checked before the directory is made.
        atoll_net::tls::TlsContext::from_pem(cert, key, ca.as_deref())
            .map_err(|e| CliError::new(format!("TLS: {e}")))?;
    }
    node::init(&args.data_dir, &config, &secret).map_err(|e| CliError::new(e.to_string()))?;
    if let Some((cert, key, ca)) = &tls_files {
        node::tls::install(&args.data_dir, cert, key, ca.as_deref()).map_err(CliError::new)?;
        println!(
            "TLS: clients and peers need {} and {} (`atoll cert --data-dir {}`)",
            args.data_dir.join(node::tls::CERT_FILE_NAME).display(),
            args.data_dir.join(node::tls::KEY_FILE_NAME).display(),
            args.data_dir.display()
        );
    }
    let token = JoinToken {
        cluster_id: config.cluster_id,
        secret,
    };
    println!(
        "initialized node {} at {} in {} (a new cluster of one voter); run it with:\n  atoll \
         start --data-dir {}\njoin token (other nodes join with `atoll join --join-token \
         TOKEN`; keep it private; `atoll token --data-dir {}` prints it again):\n{}",
        config.id,
        config.address,
        args.data_dir.display(),
        args.data_dir.display(),
        args.data_dir.display(),
        token.to_text()
    );
    Ok(())
}
