//! TLS files in the data directory: a node serves TLS (clients and peers) exactly when
//! `DIR/cluster.crt` exists. `DIR/cluster.key` is its key and `DIR/cluster-ca.crt`, when
//! present, the trust root (else the certificate itself is). All three are mode 0600 and PEM.
//! `atoll init --tls` generates the certificate; `atoll init`/`atoll join` with `--tls-cert`,
//! `--tls-key` (and `--tls-ca`) copy given files in. `atoll start` reloads them on SIGHUP.

use std::path::{Path, PathBuf};

use atoll_net::tls::{read_pem_file, write_private_file, TlsContext};

/// The certificate's file name inside the data directory.
pub const CERT_FILE_NAME: &str = "cluster.crt";
/// The key's file name inside the data directory.
pub const KEY_FILE_NAME: &str = "cluster.key";
/// The trust root's file name inside the data directory (optional).
pub const CA_FILE_NAME: &str = "cluster-ca.crt";

/// The TLS file paths of a data directory.
pub fn paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        data_dir.join(CERT_FILE_NAME),
        data_dir.join(KEY_FILE_NAME),
        data_dir.join(CA_FILE_NAME),
    )
}

/// The node's TLS setup: `None` when the data directory has no certificate (plaintext).
pub fn load(data_dir: &Path) -> Result<Option<TlsContext>, String> {
    let (cert, key, ca) = paths(data_dir);
    if !cert.exists() {
        return Ok(None);
    }
    let ca = ca.exists().then_some(ca);
    TlsContext::load(&cert, &key, ca.as_deref())
        .map(Some)
        .map_err(|e| format!("TLS: {e}"))
}

/// Writes the certificate, key and optional trust root into a new data directory (0600),
/// after checking that they make a usable setup.
pub fn install(data_dir: &Path, cert: &[u8], key: &[u8], ca: Option<&[u8]>) -> Result<(), String> {
    TlsContext::from_pem(cert, key, ca).map_err(|e| format!("TLS: {e}"))?;
    let (cert_path, key_path, ca_path) = paths(data_dir);
    let write = |path: &Path, bytes: &[u8]| {
        write_private_file(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(&key_path, key)?;
    if let Some(ca) = ca {
        write(&ca_path, ca)?;
    }
    // Last: its presence is what turns TLS on.
    write(&cert_path, cert)
}

/// PEM bytes of a certificate, its key and an optional trust root.
pub type PemFiles = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Reads the files given as `--tls-cert/--tls-key/--tls-ca`.
pub fn read_given(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<PemFiles, String> {
    let cert = read_pem_file(cert).map_err(|e| e.to_string())?;
    let key = read_pem_file(key).map_err(|e| e.to_string())?;
    let ca = ca
        .map(read_pem_file)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok((cert, key, ca))
}
