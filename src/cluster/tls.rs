//! The cluster's mutual TLS for QUIC (rustls with ring): both sides present
//! a certificate from the cluster CA; a client checks the server's blade id
//! as its TLS server name, and a server reads the client's blade id from
//! its certificate ([`peer_blade_id`]) and accepts only configured peers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::crypto::{CryptoError, HmacKey};
use quinn_proto::{ClientConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};

/// ALPN of the inter-blade protocol; a version bump changes it.
pub const ALPN: &[u8] = b"sipblade/1";

/// How long a silent peer is kept before its connection is declared lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alives keep an idle link from timing out and detect a dead peer.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Concurrent hosting exchanges per connection (one stream each). quinn's
/// default of 100 would cap hosting concurrency (RUNTIME-NOTES).
pub const MAX_STREAMS: u32 = 4096;

/// Ack-eliciting packets a blade may receive before it must acknowledge
/// them (within 25 ms anyway): each call's host request, grant and unhost
/// would otherwise draw about one acknowledgement datagram of its own.
const ACK_ELICITING_THRESHOLD: u32 = 9;

/// One of the three files of a blade's cluster identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The cluster CA's certificate.
    Ca,
    /// This blade's certificate.
    Cert,
    /// This blade's private key.
    Key,
}

impl PemFile {
    /// What the file holds, for messages.
    pub fn role(self) -> &'static str {
        match self {
            PemFile::Ca => "CA certificate",
            PemFile::Cert => "blade certificate",
            PemFile::Key => "blade key",
        }
    }
}

/// Why the cluster identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or decoded.
    #[error("{path}: {message}")]
    Pem {
        /// Which file.
        file: PemFile,
        /// The file's role, and its path when known.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// This blade's QUIC configurations: as a server and as a client.
#[derive(Clone)]
pub struct Identity {
    /// Accepts peers with a cluster certificate.
    pub server: Arc<ServerConfig>,
    /// Connects to peers, presenting our certificate.
    pub client: ClientConfig,
    /// Keys the QUIC stateless reset tokens: derived from the blade's
    /// private key, so the same across restarts and secret.
    pub reset_key: Arc<ResetKey>,
}

/// HMAC-SHA256 key for QUIC stateless reset tokens. A blade that restarts
/// answers its peers' packets on the connections it lost with a stateless
/// reset; with the same key as before the restart, the peers accept it
/// and redial at once, instead of sending into the void until the idle
/// timeout (and showing the link up all that while).
pub struct ResetKey(Hmac<Sha256>);

impl ResetKey {
    fn derive(key_der: &[u8]) -> ResetKey {
        let derived = Sha256::new()
            .chain_update(b"sipblade QUIC stateless reset key v1")
            .chain_update(key_der)
            .finalize();
        // HMAC pads short keys to its block size anyway; padding here
        // makes keying infallible.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&derived);
        ResetKey(<Hmac<Sha256> as KeyInit>::new(&key.into()))
    }

    /// The key of the QUIC connection ids' check hash, from the same
    /// secret: a restarted blade must take its old ids for its own, or it
    /// drops its peers' packets on them instead of resetting.
    pub fn cid_key(&self) -> u64 {
        let mut tag = [0u8; 32];
        self.sign(b"sipblade QUIC connection id key v1", &mut tag);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&tag[..8]);
        u64::from_be_bytes(raw)
    }
}

impl HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mut mac = self.0.clone();
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let mut mac = self.0.clone();
        mac.update(data);
        mac.verify_slice(signature).map_err(|_| CryptoError)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

impl Identity {
    /// Loads the CA certificate, this blade's certificate and its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let read = |file: PemFile, path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Pem {
                file,
                path: path.display().to_string(),
                message: e.to_string(),
            })
        };
        let pems = (
            read(PemFile::Ca, ca)?,
            read(PemFile::Cert, cert)?,
            read(PemFile::Key, key)?,
        );
        // Name the files, not only their roles, in what goes wrong.
        Identity::from_pem(&pems.0, &pems.1, &pems.2).map_err(|e| match e {
            TlsError::Pem {
                file,
                path,
                message,
            } => {
                let at = match file {
                    PemFile::Ca => ca,
                    PemFile::Cert => cert,
                    PemFile::Key => key,
                };
                TlsError::Pem {
                    file,
                    path: format!("{path} {}", at.display()),
                    message,
                }
            }
            TlsError::Config(message) => TlsError::Config(format!(
                "{message} (CA {}, certificate {}, key {})",
                ca.display(),
                cert.display(),
                key.display()
            )),
        })
    }

    /// Builds the configurations from PEM text.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Identity, TlsError> {
        let pem_err = |file: PemFile| {
            move |e: rustls_pki_types::pem::Error| TlsError::Pem {
                file,
                path: file.role().to_owned(),
                message: e.to_string(),
            }
        };
        let ca = CertificateDer::from_pem_slice(ca).map_err(pem_err(PemFile::Ca))?;
        let chain = vec![CertificateDer::from_pem_slice(cert).map_err(pem_err(PemFile::Cert))?];
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem_err(PemFile::Key))?;
        let reset_key = Arc::new(ResetKey::derive(key.secret_der()));
        let config_err = |e: rustls::Error| TlsError::Config(e.to_string());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(config_err)?;
        let roots = Arc::new(roots);

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // Our own certificate must pass the check every peer will make of
        // it: one from another CA (or a `ca` that is a blade certificate)
        // would start a blade that no peer accepts.
        verifier
            .verify_client_cert(&chain[0], &[], UnixTime::now())
            .map_err(|e| TlsError::Pem {
                file: PemFile::Cert,
                path: PemFile::Cert.role().to_owned(),
                message: format!("not accepted by the cluster CA ({e})"),
            })?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let server =
            QuicServerConfig::try_from(server).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport());

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let client =
            QuicClientConfig::try_from(client).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut client = ClientConfig::new(Arc::new(client));
        client.transport_config(transport());
        Ok(Identity {
            server: Arc::new(server),
            client,
            reset_key,
        })
    }
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // Ask the peer for an acknowledgement after every tenth ack-eliciting
    // packet rather than every second (QUIC ACK frequency extension);
    // max_ack_delay stays the default 25 ms, so loss detection is unchanged.
    let mut acks = quinn_proto::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

/// The blade id a PEM certificate names; `None` if it names none.
pub fn blade_id_of_pem(cert: &[u8]) -> Option<String> {
    let der = CertificateDer::from_pem_slice(cert).ok()?;
    super::certs::blade_id_from_cert_der(&der)
}

/// The blade id in the leaf certificate a peer presented, from the chain
/// quinn reports as the connection's peer identity.
pub fn peer_blade_id(identity: Option<Box<dyn std::any::Any>>) -> Option<String> {
    let chain = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    super::certs::blade_id_from_cert_der(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::certs::generate_cluster;

    #[test]
    fn load_errors_name_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ["b1".to_owned(), "b2".to_owned()];
        generate_cluster(dir.path(), &ids).unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("b1.pem"),
            dir.path().join("b1.key"),
        );
        assert!(Identity::load(&ca, &cert, &key).is_ok());

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM").unwrap();
        let Err(err) = Identity::load(&ca, &garbage, &key) else {
            panic!("a garbage certificate loads");
        };
        let err = err.to_string();
        assert!(err.contains(&garbage.display().to_string()), "{err}");

        // Another blade's key does not match the certificate.
        let other_key = dir.path().join("b2.key");
        let Err(err) = Identity::load(&ca, &cert, &other_key) else {
            panic!("a mismatched key loads");
        };
        let err = err.to_string();
        assert!(err.contains(&other_key.display().to_string()), "{err}");
    }
}
