//! Tests of `grpc`.

use tonic::Code;
use tonic_types::StatusExt;

use kms_proto::v1 as pb;
use kms_proto::v1::key_management_service_server::KeyManagementService;
use tonic::Request;

use super::*;

/// A `--dev` service on memory backends, auditing to a temporary file.
fn service_with_log() -> (KmsGrpc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kms =
        kms_core::testing::memory_kms()
            .0
            .with_authorization(kms_core::service::Authorization {
                administrators: vec![crate::auth::DEV_PRINCIPAL.to_owned()],
                server_policy: None,
            });
    let audit = kms_audit::AuditLog::open(
        &dir.path().join("audit.log"),
        [7; 16],
        Arc::new(kms_core::testing::SoftCheckpointSigner::new()),
        Arc::new(kms_core::testing::MemoryStore::default()),
    )
    .unwrap();
    let svc = KmsGrpc::new(Arc::new(kms), Arc::new(Authenticator::Dev), Arc::new(audit));
    (svc, dir)
}

fn service() -> KmsGrpc {
    // The log's directory may go: the open file stays writable.
    service_with_log().0
}

/// A body that is not one whole protobuf message of the RPC is the caller's fault: found
/// by the rpc fuzz target, which got INTERNAL from tonic for each of these.
#[tokio::test]
async fn a_body_that_is_not_one_message_is_the_callers_fault() {
    use http_body_util::BodyExt as _;
    use tower::Service as _;
    let mut server = service().into_server();
    let oversized = [&[0, 0, 1, 0, 1][..], &vec![0; 65_537]].concat();
    for (body, code) in [
        // A field tag with no value.
        (vec![0, 0, 0, 0, 1, 0x21], Code::InvalidArgument),
        (Vec::new(), Code::InvalidArgument),
        (vec![0, 0, 0, 0, 10, 8, 1], Code::InvalidArgument),
        (vec![1, 0, 0, 0, 2, 8, 1], Code::InvalidArgument),
        (vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Code::InvalidArgument),
        (oversized, Code::OutOfRange),
    ] {
        let length = body.len();
        let request = http::Request::post("/kms.v1.KeyManagementService/CancelKeyDeletion")
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                hyper::body::Bytes::from(body),
            )))
            .unwrap();
        let response = server.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let trailers = body.collect().await.unwrap().trailers().cloned();
        let headers = trailers.unwrap_or(parts.headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), code, "{length} bytes: {status:?}");
        assert_eq!(reason(&status), "ValidationException");
    }
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

async fn new_key(svc: &KmsGrpc) -> String {
    svc.create_key(Request::new(pb::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

#[tokio::test]
async fn sign_and_verify_handlers_convert_and_delegate() {
    let svc = service();
    let create = |spec: pb::KeySpec| {
        Request::new(pb::CreateKeyRequest {
            key_spec: spec.into(),
            ..Default::default()
        })
    };
    let ec = svc
        .create_key(create(pb::KeySpec::EccNistP256))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(ec.key_usage(), pb::KeyUsage::SignVerify);
    assert_eq!(
        ec.signing_algorithms().collect::<Vec<_>>(),
        [pb::SigningAlgorithm::EcdsaSha256]
    );
    let public = svc
        .get_public_key(Request::new(pb::GetPublicKeyRequest {
            key_id: ec.key_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(public.key_spec(), pb::KeySpec::EccNistP256);
    assert_eq!(public.public_key.len(), 91, "a P-256 SubjectPublicKeyInfo");

    let sign = |message: &[u8], algorithm: pb::SigningAlgorithm| {
        Request::new(pb::SignRequest {
            key_id: ec.key_id.clone(),
            message: message.to_vec(),
            signing_algorithm: algorithm.into(),
            ..Default::default()
        })
    };
    let signature = svc
        .sign(sign(b"hello", pb::SigningAlgorithm::EcdsaSha256))
        .await
        .unwrap()
        .into_inner()
        .signature;
    let verify = |message: &[u8]| {
        Request::new(pb::VerifyRequest {
            key_id: ec.key_id.clone(),
            message: message.to_vec(),
            signature: signature.clone(),
            signing_algorithm: pb::SigningAlgorithm::EcdsaSha256.into(),
            ..Default::default()
        })
    };
    assert!(
        svc.verify(verify(b"hello"))
            .await
            .unwrap()
            .into_inner()
            .signature_valid
    );
    let bad = svc.verify(verify(b"hellO")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(reason(&bad), "KMSInvalidSignatureException");
    let unspecified = svc
        .sign(sign(b"hello", pb::SigningAlgorithm::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(reason(&unspecified), "ValidationException");
    let wrong = svc
        .sign(sign(b"hello", pb::SigningAlgorithm::RsassaPssSha256))
        .await
        .unwrap_err();
    assert_eq!(reason(&wrong), "InvalidKeyUsageException");
}

#[tokio::test]
async fn mac_handlers_convert_and_delegate() {
    let svc = service();
    let hmac = svc
        .create_key(Request::new(pb::CreateKeyRequest {
            key_spec: pb::KeySpec::Hmac256.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let mac = svc
        .generate_mac(Request::new(pb::GenerateMacRequest {
            key_id: hmac.clone(),
            message: b"m".to_vec(),
            mac_algorithm: pb::MacAlgorithm::HmacSha256.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .mac;
    let verify_mac = |mac: Vec<u8>| {
        Request::new(pb::VerifyMacRequest {
            key_id: hmac.clone(),
            message: b"m".to_vec(),
            mac,
            mac_algorithm: pb::MacAlgorithm::HmacSha256.into(),
        })
    };
    assert!(
        svc.verify_mac(verify_mac(mac.clone()))
            .await
            .unwrap()
            .into_inner()
            .mac_valid
    );
    let mut flipped = mac;
    flipped[31] ^= 1;
    let bad = svc.verify_mac(verify_mac(flipped)).await.unwrap_err();
    assert_eq!(reason(&bad), "KMSInvalidMacException");
}

#[tokio::test]
async fn handlers_map_errors_to_codes_and_reasons() {
    let svc = service();
    let key_id = new_key(&svc).await;

    let too_big = svc
        .encrypt(Request::new(pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: vec![0; 4097],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert_eq!(reason(&too_big), "ValidationException");
    assert!(
        !too_big.message().contains("\0\0"),
        "no plaintext in the message"
    );

    let garbage = svc
        .decrypt(Request::new(pb::DecryptRequest {
            ciphertext_blob: vec![1; 200],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert_eq!(reason(&garbage), "InvalidCiphertextException");

    let missing = svc
        .describe_key(Request::new(pb::DescribeKeyRequest {
            key_id: "6f1c2e3a-9b7d-4c5e-8f01-23456789abcd".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "NotFoundException");

    svc.disable_key(Request::new(pb::DisableKeyRequest {
        key_id: key_id.clone(),
    }))
    .await
    .unwrap();
    let disabled = svc
        .generate_data_key(Request::new(pb::GenerateDataKeyRequest {
            key_id,
            key_spec: pb::DataKeySpec::Aes256.into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(disabled.code(), Code::FailedPrecondition);
    assert_eq!(reason(&disabled), "DisabledException");

    let zero = svc
        .generate_random(Request::new(pb::GenerateRandomRequest {
            number_of_bytes: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(reason(&zero), "ValidationException");
}

#[tokio::test]
async fn generate_data_key_without_plaintext_returns_a_decryptable_blob() {
    let svc = service();
    let key_id = new_key(&svc).await;
    let out = svc
        .generate_data_key_without_plaintext(Request::new(
            pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: key_id.clone(),
                number_of_bytes: Some(24),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.key_id, key_id);
    let plaintext = svc
        .decrypt(Request::new(pb::DecryptRequest {
            ciphertext_blob: out.ciphertext_blob,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext.len(), 24);
}

#[tokio::test]
async fn every_call_is_audited_with_its_key_and_request_id() {
    let (svc, dir) = service_with_log();
    let key_id = new_key(&svc).await;
    let mut request = Request::new(pb::EncryptRequest {
        key_id: key_id.clone(),
        plaintext: b"audit me not".to_vec(),
        encryption_context: [("tenant".to_owned(), "a".to_owned())].into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert(REQUEST_ID_HEADER, "req-42".parse().unwrap());
    let response = svc.encrypt(request).await.unwrap();
    assert_eq!(
        response.metadata().get(REQUEST_ID_HEADER).unwrap(),
        "req-42"
    );
    let missing = svc
        .describe_key(Request::new(pb::DescribeKeyRequest {
            key_id: "not-a-key".into(),
        }))
        .await
        .unwrap_err();
    assert!(missing.metadata().get(REQUEST_ID_HEADER).is_some());

    let bytes = std::fs::read(dir.path().join("audit.log")).unwrap();
    assert!(!bytes.windows(12).any(|w| w == b"audit me not"));
    let events: Vec<_> = kms_core::audit::read_events(&bytes)
        .map(|e| e.unwrap().1.event)
        .collect();
    let ops: Vec<_> = events.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops, ["CreateKey", "Encrypt", "DescribeKey"]);
    let encrypt = &events[1];
    assert_eq!(encrypt.request_id, "req-42");
    assert_eq!(encrypt.principal.as_deref(), Some("dev"));
    assert_eq!(encrypt.keys[0].key_id, key_id);
    assert_eq!(encrypt.keys[0].version, Some(1));
    assert_eq!(encrypt.encryption_context.as_ref().unwrap()["tenant"], "a");
    assert_eq!(events[2].outcome, kms_core::audit::Outcome::Failed);
    assert_eq!(events[2].error.as_deref(), Some("ValidationException"));
}

/// The audited operations in the log of `dir`, waiting up to 5 s for `wanted` of them.
async fn audited(dir: &tempfile::TempDir, wanted: usize) -> Vec<kms_core::audit::AuditEvent> {
    for _ in 0..100 {
        let bytes = std::fs::read(dir.path().join("audit.log")).unwrap();
        let events: Vec<_> = kms_core::audit::read_events(&bytes)
            .map(|e| e.unwrap().1.event)
            .collect();
        if events.len() >= wanted {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {wanted} audit records");
}

fn limited(svc: KmsGrpc, max_concurrent: usize, timeout_ms: u64) -> KmsGrpc {
    svc.with_admission(Arc::new(Admission::new(Limits {
        max_concurrent,
        per_caller: None,
        request_timeout: std::time::Duration::from_millis(timeout_ms),
        ..Limits::default()
    })))
}

#[allow(clippy::unnecessary_wraps, reason = "the shape of an RPC body")]
fn slow(_: &Kms, _: &Caller, (): ()) -> Result<(), KmsError> {
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn a_request_past_the_timeout_fails_unavailable_and_is_audited_when_it_ends() {
    let (svc, dir) = service_with_log();
    let svc = limited(svc, 8, 50);
    let status = svc.call("Slow", Request::new(()), slow).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "DependencyTimeoutException");
    assert!(status.metadata().get(REQUEST_ID_HEADER).is_some());
    // The work went on and its record tells how it ended.
    let events = audited(&dir, 1).await;
    assert_eq!(events[0].operation, "Slow");
    assert_eq!(events[0].outcome, kms_core::audit::Outcome::Success);
}

#[tokio::test]
async fn a_caller_that_hangs_up_mid_request_is_still_audited() {
    let (svc, dir) = service_with_log();
    let call = svc.call("Slow", Request::new(()), slow);
    // The caller goes away (tonic drops the handler's future) while the work runs.
    let gone = tokio::time::timeout(std::time::Duration::from_millis(50), call).await;
    assert!(gone.is_err());
    let events = audited(&dir, 1).await;
    assert_eq!(events[0].operation, "Slow");
    assert_eq!(events[0].outcome, kms_core::audit::Outcome::Success);
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_throttled_unaudited() {
    let (svc, dir) = service_with_log();
    let svc = limited(svc, 1, 5_000);
    // A call that holds the only place until released: no guess at how long it takes.
    let (started, has_started) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let running = tokio::spawn({
        let svc = svc.clone();
        async move {
            svc.call(
                "Slow",
                Request::new(()),
                move |_: &Kms, _: &Caller, (): ()| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    Ok::<(), KmsError>(())
                },
            )
            .await
        }
    });
    has_started.await.unwrap();
    let status = svc
        .create_key(Request::new(pb::CreateKeyRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "ThrottlingException");
    release.send(()).unwrap();
    assert!(running.await.unwrap().is_ok());
    // Once the slow call is done, the next one runs.
    new_key(&svc).await;
    let ops: Vec<_> = audited(&dir, 2)
        .await
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops, ["Slow", "CreateKey"], "the refused call did nothing");
}

#[test]
fn every_rpc_is_named_by_its_policy_action_and_every_action_has_its_rpc() {
    use kms_core::policy::Action;
    let operations = super::handlers::OPERATIONS;
    for operation in operations {
        if *operation == "ReEncrypt" {
            continue;
        }
        assert!(
            Action::parse(&format!("kms:{operation}")).is_some(),
            "{operation} is no policy action"
        );
    }
    for action in Action::ALL {
        let operation = match action {
            Action::ReEncryptFrom | Action::ReEncryptTo => "ReEncrypt",
            other => other.name().trim_start_matches("kms:"),
        };
        assert!(operations.contains(&operation), "{action} has no RPC");
    }
    for operation in crate::limits::KEY_GENERATING {
        assert!(operations.contains(&operation), "{operation}");
    }
}
