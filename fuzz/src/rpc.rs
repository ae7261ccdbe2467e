//! The gRPC service in process: arbitrary bytes as the body of any RPC, through the same
//! tonic service kmsd serves (decoding, authentication as `--dev`, admission, the core, the
//! audit log). The first byte picks the RPC and whether the rest is framed; the rest is the
//! protobuf message. Every answer must be a gRPC status the service documents, never a panic,
//! a hang, or INTERNAL.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use kms_proto::v1::key_management_service_server::KeyManagementServiceServer;
use kms_server::auth::{Authenticator, DEV_PRINCIPAL};
use kms_server::framing::Framed;
use kms_server::grpc::KmsGrpc;
use tower::Service as _;

/// Every RPC of `kms.v1.KeyManagementService`, in the order of the .proto file.
pub const METHODS: [&str; 36] = [
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "EnableKey",
    "DisableKey",
    "UpdateKeyDescription",
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateRandom",
    "CreateAlias",
    "UpdateAlias",
    "DeleteAlias",
    "ListAliases",
    "TagResource",
    "UntagResource",
    "ListResourceTags",
    "RotateKeyOnDemand",
    "ListKeyRotations",
    "EnableKeyRotation",
    "DisableKeyRotation",
    "GetKeyRotationStatus",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "GetKeyPolicy",
    "PutKeyPolicy",
    "GetPublicKey",
    "Sign",
    "Verify",
    "GenerateMac",
    "VerifyMac",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "DeleteImportedKeyMaterial",
];

/// The calls a service takes before it is made afresh (its audit log and store only grow).
const CALLS_PER_SERVICE: usize = 20_000;

/// The service under test, its runtime, and how many calls it has taken.
struct Harness {
    runtime: tokio::runtime::Runtime,
    service: Framed<KeyManagementServiceServer<KmsGrpc>>,
    calls: usize,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (audit, dir) = super::scratch_audit_log();
        let kms = Arc::new(super::seeded_kms(DEV_PRINCIPAL));
        let service = KmsGrpc::new(kms, Arc::new(Authenticator::Dev), audit).into_server();
        Harness {
            runtime,
            service,
            calls: 0,
            _dir: dir,
        }
    }
}

/// The gRPC framing of one message: not compressed, its length, the message.
#[must_use]
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.extend_from_slice(message);
    body
}

/// One call: the first byte picks the RPC (its value modulo 36) and, from 216 up, sends the
/// rest as the body as it is, unframed; below, framed as one message.
pub fn call(data: &[u8]) {
    static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);
    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(pick) % METHODS.len()];
    let body = if pick >= 216 {
        message.to_vec()
    } else {
        frame(message)
    };
    let mut harness = HARNESS.lock().unwrap_or_else(PoisonError::into_inner);
    if harness
        .as_ref()
        .is_none_or(|h| h.calls >= CALLS_PER_SERVICE)
    {
        *harness = Some(Harness::new());
    }
    let Some(harness) = harness.as_mut() else {
        return;
    };
    harness.calls += 1;
    let request = http::Request::post(format!("/kms.v1.KeyManagementService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("a request");
    let service = &mut harness.service;
    harness.runtime.block_on(async {
        let response = service
            .call(request)
            .await
            .expect("tonic answers every request");
        let status = response
            .headers()
            .get("grpc-status")
            .and_then(|s| s.to_str().ok())
            .map(str::to_owned);
        let collected = response.into_body().collect().await;
        let trailer_status = collected
            .ok()
            .and_then(|c| c.trailers().cloned())
            .and_then(|t| {
                t.get("grpc-status")
                    .and_then(|s| s.to_str().ok())
                    .map(str::to_owned)
            });
        let status = status
            .or(trailer_status)
            .expect("every answer has a grpc-status");
        // Internal errors and unknown ones are bugs: the service maps every failure it
        // expects to a documented status.
        assert!(
            !matches!(status.as_str(), "2" | "13"),
            "{method} answered grpc-status {status}"
        );
    });
}
