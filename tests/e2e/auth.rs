//! Authentication (mutual TLS), key policies and the audit log, on a real kmsd with TLS.

use std::process::Output;

use kms_client::{ClientError, ClientTls, KmsClient, v1 as pb};
use kms_e2e::{Kmsd, Pki, TestEnv};
use tonic::Code;

use crate::{ctx, expect_error};

const ADMIN: &str = "spiffe://kms.test/admin";
const STRANGER: &str = "spiffe://kms.test/stranger";
const TENANT_A: &str = "spiffe://kms.test/tenant-a";
const TENANT_B: &str = "spiffe://kms.test/tenant-b";

/// A TLS kmsd whose administrator is [`ADMIN`], with client certificates `admin`,
/// `stranger`, `tenant-a` and `tenant-b` from its CA.
fn tls_kmsd(env: &TestEnv) -> (Kmsd, Pki) {
    let pki = env.dev_pki(
        "pki",
        &[
            ("admin", ADMIN),
            ("stranger", STRANGER),
            ("tenant-a", TENANT_A),
            ("tenant-b", TENANT_B),
        ],
        365,
    );
    let kmsd = env
        .start_with(&env.tls_args(&pki, &[ADMIN]), &[])
        .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"));
    (kmsd, pki)
}

/// Calls every RPC of the API once with plausible arguments naming `key` (and `blob`, a
/// ciphertext under it, and `alias`, an alias of it); returns each RPC's name and result.
async fn call_every_rpc(
    client: &mut KmsClient,
    key: &str,
    blob: &[u8],
    alias: &str,
) -> Vec<(&'static str, Result<(), ClientError>)> {
    let raw = client.raw();
    let key_id = || key.to_owned();
    let mut results = Vec::new();
    macro_rules! call {
        ($name:literal, $method:ident, $request:expr) => {
            results.push((
                $name,
                raw.$method($request)
                    .await
                    .map(drop)
                    .map_err(ClientError::from),
            ));
        };
    }
    call!("CreateKey", create_key, pb::CreateKeyRequest::default());
    call!(
        "DescribeKey",
        describe_key,
        pb::DescribeKeyRequest { key_id: key_id() }
    );
    call!("ListKeys", list_keys, pb::ListKeysRequest::default());
    call!(
        "EnableKey",
        enable_key,
        pb::EnableKeyRequest { key_id: key_id() }
    );
    call!(
        "DisableKey",
        disable_key,
        pb::DisableKeyRequest { key_id: key_id() }
    );
    call!(
        "UpdateKeyDescription",
        update_key_description,
        pb::UpdateKeyDescriptionRequest {
            key_id: key_id(),
            description: "x".into()
        }
    );
    call!(
        "Encrypt",
        encrypt,
        pb::EncryptRequest {
            key_id: key_id(),
            plaintext: b"secret".to_vec(),
            ..Default::default()
        }
    );
    call!(
        "Decrypt",
        decrypt,
        pb::DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            ..Default::default()
        }
    );
    call!(
        "ReEncrypt",
        re_encrypt,
        pb::ReEncryptRequest {
            ciphertext_blob: blob.to_vec(),
            destination_key_id: key_id(),
            ..Default::default()
        }
    );
    call!(
        "GenerateDataKey",
        generate_data_key,
        pb::GenerateDataKeyRequest {
            key_id: key_id(),
            number_of_bytes: Some(32),
            ..Default::default()
        }
    );
    call!(
        "GenerateDataKeyWithoutPlaintext",
        generate_data_key_without_plaintext,
        pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: key_id(),
            number_of_bytes: Some(32),
            ..Default::default()
        }
    );
    call!(
        "GenerateRandom",
        generate_random,
        pb::GenerateRandomRequest { number_of_bytes: 8 }
    );
    call!(
        "CreateAlias",
        create_alias,
        pb::CreateAliasRequest {
            alias_name: "alias/other".into(),
            target_key_id: key_id()
        }
    );
    call!(
        "UpdateAlias",
        update_alias,
        pb::UpdateAliasRequest {
            alias_name: alias.to_owned(),
            target_key_id: key_id()
        }
    );
    call!(
        "DeleteAlias",
        delete_alias,
        pb::DeleteAliasRequest {
            alias_name: alias.to_owned()
        }
    );
    call!(
        "ListAliases",
        list_aliases,
        pb::ListAliasesRequest::default()
    );
    call!(
        "TagResource",
        tag_resource,
        pb::TagResourceRequest {
            key_id: key_id(),
            tags: vec![pb::Tag {
                tag_key: "k".into(),
                tag_value: "v".into()
            }]
        }
    );
    call!(
        "UntagResource",
        untag_resource,
        pb::UntagResourceRequest {
            key_id: key_id(),
            tag_keys: vec!["k".into()]
        }
    );
    call!(
        "ListResourceTags",
        list_resource_tags,
        pb::ListResourceTagsRequest {
            key_id: key_id(),
            ..Default::default()
        }
    );
    call!(
        "RotateKeyOnDemand",
        rotate_key_on_demand,
        pb::RotateKeyOnDemandRequest { key_id: key_id() }
    );
    call!(
        "ListKeyRotations",
        list_key_rotations,
        pb::ListKeyRotationsRequest {
            key_id: key_id(),
            ..Default::default()
        }
    );
    call!(
        "EnableKeyRotation",
        enable_key_rotation,
        pb::EnableKeyRotationRequest {
            key_id: key_id(),
            rotation_period_in_days: None
        }
    );
    call!(
        "DisableKeyRotation",
        disable_key_rotation,
        pb::DisableKeyRotationRequest { key_id: key_id() }
    );
    call!(
        "GetKeyRotationStatus",
        get_key_rotation_status,
        pb::GetKeyRotationStatusRequest { key_id: key_id() }
    );
    call!(
        "ScheduleKeyDeletion",
        schedule_key_deletion,
        pb::ScheduleKeyDeletionRequest {
            key_id: key_id(),
            pending_window_in_days: None
        }
    );
    call!(
        "CancelKeyDeletion",
        cancel_key_deletion,
        pb::CancelKeyDeletionRequest { key_id: key_id() }
    );
    call!(
        "GetKeyPolicy",
        get_key_policy,
        pb::GetKeyPolicyRequest { key_id: key_id() }
    );
    call!(
        "PutKeyPolicy",
        put_key_policy,
        pb::PutKeyPolicyRequest {
            key_id: key_id(),
            policy: r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*"}}"#.into(),
            bypass_policy_lockout_safety_check: true
        }
    );
    call!(
        "GetPublicKey",
        get_public_key,
        pb::GetPublicKeyRequest { key_id: key_id() }
    );
    call!(
        "Sign",
        sign,
        pb::SignRequest {
            key_id: key_id(),
            message: b"m".to_vec(),
            signing_algorithm: pb::SigningAlgorithm::EcdsaSha256.into(),
            ..Default::default()
        }
    );
    call!(
        "Verify",
        verify,
        pb::VerifyRequest {
            key_id: key_id(),
            message: b"m".to_vec(),
            signature: vec![1; 64],
            signing_algorithm: pb::SigningAlgorithm::EcdsaSha256.into(),
            ..Default::default()
        }
    );
    call!(
        "GenerateMac",
        generate_mac,
        pb::GenerateMacRequest {
            key_id: key_id(),
            message: b"m".to_vec(),
            mac_algorithm: pb::MacAlgorithm::HmacSha256.into()
        }
    );
    call!(
        "VerifyMac",
        verify_mac,
        pb::VerifyMacRequest {
            key_id: key_id(),
            message: b"m".to_vec(),
            mac: vec![0; 32],
            mac_algorithm: pb::MacAlgorithm::HmacSha256.into()
        }
    );
    call!(
        "GetParametersForImport",
        get_parameters_for_import,
        pb::GetParametersForImportRequest {
            key_id: key_id(),
            wrapping_algorithm: pb::WrappingAlgorithm::RsaesOaepSha1.into(),
            wrapping_key_spec: pb::WrappingKeySpec::Rsa3072.into()
        }
    );
    call!(
        "ImportKeyMaterial",
        import_key_material,
        pb::ImportKeyMaterialRequest {
            key_id: key_id(),
            import_token: vec![0; 56],
            encrypted_key_material: vec![0; 384],
            ..Default::default()
        }
    );
    call!(
        "DeleteImportedKeyMaterial",
        delete_imported_key_material,
        pb::DeleteImportedKeyMaterialRequest { key_id: key_id() }
    );
    results
}

/// The number of RPCs in the service; `call_every_rpc` must call each.
const RPC_COUNT: usize = 36;

/// Issues the client certificate `name` (`NAME.pem` and `NAME-key.pem`) for `principal` from
/// `pki`'s CA, as `kmsctl dev-pki` does, but valid over `days` (from now; negative is past).
fn issue_client_cert(pki: &Pki, name: &str, principal: &str, days: std::ops::Range<i64>) {
    let read = |file: &str| std::fs::read_to_string(pki.dir.join(file)).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&read("ca-key.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, principal);
    params.subject_alt_names = vec![rcgen::SanType::URI(principal.try_into().unwrap())];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.start);
    params.not_after = now + time::Duration::days(days.end);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(pki.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(pki.dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

fn tls_with_ca_of(pki: &Pki, identity_from: &Pki, name: &str) -> ClientTls {
    let mut tls = identity_from.client_tls(Some(name));
    tls.ca_pem = pki.client_tls(None).ca_pem;
    tls
}

#[tokio::test]
async fn every_rpc_refuses_bad_certificates_and_principals_the_policy_does_not_allow() {
    let env = TestEnv::new();
    let (kmsd, pki) = tls_kmsd(&env);
    // Another CA issues a certificate with the administrator's name; the right CA issues one
    // that expired yesterday, and one just like it but valid now (which kmsd must accept, so
    // that `expired` is refused for its dates alone).
    let other = env.dev_pki("other-ca", &[("impostor", ADMIN)], 365);
    issue_client_cert(&pki, "expired", ADMIN, -2..-1);
    issue_client_cert(&pki, "current", ADMIN, -1..1);

    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let key = admin.create_key("guarded").await.unwrap().key_id;
    let blob = admin
        .encrypt(&key, b"guarded data", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    admin.create_alias("alias/guarded", &key).await.unwrap();
    let mut current = kmsd.client_with(&pki.client_tls(Some("current"))).await;
    assert_eq!(current.describe_key(&key).await.unwrap().key_id, key);

    let unauthenticated = [
        ("no certificate", pki.client_tls(None)),
        ("another CA", tls_with_ca_of(&pki, &other, "impostor")),
        ("expired", pki.client_tls(Some("expired"))),
    ];
    // Refused at the TLS handshake: the connection fails, or every call on it does, and
    // nothing reaches the service (no AWS reason, no audit record).
    for (what, tls) in &unauthenticated {
        let Ok(mut client) = KmsClient::connect_with(kmsd.endpoint(), Some(tls)).await else {
            continue;
        };
        let results = call_every_rpc(&mut client, &key, &blob, "alias/guarded").await;
        assert_eq!(results.len(), RPC_COUNT);
        for (rpc, result) in results {
            let e = result
                .err()
                .unwrap_or_else(|| panic!("{rpc} with {what} succeeded"));
            assert_eq!(e.reason(), None, "{rpc} with {what}: {e}");
        }
    }

    let mut stranger = kmsd.client_with(&pki.client_tls(Some("stranger"))).await;
    let results = call_every_rpc(&mut stranger, &key, &blob, "alias/guarded").await;
    assert_eq!(results.len(), RPC_COUNT);
    for (rpc, result) in results {
        let e = result
            .err()
            .unwrap_or_else(|| panic!("{rpc} by a stranger succeeded"));
        assert_eq!(e.code(), Code::PermissionDenied, "{rpc}: {e}");
        assert_eq!(e.reason(), Some("AccessDeniedException"), "{rpc}");
    }

    // The administrator, named in the default policy, still can do everything.
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let plaintext = admin.decrypt(&blob, &ctx(&[]), None).await.unwrap();
    assert_eq!(plaintext.plaintext.as_slice(), b"guarded data");
    assert_eq!(admin.describe_key(&key).await.unwrap().key_id, key);
    assert_eq!(
        admin.list_all_aliases(None).await.unwrap()[0].alias_name,
        "alias/guarded"
    );
}

const TENANT_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Admin", "Effect": "Allow", "Principal": "spiffe://kms.test/admin", "Action": "kms:*"},
    {"Sid": "TenantA", "Effect": "Allow", "Principal": "spiffe://kms.test/tenant-a",
     "Action": ["kms:Encrypt", "kms:Decrypt"],
     "Condition": {"StringEquals": {"kms:EncryptionContext:tenant": "a"}}},
    {"Sid": "TenantB", "Effect": "Allow", "Principal": "spiffe://kms.test/tenant-b",
     "Action": ["kms:Encrypt", "kms:Decrypt"],
     "Condition": {"StringEquals": {"kms:EncryptionContext:tenant": "b"}}},
    {"Sid": "NoDecryptForB", "Effect": "Deny", "Principal": "spiffe://kms.test/tenant-b",
     "Action": "kms:Decrypt"}
  ]
}"#;

#[tokio::test]
async fn context_conditions_and_explicit_denies_are_enforced() {
    let env = TestEnv::new();
    let (kmsd, pki) = tls_kmsd(&env);
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let key = admin
        .create_key_with_policy("tenants", &[], TENANT_POLICY, false)
        .await
        .unwrap()
        .key_id;
    assert_eq!(admin.get_key_policy(&key).await.unwrap(), TENANT_POLICY);

    let mut a = kmsd.client_with(&pki.client_tls(Some("tenant-a"))).await;
    let mut b = kmsd.client_with(&pki.client_tls(Some("tenant-b"))).await;
    let tenant_a = ctx(&[("tenant", "a")]);
    let tenant_b = ctx(&[("tenant", "b")]);

    let blob_a = a
        .encrypt(&key, b"for a", &tenant_a)
        .await
        .unwrap()
        .ciphertext_blob;
    let decrypted = a.decrypt(&blob_a, &tenant_a, None).await.unwrap();
    assert_eq!(decrypted.plaintext.as_slice(), b"for a");
    // Tenant A may not use tenant B's context, nor no context at all.
    expect_error(
        a.encrypt(&key, b"x", &tenant_b).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    expect_error(
        a.encrypt(&key, b"x", &ctx(&[])).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let blob_b = b
        .encrypt(&key, b"for b", &tenant_b)
        .await
        .unwrap()
        .ciphertext_blob;
    expect_error(
        a.decrypt(&blob_b, &tenant_b, None).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    // TenantB allows B to decrypt with its context, but NoDecryptForB denies it: Deny wins.
    let message = expect_error(
        b.decrypt(&blob_b, &tenant_b, None).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    assert!(message.contains("denies"), "{message}");
    expect_error(
        b.describe_key(&key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );

    // kmsctl simulates with the server's evaluation code.
    let simulate = |principal: &str, action: &str, context: &str| {
        let out = kmsd.kmsctl_tls(
            &pki.kmsctl_flags("admin"),
            &[
                "policy",
                "simulate",
                "--key",
                &key,
                "--principal",
                principal,
                "--action",
                action,
                "--context",
                context,
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        simulate(TENANT_B, "kms:Decrypt", "tenant=b"),
        r#"Deny (explicit, Sid "NoDecryptForB")"#
    );
    assert_eq!(
        simulate(TENANT_A, "kms:Decrypt", "tenant=a"),
        r#"Allow (Sid "TenantA")"#
    );
    assert_eq!(
        simulate(TENANT_A, "Decrypt", "tenant=b"),
        "Deny (implicit: no statement allows it)"
    );

    // The audit log names the statement that decided.
    drop((a, b, admin));
    let (log, _) = Kmsd::audit_files(&env.data_dir());
    let search = run_kmsctl(&[
        "--output",
        "json",
        "audit",
        "search",
        "--log",
        &log.to_string_lossy(),
        "--principal",
        TENANT_B,
        "--outcome",
        "denied",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|r| r["operation"] == "Decrypt"
            && r["policy_statement"] == r#"Sid "NoDecryptForB""#
            && r["encryption_context"]["tenant"] == "b"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn put_key_policy_refuses_lockouts_and_malformed_policies() {
    let env = TestEnv::new();
    let (kmsd, pki) = tls_kmsd(&env);
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let key = admin.create_key("policies").await.unwrap().key_id;
    let default = admin.get_key_policy(&key).await.unwrap();
    assert!(default.contains(ADMIN), "{default}");

    let message = expect_error(
        admin
            .put_key_policy(&key, r#"{"Statement":[{"Sid":"S","Effect":"Allow","Principal":"*","Action":"kms:Encrpt"}]}"#, false)
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(
        message.contains("Statement[1]") && message.contains("kms:Encrpt"),
        "{message}"
    );

    let tenant_only = r#"{"Statement":[{"Effect":"Allow","Principal":"spiffe://kms.test/tenant-a","Action":"kms:*"}]}"#;
    let message = expect_error(
        admin.put_key_policy(&key, tenant_only, false).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(message.contains("PutKeyPolicy"), "{message}");
    // Said explicitly, it applies, and the administrator is locked out.
    admin.put_key_policy(&key, tenant_only, true).await.unwrap();
    expect_error(
        admin.get_key_policy(&key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
    );
    let mut a = kmsd.client_with(&pki.client_tls(Some("tenant-a"))).await;
    assert_eq!(a.get_key_policy(&key).await.unwrap(), tenant_only);
}

fn run_kmsctl(args: &[&str]) -> Output {
    std::process::Command::new(kms_e2e::bin("kmsctl"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_audit_log_verifies_and_any_tampering_is_found_and_located() {
    let env = TestEnv::new();
    let (mut kmsd, pki) = tls_kmsd(&env);
    let mut admin = kmsd.client_with(&pki.client_tls(Some("admin"))).await;
    let key = admin.create_key("audited").await.unwrap().key_id;
    let secret = b"PLAINTEXT-MARKER-7d41";
    let blob = admin
        .encrypt(&key, secret, &ctx(&[("app", "billing")]))
        .await
        .unwrap()
        .ciphertext_blob;
    admin
        .decrypt(&blob, &ctx(&[("app", "billing")]), None)
        .await
        .unwrap();
    let data_key = admin
        .generate_data_key(&key, &ctx(&[]), kms_client::DataKeySize::Aes256)
        .await
        .unwrap();
    let mut stranger = kmsd.client_with(&pki.client_tls(Some("stranger"))).await;
    stranger.describe_key(&key).await.unwrap_err();
    // A caller without a certificate never gets past the TLS handshake: no record.
    if let Ok(mut anonymous) =
        KmsClient::connect_with(kmsd.endpoint(), Some(&pki.client_tls(None))).await
    {
        anonymous.list_all_keys().await.unwrap_err();
    }
    drop((admin, stranger));
    assert!(
        kmsd.terminate(),
        "kmsd did not stop cleanly:\n{}",
        kmsd.log()
    );

    let (log, public_key) = Kmsd::audit_files(&env.data_dir());
    let bytes = std::fs::read(&log).unwrap();
    assert!(
        !contains(&bytes, secret),
        "a plaintext reached the audit log"
    );
    assert!(
        !contains(&bytes, &data_key.plaintext),
        "a data key reached the audit log"
    );
    assert!(
        !contains(&bytes, env.pin().as_bytes()),
        "the PIN reached the audit log"
    );

    let verify = |path: &std::path::Path| {
        run_kmsctl(&[
            "audit",
            "verify",
            "--log",
            &path.to_string_lossy(),
            "--public-key",
            &public_key.to_string_lossy(),
        ])
    };
    let out = verify(&log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verified: 5 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Every denied call is there, with its principal and peer.
    let search = run_kmsctl(&[
        "--output",
        "json",
        "audit",
        "search",
        "--log",
        &log.to_string_lossy(),
        "--outcome",
        "denied",
        "--since",
        "1h",
    ]);
    let denied: Vec<serde_json::Value> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0]["principal"], STRANGER);
    assert_eq!(denied[0]["keys"][0]["key_id"], key.as_str());
    assert!(
        denied[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let by_key = run_kmsctl(&[
        "--output",
        "json",
        "audit",
        "search",
        "--log",
        &log.to_string_lossy(),
        "--key",
        &key,
        "--principal",
        ADMIN,
    ]);
    assert_eq!(String::from_utf8_lossy(&by_key.stdout).lines().count(), 4);
    let tail = run_kmsctl(&["audit", "tail", "--log", &log.to_string_lossy(), "-n", "2"]);
    let tail = String::from_utf8_lossy(&tail.stdout).into_owned();
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(
        tail.contains("DescribeKey") && tail.contains(STRANGER),
        "{tail}"
    );

    // Tamper with copies: flip a byte, delete a line, swap two lines.
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 8, "{text}");
    let tampered = env.path().join("tampered.log");
    let check = |content: String, expect_line: usize| {
        std::fs::write(&tampered, content).unwrap();
        let out = verify(&tampered);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "tampering was not detected");
        assert!(stderr.contains(&format!("line {expect_line}:")), "{stderr}");
    };
    // Flip one byte of line 3's principal: line 4's hash of line 3 no longer matches.
    let mut flipped = lines.clone();
    let altered = lines[2].replacen("spiffe://kms.test/admin", "spiffe://kms.test/admiN", 1);
    assert_ne!(altered, lines[2]);
    flipped[2] = &altered;
    check(flipped.join("\n") + "\n", 4);
    // Delete line 3.
    let mut deleted = lines.clone();
    deleted.remove(2);
    check(deleted.join("\n") + "\n", 3);
    // Swap lines 3 and 4.
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    check(swapped.join("\n") + "\n", 3);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn kmsd_refuses_to_serve_without_tls_unless_in_dev_mode() {
    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.retain(|a| a != "--dev");
    let (_, log) = env.expect_refusal(&args, &[]);
    assert!(log.contains("needs mutual TLS"), "{log}");
    let mut public = env.kmsd_args();
    public[1] = "0.0.0.0:0".to_owned();
    let (_, log) = env.expect_refusal(&public, &[]);
    assert!(log.contains("not a loopback address"), "{log}");
}
