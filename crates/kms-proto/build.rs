//! Generates the gRPC code for `proto/kms/v1/*.proto` with protoc.

/// Messages with a plaintext, data key or caller's message field; lib.rs implements `Debug`
/// for each.
const SECRET_MESSAGES: [&str; 8] = [
    "EncryptRequest",
    "DecryptResponse",
    "GenerateDataKeyResponse",
    "GenerateRandomResponse",
    "SignRequest",
    "VerifyRequest",
    "GenerateMacRequest",
    "VerifyMacRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): the compiled build script is shared by every
    // checkout that uses the same target dir, and must read its own checkout's proto.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let kms = root.join("kms/v1/kms.proto");
    // Relative to this package, so that checkouts sharing one target dir (CI clones) each
    // watch their own copy of the proto.
    println!("cargo:rerun-if-changed=../../proto/kms/v1/kms.proto");
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("kms_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .build_client(true)
        .build_server(true)
        // Messages that do not decode are the caller's fault (INVALID_ARGUMENT).
        .codec_path("crate::codec::KmsCodec")
        // Messages that carry plaintext get a redacting Debug impl (src/lib.rs) instead.
        .skip_debug(SECRET_MESSAGES.iter().map(|m| format!(".kms.v1.{m}")))
        .compile_protos(&[kms], &[root])?;
    Ok(())
}
