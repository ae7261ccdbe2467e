//! Who is calling: mutual TLS, or `--dev`.
//!
//! With TLS, the handshake requires a client certificate the client CA issued, valid now and
//! not revoked (rustls' WebPKI verifier, with the CRL file when one is configured). A client
//! without one never reaches gRPC: its connection fails, which costs kmsd a metric and a
//! rate-limited log line, never an audit record or a disk write. Each request checks the
//! certificate again with the verifier in force (cached per certificate until it expires or
//! the CRLs change), so a certificate revoked or expired during a long connection stops
//! working at once.
//!
//! The principal is the certificate's first URI SAN (for example `spiffe://…`). A certificate
//! without one is refused, unless `allow_cn_principals` is set: then its subject CN serves,
//! typed as `CN=<name>` so that no CN can pass for a URI principal. A certificate whose
//! subject alternative names cannot be parsed is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use kms_core::{Caller, KmsError, MetadataStore, StoreError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tracing::info;

/// The principal of every caller of a `--dev` server.
pub const DEV_PRINCIPAL: &str = "dev";

/// The most verified certificates remembered; the cache starts over beyond.
const CACHE_LIMIT: usize = 10_000;

/// The PEM files and settings of mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA (one or more certificates) that issues client certificates.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM, one or more) of the client CA, reloaded when the
    /// file changes and on SIGHUP.
    pub client_crl: Option<PathBuf>,
    /// Accept certificates without a URI SAN, with the principal `CN=<subject CN>`.
    pub allow_cn_principals: bool,
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
    /// The CRL numbers in force could not be read from or recorded in the metadata store.
    #[error("cannot read or record the CRL numbers in force in the metadata store")]
    Store(#[source] StoreError),
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

/// The client certificates kmsd trusts now: the client CA, less what the CRL file revokes.
/// Rebuilt when the CRL file changes; every verification uses the latest.
pub struct ClientTrust {
    roots: Arc<RootCertStore>,
    /// The client CA's certificates, which must have signed every CRL.
    cas: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    crl: Option<PathBuf>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Changes at every reload: verifications cached under another generation are redone.
    generation: AtomicU64,
    /// The CRL file's modification time when it was last read.
    crl_modified: Mutex<Option<SystemTime>>,
    /// The CRL number in force per issuer.
    crl_numbers: Mutex<HashMap<Vec<u8>, x509_parser::num_bigint::BigUint>>,
    /// Where the CRL numbers put in force are recorded, so that a restart refuses an older
    /// CRL too (none for `--check-config`, which only reads).
    store: Option<Arc<dyn MetadataStore>>,
}

impl ClientTrust {
    fn new(
        roots: RootCertStore,
        cas: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        crl: Option<PathBuf>,
        store: Option<Arc<dyn MetadataStore>>,
    ) -> Result<Self, TlsSetupError> {
        let roots = Arc::new(roots);
        let modified = crl.as_deref().and_then(modified);
        let crls = crl
            .as_deref()
            .map(|path| crate::crl::read(path, &cas))
            .transpose()?;
        if let (Some(path), Some(crls), Some(store)) = (&crl, &crls, &store) {
            crate::crl::check_not_older(path, &crate::crl::recorded(store.as_ref(), crls)?, crls)?;
            crate::crl::record(store.as_ref(), crls)?;
        }
        let verifier = build_verifier(&roots, &provider, crls.as_ref())?;
        Ok(ClientTrust {
            roots,
            cas,
            provider,
            crl,
            current: RwLock::new(verifier),
            generation: AtomicU64::new(0),
            crl_modified: Mutex::new(modified),
            crl_numbers: Mutex::new(crls.map(|c| c.numbers).unwrap_or_default()),
            store,
        })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Reads the CRL file again and puts its revocations in force. On failure (a file being
    /// rewritten, a bad CRL, a CRL older than the one in force) the revocations in force
    /// stay, and the error says why.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let Some(crl) = &self.crl else {
            return Ok(());
        };
        let modified = modified(crl);
        // Looked at once, whatever the outcome: a refused file is not read again until it
        // changes (or SIGHUP).
        *self
            .crl_modified
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = modified;
        let crls = crate::crl::read(crl, &self.cas)?;
        let mut numbers = self
            .crl_numbers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        crate::crl::check_not_older(crl, &numbers, &crls)?;
        let verifier = build_verifier(&self.roots, &self.provider, Some(&crls))?;
        if let Some(store) = &self.store {
            crate::crl::record(store.as_ref(), &crls)?;
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = verifier;
        *numbers = crls.numbers;
        self.generation.fetch_add(1, Ordering::SeqCst);
        info!(crl = %crl.display(), "client certificate revocation list loaded");
        Ok(())
    }

    /// Reloads when the CRL file's modification time changed since it was read.
    pub fn reload_if_changed(&self) -> Result<(), TlsSetupError> {
        let Some(crl) = &self.crl else {
            return Ok(());
        };
        let last = *self
            .crl_modified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if modified(crl) == last {
            return Ok(());
        }
        self.reload()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The WebPKI verifier of client certificates issued by `roots`, checking revocation of the
/// end-entity certificate against `crls` when given: a certificate whose status the CRLs do
/// not cover is refused (a CRL file must cover the client CA), and so is every certificate
/// once the CRL's next update has passed (a CRL no longer published must not stay in force
/// for ever, as OpenSSL also holds).
fn build_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    crls: Option<&crate::crl::Crls>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider));
    if let Some(crls) = crls {
        builder = builder
            .with_crls(crls.ders.clone())
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
    }
    builder.build().map_err(TlsSetupError::Verifier)
}

/// Checks client certificates against the client trust in force, per request.
pub struct MtlsAuthenticator {
    trust: Arc<ClientTrust>,
    allow_cn_principals: bool,
    /// SHA-256 of a verified end-entity certificate → its principal and validity.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

#[derive(Clone)]
struct Verified {
    principal: Arc<str>,
    not_before: i64,
    not_after: i64,
    /// The trust generation it was verified under.
    generation: u64,
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
        let generation = self.trust.generation();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if let Some(v) = cached
            && v.generation == generation
            && (v.not_before..=v.not_after).contains(&now_secs)
        {
            return Ok(Caller::new(&*v.principal, true));
        }
        self.trust
            .current()
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| KmsError::Unauthenticated(refusal(&e)))?;
        let verified = identity(end_entity, self.allow_cn_principals, generation)?;
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
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                "cannot be checked: the CRL in force is past its next update".to_owned()
            }
            CertificateError::UnknownRevocationStatus => {
                "cannot be checked: no CRL in force covers its issuer".to_owned()
            }
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

/// The principal and validity of a certificate the verifier accepted: its first URI SAN,
/// which must be a URI (`scheme:...`); or, when `allow_cn` and it has no URI SAN,
/// `CN=<subject CN>`, which no URI can equal ('=' cannot appear in a URI scheme).
fn identity(
    der: &CertificateDer<'_>,
    allow_cn: bool,
    generation: u64,
) -> Result<Verified, KmsError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let bad = |what: &str| KmsError::Unauthenticated(format!("the client certificate {what}"));
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| bad("cannot be parsed"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("has subject alternative names that cannot be parsed"))?;
    let uri = san.and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
    });
    let principal = match uri {
        Some(uri) if is_uri(uri) => uri.to_owned(),
        Some(_) => return Err(bad("has a URI SAN that is not a URI (scheme:...)")),
        None if allow_cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(|cn| format!("CN={cn}"))
            .ok_or_else(|| bad("has neither a URI SAN nor a subject CN"))?,
        None => {
            return Err(bad(
                "has no URI SAN: kmsd takes principals from URI SANs (allow_cn_principals \
                 accepts the subject CN)",
            ));
        }
    };
    if principal.is_empty() || principal.len() > 1024 {
        return Err(bad("names an empty or overlong principal"));
    }
    let validity = cert.validity();
    Ok(Verified {
        principal: principal.into(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        generation,
    })
}

/// Whether `text` starts with a URI scheme and ':' (RFC 3986: a letter, then letters,
/// digits, '+', '-' or '.').
fn is_uri(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The handshake's verifier: the client trust in force, and a certificate is required.
#[derive(Debug)]
struct HandshakeVerifier {
    trust: Arc<ClientTrust>,
    /// The client CA's subjects, hinted to clients (the CA does not change on reload).
    hints: Vec<DistinguishedName>,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("crl", &self.crl)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for HandshakeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .current()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .current()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.trust.current().supported_verify_schemes()
    }
}

/// The TLS acceptor, the authenticator and the client trust (to reload) of a mutual-TLS
/// server. With `store`, a CRL older than one put in force before (in an earlier run too) is
/// refused, and the CRL numbers put in force are recorded there.
pub fn mtls(
    files: &TlsFiles,
    store: Option<Arc<dyn MetadataStore>>,
) -> Result<(TlsAcceptor, Authenticator, Arc<ClientTrust>), TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("server certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsSetupError::File {
        what: "server key",
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    let cas = read_certs("client CA", &files.client_ca)?;
    for ca in &cas {
        roots.add(ca.clone()).map_err(|e| TlsSetupError::File {
            what: "client CA",
            path: files.client_ca.clone(),
            message: e.to_string(),
        })?;
    }
    let trust = Arc::new(ClientTrust::new(
        roots,
        cas,
        Arc::clone(&provider),
        files.client_crl.clone(),
        store,
    )?);
    let hints = trust.current().root_hint_subjects().to_vec();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_client_cert_verifier(Arc::new(HandshakeVerifier {
            trust: Arc::clone(&trust),
            hints,
        }))
        .with_single_cert(certs, key)
        .map_err(TlsSetupError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed handshake skips the client certificate check, so a
    // certificate revoked since would get through it.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok((
        TlsAcceptor::from(Arc::new(config)),
        Authenticator::Mtls(MtlsAuthenticator {
            trust: Arc::clone(&trust),
            allow_cn_principals: files.allow_cn_principals,
            verified: Mutex::new(HashMap::new()),
        }),
        trust,
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
