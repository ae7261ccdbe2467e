//! Mutual TLS as an attacker meets it: the handshake, revocation, principals, alias names,
//! administrators and the server policy's Deny, on a real kmsd (findings 2 to 5 of the
//! security review).

use std::process::Command;
use std::time::{Duration, Instant};

use kms_client::{ClientTls, KmsClient};
use kms_e2e::{Kmsd, Pki, TestEnv, bin};
use tonic::Code;

use crate::metrics::scrape;
use crate::{ctx, expect_error};

const ADMIN: &str = "spiffe://kms.test/admin";
const APP: &str = "spiffe://kms.test/app";
const TENANT_A: &str = "spiffe://kms.test/tenant-a";

fn pki(env: &TestEnv) -> Pki {
    env.dev_pki(
        "pki",
        &[("admin", ADMIN), ("app", APP), ("tenant-a", TENANT_A)],
        365,
    )
}

fn start(env: &TestEnv, pki: &Pki, admins: &[&str], extra: &[String]) -> Kmsd {
    let mut args = env.tls_args(pki, admins);
    args.extend_from_slice(extra);
    env.start_with(&args, &[])
        .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"))
}

fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> [String; 2] {
    [
        name.to_owned(),
        value.as_ref().to_string_lossy().into_owned(),
    ]
}

fn audit_len(env: &TestEnv) -> u64 {
    let (log, _) = Kmsd::audit_files(&env.data_dir());
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// Finding 2: a peer without an acceptable certificate is refused at the TLS handshake.
/// It costs a metric and a rate-limited log line, never an audit record (a disk write).
#[tokio::test(flavor = "multi_thread")]
async fn peers_without_a_good_certificate_are_refused_at_the_handshake_and_write_nothing() {
    let env = TestEnv::new();
    let pki = pki(&env);
    let other = env.dev_pki("other-ca", &[("impostor", ADMIN)], 365);
    let kmsd = start(
        &env,
        &pki,
        &[ADMIN],
        &flag("--metrics-listen", "127.0.0.1:0"),
    );
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    admin.create_key("before").await.unwrap();
    let before = audit_len(&env);

    let mut impostor = other.client_tls(Some("impostor"));
    impostor.ca_pem = pki.client_tls(None).ca_pem;
    for tls in [pki.client_tls(None), impostor] {
        for _ in 0..20 {
            if let Ok(mut client) = KmsClient::connect_with(kmsd.endpoint(), Some(&tls)).await {
                let e = client.list_all_keys().await.unwrap_err();
                assert_eq!(e.reason(), None, "{e}");
            }
        }
    }
    assert_eq!(
        audit_len(&env),
        before,
        "a refused peer wrote to the audit log"
    );

    let metrics = tokio::task::block_in_place(|| scrape(&kmsd.metrics_url()));
    let refused = |reason| {
        metrics
            .value("kms_refused_connections_total", &[("reason", reason)])
            .unwrap_or(0.0)
    };
    let reasons = metrics.samples("kms_refused_connections_total");
    assert!(refused("no_client_certificate") >= 20.0, "{reasons:?}");
    assert!(refused("bad_client_certificate") >= 20.0, "{reasons:?}");
    let warnings = kmsd
        .log()
        .lines()
        .filter(|l| l.contains("connection refused before any request"))
        .count();
    assert!(
        (1..=5).contains(&warnings),
        "40 refusals in a few seconds make at most a few log lines, not {warnings}"
    );
    // The administrator is unaffected.
    admin.create_key("after").await.unwrap();
}

/// Finding 4: a certificate revoked in the CRL file is refused once kmsd sees the file
/// change, on new connections and on the connection already open; an older CRL put back is
/// refused, after a restart too; SIGHUP reloads.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_certificates_are_refused_once_the_crl_names_them() {
    let env = TestEnv::new();
    let pki = env.dev_pki(
        "pki",
        &[("admin", ADMIN), ("app", APP), ("spare", TENANT_A)],
        365,
    );
    revoke(&pki, &[]);
    let crl = pki.dir.join("crl.pem");
    let kmsd = start(&env, &pki, &[ADMIN], &flag("--tls-client-crl", &crl));
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let key = admin.create_key("shared").await.unwrap().key_id;
    let mut app = kmsd.client_with(&pki.client_tls(Some("app"))).await;
    expect_error(
        app.describe_key(&key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );

    // Revoke app: within the file check's period, its open connection's calls fail. (A
    // second first, so that the new CRL's number, its time, is higher.)
    let before = std::fs::read(&crl).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    revoke(&pki, &["app"]);
    let refused = wait_until_refused(&mut app, &key).await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    // A new connection does not get past the handshake.
    if let Ok(mut again) =
        KmsClient::connect_with(kmsd.endpoint(), Some(&pki.client_tls(Some("app")))).await
    {
        assert_eq!(again.describe_key(&key).await.unwrap_err().reason(), None);
    }
    admin.describe_key(&key).await.unwrap();

    // The older CRL, put back (properly signed, but it does not name app), is refused: app
    // stays revoked.
    let after = std::fs::read(&crl).unwrap();
    std::fs::write(&crl, &before).unwrap();
    eventually("the old CRL was not refused", || async {
        kmsd.log().contains("older than")
    })
    .await;
    let still = app.describe_key(&key).await.unwrap_err();
    assert_eq!(still.code(), Code::Unauthenticated, "{still}");

    // Nor does a restart take the older CRL back: kmsd remembers the CRL numbers in force.
    let mut kmsd = kmsd;
    assert!(
        kmsd.terminate(),
        "kmsd did not stop cleanly:\n{}",
        kmsd.log()
    );
    let mut args = env.tls_args(&pki, &[ADMIN]);
    args.extend_from_slice(&flag("--tls-client-crl", &crl));
    let (_, log) = env.expect_refusal(&args, &[]);
    assert!(log.contains("older than"), "{log}");
    std::fs::write(&crl, &after).unwrap();
    let kmsd = start(&env, &pki, &[ADMIN], &flag("--tls-client-crl", &crl));
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    admin.describe_key(&key).await.unwrap();
    if let Ok(mut app) =
        KmsClient::connect_with(kmsd.endpoint(), Some(&pki.client_tls(Some("app")))).await
    {
        assert_eq!(app.describe_key(&key).await.unwrap_err().reason(), None);
    }

    // SIGHUP: a CRL written with its old modification time is read at once on the signal.
    let modified = std::fs::metadata(&crl).unwrap().modified().unwrap();
    revoke(&pki, &["spare"]);
    std::fs::File::options()
        .write(true)
        .open(&crl)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let mut spare = kmsd.client_with(&pki.client_tls(Some("spare"))).await;
    spare.list_all_aliases(None).await.unwrap_err(); // connected, and still trusted
    let status = Command::new("kill")
        .args(["-HUP", &kmsd.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let refused = wait_until_refused(&mut spare, &key).await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
}

/// A rustls client of kmsd with the client certificate `name`, which keeps whatever session
/// tickets it is given across connections.
fn raw_connector(pki: &Pki, name: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(pki.dir.join(format!("{name}.pem"))).unwrap()];
    let key = PrivateKeyDer::from_pem_file(pki.dir.join(format!("{name}-key.pem"))).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

type RawStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to kmsd that has sent the HTTP/2 preface, with whether its session was
/// resumed; `None` when the handshake failed.
async fn open_raw(
    connector: &tokio_rustls::TlsConnector,
    kmsd: &Kmsd,
) -> Option<(RawStream, bool)> {
    use tokio::io::AsyncWriteExt as _;
    let address = kmsd.endpoint().trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .ok()?;
    Some((tls, resumed))
}

/// Whether kmsd still talks on `stream`: it sends bytes within `limit` (its HTTP/2 settings,
/// pings) rather than closing it or failing.
async fn still_open(stream: &mut RawStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Whether kmsd closes `stream` (or fails it) within `limit`, reading what it sends meanwhile.
async fn closed_within(stream: &mut RawStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A resumed TLS session skips the client certificate check: kmsd must never resume, or a
/// certificate revoked after its first connection would get past the handshake again (as
/// an attacker holding session tickets would try).
#[tokio::test(flavor = "multi_thread")]
async fn no_tls_session_is_resumed_past_a_revocation() {
    let env = TestEnv::new();
    let pki = pki(&env);
    revoke(&pki, &[]);
    let crl = pki.dir.join("crl.pem");
    let kmsd = start(&env, &pki, &[ADMIN], &flag("--tls-client-crl", &crl));
    let connector = raw_connector(&pki, "app");
    let (mut first, resumed) = open_raw(&connector, &kmsd).await.unwrap();
    assert!(still_open(&mut first, Duration::from_secs(5)).await);
    assert!(!resumed);
    drop(first);

    revoke(&pki, &["app"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let Some((mut stream, resumed)) = open_raw(&connector, &kmsd).await else {
            break;
        };
        assert!(!resumed, "kmsd resumed a TLS session");
        if !still_open(&mut stream, Duration::from_secs(5)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked certificate is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One client certificate cannot hold every connection: it gets a few, and a connection
/// that sends no request is closed (after the idle timeout, at most 30 s).
#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_hold_the_connections() {
    let env = TestEnv::new();
    let pki = pki(&env);
    let mut extra = flag("--max-connections-per-client", "2").to_vec();
    extra.extend(flag("--idle-timeout", "2s"));
    extra.extend(flag("--metrics-listen", "127.0.0.1:0"));
    let kmsd = start(&env, &pki, &[ADMIN], &extra);
    let connector = raw_connector(&pki, "app");
    let (mut one, _) = open_raw(&connector, &kmsd).await.unwrap();
    let (mut two, _) = open_raw(&connector, &kmsd).await.unwrap();
    assert!(still_open(&mut one, Duration::from_secs(1)).await);
    assert!(still_open(&mut two, Duration::from_secs(1)).await);
    let third = open_raw(&connector, &kmsd).await;
    if let Some((mut third, _)) = third {
        assert!(
            closed_within(&mut third, Duration::from_secs(5)).await,
            "a third connection of one certificate was served"
        );
    }
    // Others are not affected.
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    admin.create_key("still served").await.unwrap();

    // The silent connections are closed by the idle timeout.
    for stream in [&mut one, &mut two] {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "an idle connection stayed open"
        );
    }
    let metrics = tokio::task::block_in_place(|| scrape(&kmsd.metrics_url()));
    assert_eq!(
        metrics.value(
            "kms_refused_connections_total",
            &[("reason", "client_connection_limit")]
        ),
        Some(1.0)
    );
}

/// CRL files that could undo a revocation are refused, and the revocations in force stay: two
/// CRLs of the CA (the verifier would take the first, an older one), or a CRL another CA
/// signed (its number could make every real CRL look older).
#[tokio::test(flavor = "multi_thread")]
async fn crl_files_that_could_undo_a_revocation_are_refused() {
    let env = TestEnv::new();
    let pki = pki(&env);
    let other = env.dev_pki("other-ca", &[("impostor", ADMIN)], 365);
    revoke(&other, &[]);
    revoke(&pki, &[]);
    let crl = pki.dir.join("crl.pem");
    let old = std::fs::read(&crl).unwrap();
    let kmsd = start(&env, &pki, &[ADMIN], &flag("--tls-client-crl", &crl));
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let key = admin.create_key("shared").await.unwrap().key_id;
    let mut app = kmsd.client_with(&pki.client_tls(Some("app"))).await;
    std::thread::sleep(Duration::from_millis(1100));
    revoke(&pki, &["app"]);
    wait_until_refused(&mut app, &key).await;
    let new = std::fs::read(&crl).unwrap();

    for (content, refusal) in [
        (
            [old.as_slice(), new.as_slice()].concat(),
            "two CRLs of one issuer",
        ),
        (
            std::fs::read(other.dir.join("crl.pem")).unwrap(),
            "no client CA certificate signed",
        ),
    ] {
        std::fs::write(&crl, &content).unwrap();
        eventually(
            &format!("kmsd did not refuse a CRL file: {refusal}"),
            || async { kmsd.log().contains(refusal) },
        )
        .await;
        let still = app.describe_key(&key).await.unwrap_err();
        assert_eq!(still.code(), Code::Unauthenticated, "{still}");
    }
}

/// A CRL past its next update is not trusted for ever: every client is refused (OpenSSL's
/// rule too) until a fresh CRL is in force.
#[tokio::test(flavor = "multi_thread")]
async fn a_crl_past_its_next_update_refuses_every_client_until_a_fresh_one() {
    let env = TestEnv::new();
    let pki = pki(&env);
    // A CRL whose next update is the moment it is made.
    dev_pki(
        &pki,
        &[
            "--days",
            "0",
            "--client",
            "decoy=spiffe://kms.test/decoy",
            "--revoke",
            "decoy",
        ],
    );
    let crl = pki.dir.join("crl.pem");
    let kmsd = start(&env, &pki, &[ADMIN], &flag("--tls-client-crl", &crl));
    let refused = match KmsClient::connect_with(
        kmsd.endpoint(),
        Some(&pki.client_tls(Some("admin"))),
    )
    .await
    {
        Ok(mut admin) => admin.create_key("with an expired CRL").await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(
        refused.reason(),
        None,
        "refused at the handshake: {refused}"
    );

    std::thread::sleep(Duration::from_millis(1100));
    revoke(&pki, &[]);
    let tls = pki.client_tls(Some("admin"));
    eventually("a fresh CRL was not put in force", || async {
        match KmsClient::connect_with(kmsd.endpoint(), Some(&tls)).await {
            Ok(mut admin) => admin.create_key("with a fresh CRL").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

/// Peers that open TCP connections and never finish a TLS handshake hold handshake places
/// only: the clients with certificates still get connections.
#[tokio::test(flavor = "multi_thread")]
async fn silent_peers_do_not_take_the_connections() {
    let env = TestEnv::new();
    let pki = pki(&env);
    let kmsd = start(&env, &pki, &[ADMIN], &flag("--max-connections", "2"));
    let address = kmsd.endpoint().trim_start_matches("https://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    admin.create_key("past the silent peers").await.unwrap();
    drop(silent);
}

/// Rewrites the dev PKI's CRL to revoke what it revoked before and `names` (an empty CRL
/// when there is nothing to revoke yet: a revoked decoy).
fn revoke(pki: &Pki, names: &[&str]) {
    let mut args = Vec::new();
    if names.is_empty() {
        args.extend([
            "--client",
            "decoy=spiffe://kms.test/decoy",
            "--revoke",
            "decoy",
        ]);
    }
    for name in names {
        args.extend(["--revoke", name]);
    }
    dev_pki(pki, &args);
}

/// Runs `kmsctl dev-pki` on the dev PKI's directory with `args`.
fn dev_pki(pki: &Pki, args: &[&str]) {
    let out = Command::new(bin("kmsctl"))
        .args(["dev-pki", "--dir"])
        .arg(&pki.dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `done` says so, at most 20 s; fails naming `what` after that.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Calls DescribeKey until it fails with UNAUTHENTICATED (at most 20 s); returns the error.
async fn wait_until_refused(client: &mut KmsClient, key: &str) -> kms_client::ClientError {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.describe_key(key).await {
            Err(e) if e.code() == Code::Unauthenticated => return e,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "still not refused: {:?}",
                    other.map(|m| m.key_id)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Finding 3: a certificate whose CN reads like the administrator's URI, without a URI SAN,
/// is nobody by default, and `CN=<name>` (never the administrator) when CNs are allowed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cn_never_passes_for_a_uri_principal() {
    let env = TestEnv::new();
    let pki = pki(&env);
    let forged = cn_only_certificate(&pki, "cn-admin", ADMIN);
    {
        let kmsd = start(&env, &pki, &[ADMIN], &[]);
        let mut client = kmsd.client_with(&forged).await;
        let message = expect_error(
            client.create_key("as the admin?").await,
            Code::Unauthenticated,
            "AccessDeniedException",
        );
        assert!(message.contains("no URI SAN"), "{message}");
    }
    let kmsd = start(&env, &pki, &[ADMIN], &["--allow-cn-principals".to_owned()]);
    let mut client = kmsd.client_with(&forged).await;
    let message = expect_error(
        client.create_key("as the admin?").await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(message.contains(&format!("CN={ADMIN}")), "{message}");
}

/// A client certificate from the dev CA with subject CN `cn` and no URI SAN, made with
/// openssl as a careless CA would.
fn cn_only_certificate(pki: &Pki, name: &str, cn: &str) -> ClientTls {
    let dir = &pki.dir;
    let key = dir.join(format!("{name}-key.pem"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // openssl's -subj separates RDNs with '/': escape the URI's.
    let subject = format!("/CN={}", cn.replace('/', "\\/"));
    openssl(&[
        "req".as_ref(),
        "-new".as_ref(),
        "-newkey".as_ref(),
        "ec".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-nodes".as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        csr.as_os_str(),
        "-subj".as_ref(),
        subject.as_ref(),
    ]);
    openssl(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        pki.ca().as_os_str(),
        "-CAkey".as_ref(),
        dir.join("ca-key.pem").as_os_str(),
        "-CAcreateserial".as_ref(),
        "-days".as_ref(),
        "30".as_ref(),
        "-extfile".as_ref(),
        ext.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);
    pki.client_tls(Some(name))
}

/// Finding 5: alias names are global, so who may take one is the server policy's call (with
/// kms:AliasName), not only the target key's. Finding 4: default policies name the
/// administrators symbolically, and a server-policy Deny binds key actions too.
#[tokio::test(flavor = "multi_thread")]
async fn alias_names_administrators_and_server_denies_are_enforced() {
    let env = TestEnv::new();
    let pki = pki(&env);
    let policy = env.path().join("server-policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"Statement": [
                {{"Effect": "Allow", "Principal": "{TENANT_A}", "Action": "kms:CreateKey"}},
                {{"Effect": "Allow", "Principal": "{TENANT_A}",
                  "Action": ["kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias"],
                  "Condition": {{"StringLike": {{"kms:AliasName": "alias/tenant-a/*"}}}}}},
                {{"Effect": "Deny", "Principal": "{APP}", "Action": "kms:Decrypt"}}
            ]}}"#
        ),
    )
    .unwrap();
    let policy_flag = flag("--server-policy-file", &policy);
    let mut kmsd = start(&env, &pki, &[ADMIN], &policy_flag);
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let mut tenant = kmsd.client_with(&pki.client_tls(Some("tenant-a"))).await;
    let mut app = kmsd.client_with(&pki.client_tls(Some("app"))).await;

    // The tenant may name its own keys under its prefix only, even with full rights on the
    // key; the administrator takes the global name first, and the tenant cannot move it.
    let tenant_key = tenant.create_key("tenant's").await.unwrap().key_id;
    let message = expect_error(
        tenant.create_alias("alias/payments", &tenant_key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(message.contains("alias/payments"), "{message}");
    tenant
        .create_alias("alias/tenant-a/payments", &tenant_key)
        .await
        .unwrap();
    let admin_key = admin
        .create_key("the real payments key")
        .await
        .unwrap()
        .key_id;
    admin
        .create_alias("alias/payments", &admin_key)
        .await
        .unwrap();
    expect_error(
        tenant.update_alias("alias/payments", &tenant_key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    expect_error(
        tenant.delete_alias("alias/payments").await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );

    // A key policy that lets app decrypt does not beat the server policy's Deny.
    let blob = admin
        .encrypt(&admin_key, b"for app?", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    admin
        .put_key_policy(
            &admin_key,
            &format!(
                r##"{{"Statement": [
                    {{"Effect": "Allow", "Principal": "#administrators", "Action": "kms:*"}},
                    {{"Effect": "Allow", "Principal": "{APP}", "Action": "kms:*"}}]}}"##
            ),
            false,
        )
        .await
        .unwrap();
    app.describe_key(&admin_key).await.unwrap();
    let message = expect_error(
        app.decrypt(&blob, &ctx(&[]), None).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(message.contains("server policy"), "{message}");

    // An administrator removed from the configuration loses the keys' default policies.
    let default_key = tenant.create_key("default policy").await.unwrap().key_id;
    let text = admin.get_key_policy(&default_key).await.unwrap();
    assert!(
        text.contains("#administrators") && !text.contains(ADMIN),
        "{text}"
    );
    drop((admin, tenant, app));
    assert!(kmsd.terminate());
    let kmsd = start(&env, &pki, &[APP], &policy_flag);
    let mut former = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    expect_error(
        former.describe_key(&default_key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let mut new_admin = kmsd.client_with(&pki.client_tls(Some("app"))).await;
    new_admin.describe_key(&default_key).await.unwrap();
}
