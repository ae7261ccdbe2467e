//! The client CA's certificate revocation lists: read from a PEM file, each checked to be
//! signed by a client CA certificate, one per issuer, with its CRL number, so that neither a
//! reload nor a restart (the numbers in force are kept in the metadata store) puts an older
//! CRL in the place of a newer one (an older CRL, still properly signed, would let a
//! certificate revoked since work again).

use std::collections::HashMap;
use std::path::Path;

use kms_core::MetadataStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::num_bigint::BigUint;

use crate::auth::TlsSetupError;

/// The CRLs of a file, and the CRL number of each issuer's (an absent number counts as 0).
pub(crate) struct Crls {
    pub(crate) ders: Vec<CertificateRevocationListDer<'static>>,
    pub(crate) numbers: HashMap<Vec<u8>, BigUint>,
}

/// Reads and parses the CRLs of `path`: at least one, each a valid X.509 CRL signed by one of
/// `cas`, and at most one per issuer (the verifier would use the first one, whatever the
/// others say).
pub(crate) fn read(path: &Path, cas: &[CertificateDer<'_>]) -> Result<Crls, TlsSetupError> {
    let error = |message: String| TlsSetupError::File {
        what: "client CRL",
        path: path.to_owned(),
        message,
    };
    let ders = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if ders.is_empty() {
        return Err(error("holds no PEM X509 CRL".into()));
    }
    let mut issuers = Vec::new();
    for ca in cas {
        let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref())
            .map_err(|e| error(format!("a client CA certificate does not parse: {e}")))?;
        issuers.push(ca);
    }
    let mut numbers = HashMap::new();
    for der in &ders {
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| error(format!("holds a CRL that does not parse: {e}")))?;
        let signed = issuers.iter().any(|ca| {
            ca.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(ca.public_key()).is_ok()
        });
        if !signed {
            return Err(error(
                "holds a CRL that no client CA certificate signed".into(),
            ));
        }
        let number = crl.crl_number().cloned().unwrap_or_default();
        if numbers
            .insert(crl.issuer().as_raw().to_vec(), number)
            .is_some()
        {
            return Err(error(
                "holds two CRLs of one issuer: give one, its newest".into(),
            ));
        }
    }
    Ok(Crls { ders, numbers })
}

/// Refuses `new` if it holds, for an issuer, a CRL older (by CRL number) than the one in
/// force.
pub(crate) fn check_not_older(
    path: &Path,
    in_force: &HashMap<Vec<u8>, BigUint>,
    new: &Crls,
) -> Result<(), TlsSetupError> {
    for (issuer, number) in in_force {
        match new.numbers.get(issuer) {
            Some(newer) if newer >= number => {}
            found => {
                return Err(TlsSetupError::File {
                    what: "client CRL",
                    path: path.to_owned(),
                    message: format!(
                        "its CRL for an issuer has number {}, older than the {number} in \
                         force: an old CRL would let certificates revoked since work again",
                        found.map_or_else(|| "none (no CRL)".to_owned(), ToString::to_string)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The CRL numbers `store` recorded as in force for the issuers of `crls`.
pub(crate) fn recorded(
    store: &dyn MetadataStore,
    crls: &Crls,
) -> Result<HashMap<Vec<u8>, BigUint>, TlsSetupError> {
    let mut numbers = HashMap::new();
    for issuer in crls.numbers.keys() {
        if let Some(number) = store.crl_number(issuer).map_err(TlsSetupError::Store)? {
            numbers.insert(issuer.clone(), BigUint::from_bytes_be(&number));
        }
    }
    Ok(numbers)
}

/// Records in `store` the CRL numbers of `crls`, being put in force.
pub(crate) fn record(store: &dyn MetadataStore, crls: &Crls) -> Result<(), TlsSetupError> {
    for (issuer, number) in &crls.numbers {
        store
            .put_crl_number(issuer, &number.to_bytes_be())
            .map_err(TlsSetupError::Store)?;
    }
    Ok(())
}
