//! TLS for clients and peers: the cluster's certificate, key and trust root, turned into rustls
//! configurations that the reactor (sans-IO, driven by readiness events) and the blocking client
//! use.
//!
//! The model is go-dqlite's `app.WithTLS`: one cluster certificate is every node's identity and
//! the trust root (or `--tls-ca` names a separate root). Every connection is mutual TLS: a node
//! requires a certificate from whoever connects (a client or a peer) that chains to the trust
//! root, and dialers present theirs. Hostnames are not checked: nodes of an edge cluster are
//! reached by IP addresses that change; what identifies the cluster is its trust root (go-dqlite
//! likewise dials every node with the name in the cluster certificate, whatever the address).
//!
//! Crypto provider: `ring` (builds with a C compiler for aarch64 and armv7; see ARCHITECTURE.md).
//! TLS 1.3 is preferred; TLS 1.2 is offered for clients that need it.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Largest certificate, key or CA file read (PEM); a larger one is refused.
pub const TLS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Plaintext and ciphertext each connection's TLS layer buffers at most; past it the reactor
/// stops handing it output (and stops reading) until the socket drains.
pub const TLS_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// The name a dialer sends as SNI and in the generated certificate (hostnames are not checked).
pub const TLS_SERVER_NAME: &str = "atoll";
/// Validity of a certificate that `generate_cluster_certificate` makes, in years.
pub const GENERATED_CERT_YEARS: i32 = 100;

/// A TLS setup that cannot be used.
#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(message: impl Into<String>) -> TlsError {
    TlsError(message.into())
}

/// What a node or a client needs for TLS: built once from PEM, shared by every connection.
/// Replacing it (rotation) affects new connections only; open ones keep their session.
#[derive(Clone)]
pub struct TlsContext {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsContext")
    }
}

// rustls marks ring's provider deprecated because it lacks post-quantum key exchange; aws-lc-rs
// (which has it) needs cmake and breaks the armv7 cross build (ARCHITECTURE.md, "Dependencies").
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file, bounded.
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = fs::metadata(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    if meta.len() > TLS_FILE_BYTES_MAX {
        return Err(err(format!(
            "{}: {} bytes, more than the {TLS_FILE_BYTES_MAX} a PEM file may have",
            path.display(),
            meta.len()
        )));
    }
    fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{what}: not a PEM certificate ({e:?})")))?;
    if certs.is_empty() {
        return Err(err(format!("{what}: no certificate in it")));
    }
    Ok(certs)
}

impl TlsContext {
    /// Loads the node's (or client's) certificate chain and key, and the trust root (`ca`, or
    /// the certificate itself when `None`), from PEM files.
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<TlsContext, TlsError> {
        let cert_pem = read_pem_file(cert)?;
        let key_pem = read_pem_file(key)?;
        let ca_pem = ca.map(read_pem_file).transpose()?;
        TlsContext::from_pem(&cert_pem, &key_pem, ca_pem.as_deref())
            .map_err(|e| err(format!("{} / {}: {e}", cert.display(), key.display())))
    }

    /// As `load`, from PEM bytes.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: Option<&[u8]>,
    ) -> Result<TlsContext, TlsError> {
        let chain = certificates(cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| err(format!("key: not a PEM private key ({e:?})")))?;
        let roots_der = match ca_pem {
            Some(pem) => certificates(pem, "CA")?,
            None => chain[..1].to_vec(),
        };
        let mut roots = RootCertStore::empty();
        for root in roots_der {
            roots
                .add(root)
                .map_err(|e| err(format!("trust root unusable: {e}")))?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| err(format!("client verifier: {e}")))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| err(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| err(format!("certificate and key do not match: {e}")))?;

        let mut server = server;
        // Nothing resumes sessions: no tickets (which a dialer would read as data).
        server.send_tls13_tickets = 0;

        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| err(format!("server verifier: {e}")))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| err(format!("TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterVerifier { inner }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| err(format!("certificate and key do not match: {e}")))?;
        Ok(TlsContext {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// A new accepted connection's TLS session.
    pub fn server_session(&self) -> Result<rustls::Connection, TlsError> {
        let mut session = rustls::ServerConnection::new(self.server.clone())
            .map_err(|e| err(format!("TLS session: {e}")))?;
        session.set_buffer_limit(Some(TLS_BUFFER_BYTES_MAX));
        Ok(session.into())
    }

    /// A new dialed connection's TLS session.
    pub fn client_session(&self) -> Result<rustls::Connection, TlsError> {
        let mut session = self.client_connection()?;
        session.set_buffer_limit(Some(TLS_BUFFER_BYTES_MAX));
        Ok(session.into())
    }

    /// A client session for a blocking stream (`rustls::StreamOwned`).
    pub fn client_connection(&self) -> Result<rustls::ClientConnection, TlsError> {
        let name = ServerName::try_from(TLS_SERVER_NAME).expect("a valid DNS name");
        rustls::ClientConnection::new(self.client.clone(), name)
            .map_err(|e| err(format!("TLS session: {e}")))
    }
}

/// Verifies the server's chain against the cluster's trust root, and its signatures; a name
/// mismatch is not an error (see the module documentation).
#[derive(Debug)]
struct ClusterVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A new self-signed cluster certificate and its key, PEM: ECDSA P-256, valid for
/// `GENERATED_CERT_YEARS`, usable by servers and clients, with the DNS name `TLS_SERVER_NAME`
/// (go-dqlite dials with the certificate's first DNS name).
pub fn generate_cluster_certificate() -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| err(format!("key generation: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec![TLS_SERVER_NAME.to_string()])
        .map_err(|e| err(format!("certificate: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "atoll cluster");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025 + GENERATED_CERT_YEARS, 1, 1);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|e| err(format!("certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `contents` to a new file readable by its owner only (0600), failing if it exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_and_other_clusters_are_refused() {
        let (cert, key) = generate_cluster_certificate().unwrap();
        TlsContext::from_pem(cert.as_bytes(), key.as_bytes(), None).unwrap();
        assert!(TlsContext::from_pem(b"garbage", key.as_bytes(), None).is_err());
        assert!(TlsContext::from_pem(cert.as_bytes(), b"garbage", None).is_err());
        let (_, other_key) = generate_cluster_certificate().unwrap();
        assert!(TlsContext::from_pem(cert.as_bytes(), other_key.as_bytes(), None).is_err());
    }
}
