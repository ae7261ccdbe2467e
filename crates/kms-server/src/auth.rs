//! Who is calling: mutual TLS, or `--dev`.
//!
//! With TLS, the handshake asks every client for a certificate but does not judge it; each
//! request does. That way a missing, untrusted or expired certificate gets a gRPC
//! UNAUTHENTICATED status with the reason, and an audit record, instead of a bare handshake
//! failure. The handshake still checks that the client holds the certificate's private key.
//! The chain is checked against the client CA by rustls' WebPKI verifier, and the result of a
//! good certificate is cached until it expires.
//!
//! The principal is the certificate's first URI SAN (for example `spiffe://…`), else its
//! subject CN.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kms_core::{Caller, KmsError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

/// The principal of every caller of a `--dev` server.
pub const DEV_PRINCIPAL: &str = "dev";

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most verified certificates remembered; the cache starts over beyond.
const CACHE_LIMIT: usize = 10_000;

/// The PEM files of mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA (one or more certificates) that issues client certificates.
    pub client_ca: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    File {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[source] rustls::Error),
    /// The client CA could not serve as a verifier.
    #[error("the client CA cannot verify client certificates")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// Authenticates the callers of one server.
pub enum Authenticator {
    /// `--dev`: every caller is [`DEV_PRINCIPAL`].
    Dev,
    /// Mutual TLS.
    Mtls(MtlsAuthenticator),
}

impl Authenticator {
    /// The caller of a request that came with `peer_certs` (the client's chain, end entity
    /// first, if it sent one).
    pub fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, KmsError> {
        match self {
            Authenticator::Dev => Ok(Caller::new(DEV_PRINCIPAL, false)),
            Authenticator::Mtls(mtls) => mtls.authenticate(peer_certs),
        }
    }
}

/// Checks client certificates against the client CA, per request.
pub struct MtlsAuthenticator {
    verifier: Arc<dyn ClientCertVerifier>,
    /// SHA-256 of a verified end-entity certificate → its principal and validity.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

#[derive(Clone)]
struct Verified {
    principal: Arc<str>,
    not_before: i64,
    not_after: i64,
}

impl MtlsAuthenticator {
    fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, KmsError> {
        let Some((end_entity, intermediates)) = peer_certs.and_then(<[_]>::split_first) else {
            return Err(KmsError::Unauthenticated(
                "no client certificate: kmsd requires mutual TLS".into(),
            ));
        };
        let now = UnixTime::now();
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if let Some(v) = cached
            && (v.not_before..=v.not_after).contains(&now_secs)
        {
            return Ok(Caller::new(&*v.principal, true));
        }
        self.verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| KmsError::Unauthenticated(refusal(&e)))?;
        let verified = identity(end_entity)?;
        let principal = Arc::clone(&verified.principal);
        let mut cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(digest, verified);
        Ok(Caller::new(&*principal, true))
    }
}

/// Why a client certificate is refused, in words for the caller.
fn refusal(error: &rustls::Error) -> String {
    let why = match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "is not valid yet".to_owned()
            }
            CertificateError::UnknownIssuer => "is not issued by the trusted client CA".to_owned(),
            CertificateError::Revoked => "is revoked".to_owned(),
            CertificateError::BadSignature => "has a bad signature".to_owned(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "is not meant for client authentication".to_owned()
            }
            other => format!("is invalid ({other:?})"),
        },
        other => format!("is invalid ({other})"),
    };
    format!("the client certificate {why}")
}

/// The principal and validity of a certificate the verifier accepted.
fn identity(der: &CertificateDer<'_>) -> Result<Verified, KmsError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let bad = |what: &str| KmsError::Unauthenticated(format!("the client certificate {what}"));
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| bad("cannot be parsed"))?;
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
        });
    let principal = match uri {
        Some(uri) => uri,
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| bad("has neither a URI SAN nor a subject CN"))?,
    };
    if principal.is_empty() || principal.len() > 1024 {
        return Err(bad("names an empty or overlong principal"));
    }
    let validity = cert.validity();
    Ok(Verified {
        principal: principal.into(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The handshake half of client authentication: asks for a certificate and checks the
/// client's signature with it, and leaves judging the certificate to each request.
#[derive(Debug)]
struct DeferredClientAuth {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Judged per request by `MtlsAuthenticator`, so that refusals are gRPC statuses.
        Ok(ClientCertVerified::assertion())
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS acceptor and the authenticator of a mutual-TLS server.
pub fn mtls(files: &TlsFiles) -> Result<(TlsAcceptor, Authenticator), TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("server certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsSetupError::File {
        what: "server key",
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs("client CA", &files.client_ca)? {
        roots.add(ca).map_err(|e| TlsSetupError::File {
            what: "client CA",
            path: files.client_ca.clone(),
            message: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(TlsSetupError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_client_cert_verifier(Arc::new(DeferredClientAuth {
            inner: Arc::clone(&verifier),
        }))
        .with_single_cert(certs, key)
        .map_err(TlsSetupError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((
        TlsAcceptor::from(Arc::new(config)),
        Authenticator::Mtls(MtlsAuthenticator {
            verifier,
            verified: Mutex::new(HashMap::new()),
        }),
    ))
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let error = |message: String| TlsSetupError::File {
        what,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The connections of a TLS listener, each past its handshake. Handshakes run concurrently,
/// so a slow or silent client holds up no one; failed ones are logged at debug level.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
