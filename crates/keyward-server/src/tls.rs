//! TLS in the binary, for installs without a proxy in front: a certificate chain and its key from
//! PEM files (`KEYWARD_TLS_CERT`, `KEYWARD_TLS_KEY`), served by rustls (TLS 1.2 and 1.3, HTTP/1.1
//! by ALPN). [`Tls::reload`] reads both files again (the binary calls it on SIGHUP): a new pair
//! that loads is used for every connection accepted from then on, and one that does not is
//! refused with the reason while the old one stays in use, so a botched renewal never takes the
//! server down.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The files a server's certificate comes from, and the configuration last loaded from them.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: tokio::sync::watch::Sender<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate chain at `cert` and the private key at `key` (PEM); the error says
    /// which file is wrong and how, never what the key holds.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: tokio::sync::watch::Sender::new(config),
        })
    }

    /// Reads both files again. On success new connections use the new pair; on failure nothing
    /// changes and the reason is returned.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        self.current.send_replace(config);
        Ok(())
    }

    /// The acceptor for the next connection (the configuration loaded last).
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.borrow().clone())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = read(cert, "certificate")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            cert.display()
        ));
    }
    let pem = zeroize::Zeroizing::new(read(key, "private key")?);
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!(
            "{}: no private key in the file (expected a PEM PKCS#8, PKCS#1 or SEC1 key)",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "{} and {}: the certificate and key cannot be used together ({e})",
                cert.display(),
                key.display()
            )
        })?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}
