//! `kmsctl dev-pki`: a local certificate authority for trying mutual TLS on one machine.
//!
//! Makes (once) a CA, a server certificate for localhost, and client certificates whose
//! principal is a URI SAN (when it has `://`, e.g. `spiffe://kms.local/app`) or else the
//! subject CN; and, with `--revoke`, a CRL (`crl.pem`) for kmsd's `--tls-client-crl`. Not
//! for production: the CA key sits unencrypted in the directory.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};

const CA_CN: &str = "kms dev CA";

/// What `dev-pki` is asked to make.
pub struct Request<'a> {
    /// The directory of the files.
    pub dir: &'a Path,
    /// Extra DNS names or IP addresses for the server certificate, besides localhost,
    /// 127.0.0.1 and ::1. Giving any reissues the server certificate.
    pub server_names: &'a [String],
    /// Client certificates to issue: (file name, principal).
    pub clients: &'a [(String, String)],
    /// Validity of new certificates, in days.
    pub days: u32,
    /// Client certificates (by file name) to add to the CRL.
    pub revoke: &'a [String],
}

/// Makes what is missing or asked for; returns the files written.
pub fn run(request: &Request<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let dir = request.dir;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let ca_cert = dir.join("ca.pem");
    let ca_key_file = dir.join("ca-key.pem");
    let ca_key = if ca_key_file.exists() {
        let pem = fs::read_to_string(&ca_key_file)
            .with_context(|| format!("cannot read {}", ca_key_file.display()))?;
        KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a key", ca_key_file.display()))?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params(request.days)?.self_signed(&key)?;
        write(&ca_key_file, &key.serialize_pem(), true, &mut written)?;
        write(&ca_cert, &cert.pem(), false, &mut written)?;
        key
    };
    let issuer = Issuer::new(ca_params(request.days)?, ca_key);

    let server_file = dir.join("server.pem");
    if !server_file.exists() || !request.server_names.is_empty() {
        let mut names: Vec<SanType> = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for name in request.server_names {
            names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        let mut params = leaf_params("kmsd", request.days)?;
        params.subject_alt_names = names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(
            &dir.join("server-key.pem"),
            &key.serialize_pem(),
            true,
            &mut written,
        )?;
        write(&server_file, &cert.pem(), false, &mut written)?;
    }

    for (name, principal) in request.clients {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("client name {name:?} must be letters, digits, '-', '_' or '.'");
        }
        let mut params = leaf_params(principal, request.days)?;
        if principal.contains("://") {
            params.subject_alt_names = vec![SanType::URI(principal.as_str().try_into()?)];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(
            &dir.join(format!("{name}-key.pem")),
            &key.serialize_pem(),
            true,
            &mut written,
        )?;
        write(
            &dir.join(format!("{name}.pem")),
            &cert.pem(),
            false,
            &mut written,
        )?;
    }
    if !request.revoke.is_empty() {
        revoke(dir, request.revoke, &issuer, request.days, &mut written)?;
    }
    Ok(written)
}

/// Writes `crl.pem`: what it revoked before, and the client certificates `names`.
fn revoke(
    dir: &Path,
    names: &[String],
    issuer: &Issuer<'_, KeyPair>,
    days: u32,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let crl_file = dir.join("crl.pem");
    let mut serials: Vec<Vec<u8>> = Vec::new();
    if crl_file.exists() {
        for der in pem_blocks(&crl_file)? {
            let (_, crl) = x509_parser::parse_x509_crl(&der)
                .map_err(|e| anyhow::anyhow!("{} is not a CRL: {e}", crl_file.display()))?;
            serials.extend(
                crl.iter_revoked_certificates()
                    .map(|r| r.raw_serial().to_vec()),
            );
        }
    }
    for name in names {
        let file = dir.join(format!("{name}.pem"));
        let der = pem_blocks(&file)?
            .into_iter()
            .next()
            .with_context(|| format!("{} holds no certificate", file.display()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("{} is not a certificate: {e}", file.display()))?;
        let serial = cert.raw_serial().to_vec();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(i64::from(days)),
        crl_number: SerialNumber::from(now.unix_timestamp().unsigned_abs().to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer)?;
    write(&crl_file, &crl.pem()?, false, written)
}

/// The DER contents of every PEM block of `path`.
fn pem_blocks(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    x509_parser::pem::Pem::iter_from_buffer(&text)
        .map(|pem| {
            pem.map(|p| p.contents)
                .map_err(|e| anyhow::anyhow!("{} is not PEM: {e}", path.display()))
        })
        .collect()
}

fn ca_params(days: u32) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(CA_CN);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // The CA outlives what it issues.
    set_validity(&mut params, days.saturating_mul(10));
    Ok(params)
}

fn leaf_params(common_name: &str, days: u32) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, days);
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn write(path: &Path, pem: &str, secret: bool, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, pem.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path.to_owned());
    Ok(())
}
