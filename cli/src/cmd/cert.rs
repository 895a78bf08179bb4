//! `atoll cert`: what a client needs to reach a TLS cluster.

use std::path::PathBuf;

use super::CliError;
use atoll_node::tls;

/// Print or export the cluster certificate and key a client needs (TLS clusters).
///
/// A TLS cluster (`atoll init --tls`) requires every client to present the cluster certificate,
/// as go-dqlite's `app.WithTLS` does: `dqlite -s ADDRESS -c cluster.crt -k cluster.key DB`,
/// go-dqlite's `client.DialFuncWithTLS` with the certificate as its own root, or
/// `atoll shell --tls-cert cluster.crt --tls-key cluster.key`. Without --out-dir, prints the
/// paths of the node's files and the certificate (PEM). With --out-dir, copies the certificate
/// and key (and trust root) there, mode 0600. The key is a credential: whoever holds it is
/// trusted as a member or a client of the cluster.
///
/// Example:
///   atoll cert --data-dir /var/lib/atoll --out-dir ./client-tls
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory of a node of the cluster.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Copy the files here (created if missing) instead of printing.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Runs `atoll cert`.
pub fn run(args: Args) -> Result<(), CliError> {
    let (cert, key, ca) = tls::paths(&args.data_dir);
    if !cert.exists() {
        return Err(CliError::new(format!(
            "{} has no {}: this node does not use TLS (`atoll init --tls` sets it up)",
            args.data_dir.display(),
            tls::CERT_FILE_NAME
        )));
    }
    let ca = ca.exists().then_some(ca);
    let (cert_pem, key_pem, ca_pem) =
        tls::read_given(&cert, &key, ca.as_deref()).map_err(CliError::new)?;
    let Some(out_dir) = args.out_dir else {
        println!("certificate: {}\nkey: {}", cert.display(), key.display());
        if let Some(ca) = &ca {
            println!("trust root: {}", ca.display());
        }
        print!("{}", String::from_utf8_lossy(&cert_pem));
        return Ok(());
    };
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| CliError::new(format!("creating {}: {e}", out_dir.display())))?;
    tls::install(&out_dir, &cert_pem, &key_pem, ca_pem.as_deref()).map_err(CliError::new)?;
    let (cert, key, _) = tls::paths(&out_dir);
    println!(
        "wrote {} and {}; connect with e.g. `dqlite -s ADDRESS -c {} -k {} DATABASE`",
        cert.display(),
        key.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}
