//! kmsctl with RSA, ECC and HMAC keys, checked against OpenSSL: its signatures verify with
//! `openssl dgst` and the key `get-public-key` prints, and it decrypts what `openssl pkeyutl`
//! encrypts. Also the kmsctl and OpenSSL helpers that `cli_import` shares.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kms_e2e::{Kmsd, TestEnv};
use serde_json::Value;

/// Asserts that kmsctl succeeded; returns its stdout.
pub(crate) fn ok(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "kmsctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

/// Asserts that kmsctl succeeded with JSON on stdout; returns it.
pub(crate) fn json(out: &Output) -> Value {
    let stdout = ok(out);
    serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&stdout)))
}

/// Asserts that kmsctl exited 1 with `reason` on stderr and nothing on stdout; returns stderr.
pub(crate) fn fails(out: &Output, reason: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected {reason}: {stderr}");
    assert!(stderr.contains(reason), "expected {reason}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

pub(crate) fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs OpenSSL; a missing binary fails the test (deploy/install-deps.sh installs it).
pub(crate) fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl (deploy/install-deps.sh installs it): {e}"))
}

pub(crate) fn openssl_ok(args: &[&str]) -> Vec<u8> {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `create-key` with `flags`; returns the key id after checking the spec it reports.
pub(crate) fn create_key(kmsd: &Kmsd, spec: &str, flags: &[&str]) -> String {
    let mut args = vec!["--output", "json", "create-key", "--key-spec", spec];
    args.extend_from_slice(flags);
    let created = json(&kmsd.kmsctl(&args, b""));
    assert_eq!(created["key_spec"], spec, "{created}");
    created["key_id"].as_str().unwrap().to_owned()
}

pub(crate) fn describe(kmsd: &Kmsd, key: &str) -> Value {
    json(&kmsd.kmsctl(&["--output", "json", "describe-key", "--key", key], b""))
}

/// A message with every byte value, NULs and newlines included.
pub(crate) fn binary_message(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    let message: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    std::fs::write(&file, message).unwrap();
    file
}

/// Writes the public key `get-public-key` prints to `dir/pub.pem` and checks that the PEM
/// and DER forms are the same key as OpenSSL reads them.
fn public_key(kmsd: &Kmsd, dir: &Path, key: &str) -> PathBuf {
    let pem = dir.join("pub.pem");
    let der = dir.join("pub.der");
    let printed = ok(&kmsd.kmsctl(&["get-public-key", "--key", key], b""));
    assert!(
        printed.starts_with(b"-----BEGIN PUBLIC KEY-----\n"),
        "{}",
        String::from_utf8_lossy(&printed)
    );
    std::fs::write(&pem, &printed).unwrap();
    ok(&kmsd.kmsctl(
        &[
            "get-public-key",
            "--key",
            key,
            "--format",
            "der",
            "--out",
            &path(&der),
        ],
        b"",
    ));
    let from_der = openssl_ok(&["pkey", "-pubin", "-inform", "DER", "-in", &path(&der)]);
    let from_pem = openssl_ok(&["pkey", "-pubin", "-in", &path(&pem)]);
    assert_eq!(from_der, from_pem);
    assert_eq!(from_pem, printed);
    pem
}

/// OpenSSL's verdict on `signature` over `message`, with `pub.pem`, digest `md` and extra
/// `-sigopt`s.
fn openssl_verifies(pem: &Path, md: &str, sigopts: &[&str], signature: &Path, msg: &Path) -> bool {
    let mut args = vec![
        "dgst".to_owned(),
        format!("-{md}"),
        "-verify".to_owned(),
        path(pem),
        "-signature".to_owned(),
        path(signature),
    ];
    for opt in sigopts {
        args.push("-sigopt".to_owned());
        args.push((*opt).to_owned());
    }
    args.push(path(msg));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = openssl(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        assert!(stdout.contains("Verified OK"), "{stdout}");
    }
    out.status.success()
}

/// Signs a binary file with `algorithm` through kmsctl and checks the signature with kmsctl
/// and OpenSSL: valid for the message, invalid for a changed one, and the same for a
/// DIGEST-type signature of the message's hash.
fn check_signatures(kmsd: &Kmsd, dir: &Path, key: &str, algorithm: &str, sigopts: &[&str]) {
    let md = match &algorithm[algorithm.len() - 3..] {
        "256" => "sha256",
        "384" => "sha384",
        "512" => "sha512",
        other => panic!("no hash in {algorithm} ({other})"),
    };
    let pem = dir.join("pub.pem");
    let msg = binary_message(dir, "message.bin");
    let changed = dir.join("changed.bin");
    let mut bytes = std::fs::read(&msg).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&changed, &bytes).unwrap();
    let sig = dir.join(format!("{algorithm}.sig"));

    let out = kmsd.kmsctl(
        &[
            "sign",
            "--key",
            key,
            "--algorithm",
            algorithm,
            "--message-file",
            &path(&msg),
            "--out",
            &path(&sig),
        ],
        b"",
    );
    assert!(ok(&out).is_empty(), "the signature went to --out only");
    assert!(
        openssl_verifies(&pem, md, sigopts, &sig, &msg),
        "OpenSSL rejects kmsctl's {algorithm} signature"
    );
    assert!(
        !openssl_verifies(&pem, md, sigopts, &sig, &changed),
        "OpenSSL accepts {algorithm} for a changed message"
    );

    let verify = |message: &Path, signature: &Path| {
        kmsd.kmsctl(
            &[
                "verify",
                "--key",
                key,
                "--algorithm",
                algorithm,
                "--message-file",
                &path(message),
                "--signature-file",
                &path(signature),
            ],
            b"",
        )
    };
    assert_eq!(ok(&verify(&msg, &sig)), b"valid\n");
    fails(&verify(&changed, &sig), "KMSInvalidSignatureException");

    // DIGEST: sign the hash OpenSSL computes; the signature is one over the message.
    let digest = dir.join(format!("{algorithm}.digest"));
    std::fs::write(
        &digest,
        openssl_ok(&["dgst", &format!("-{md}"), "-binary", &path(&msg)]),
    )
    .unwrap();
    let signed = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "sign",
            "--key",
            key,
            "--algorithm",
            algorithm,
            "--message-type",
            "DIGEST",
            "--message-file",
            &path(&digest),
        ],
        b"",
    ));
    assert_eq!(signed["signing_algorithm"], algorithm);
    let digest_sig = dir.join(format!("{algorithm}.digest.sig"));
    std::fs::write(
        &digest_sig,
        STANDARD
            .decode(signed["signature"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        openssl_verifies(&pem, md, sigopts, &digest_sig, &msg),
        "OpenSSL rejects a DIGEST-type {algorithm} signature"
    );
    // A RAW verify of the message accepts it too, as does a DIGEST verify given in base64.
    assert_eq!(ok(&verify(&msg, &digest_sig)), b"valid\n");
    let out = kmsd.kmsctl(
        &[
            "--output",
            "json",
            "verify",
            "--key",
            key,
            "--algorithm",
            algorithm,
            "--message-type",
            "DIGEST",
            "--message-file",
            &path(&digest),
            "--signature",
            signed["signature"].as_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(json(&out)["signature_valid"], true);
}

#[test]
fn ecdsa_p256_signatures_from_kmsctl_verify_with_openssl() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let key = create_key(&kmsd, "ECC_NIST_P256", &["--key-usage", "SIGN_VERIFY"]);
    let described = describe(&kmsd, &key);
    assert_eq!(described["key_usage"], "SIGN_VERIFY");
    assert_eq!(
        described["signing_algorithms"],
        serde_json::json!(["ECDSA_SHA_256"])
    );
    public_key(&kmsd, env.path(), &key);
    check_signatures(&kmsd, env.path(), &key, "ECDSA_SHA_256", &[]);

    // The message from stdin, the signature in base64 on stdout.
    let sig = ok(&kmsd.kmsctl(
        &["sign", "--key", &key, "--algorithm", "ECDSA_SHA_256"],
        b"from stdin",
    ));
    let sig = String::from_utf8(sig).unwrap();
    let out = kmsd.kmsctl(
        &[
            "verify",
            "--key",
            &key,
            "--algorithm",
            "ECDSA_SHA_256",
            "--message",
            "from stdin",
            "--signature",
            sig.trim(),
        ],
        b"",
    );
    assert_eq!(ok(&out), b"valid\n");

    // An RSA algorithm with an EC key.
    let out = kmsd.kmsctl(
        &[
            "sign",
            "--key",
            &key,
            "--algorithm",
            "RSASSA_PSS_SHA_256",
            "--message",
            "x",
        ],
        b"",
    );
    fails(&out, "InvalidKeyUsageException");
}

#[test]
fn rsa_2048_signatures_from_kmsctl_verify_with_openssl() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let key = create_key(&kmsd, "RSA_2048", &["--key-usage", "SIGN_VERIFY"]);
    let described = describe(&kmsd, &key);
    let algorithms = described["signing_algorithms"].as_array().unwrap();
    assert_eq!(algorithms.len(), 6, "{described}");
    assert_eq!(described["encryption_algorithms"], serde_json::json!([]));
    let pem = public_key(&kmsd, env.path(), &key);
    let text =
        String::from_utf8(openssl_ok(&["pkey", "-pubin", "-in", &path(&pem), "-text"])).unwrap();
    assert!(text.contains("2048 bit"), "{text}");

    for algorithm in ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_512"] {
        check_signatures(&kmsd, env.path(), &key, algorithm, &[]);
    }
    // PSS: MGF1 with the signing hash, a salt as long as the hash.
    let pss = ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"];
    for algorithm in ["RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384"] {
        check_signatures(&kmsd, env.path(), &key, algorithm, &pss);
    }

    // A signature of one algorithm is not one of another.
    let msg = env.path().join("message.bin");
    let out = kmsd.kmsctl(
        &[
            "verify",
            "--key",
            &key,
            "--algorithm",
            "RSASSA_PSS_SHA_256",
            "--message-file",
            &path(&msg),
            "--signature-file",
            &path(&env.path().join("RSASSA_PKCS1_V1_5_SHA_256.sig")),
        ],
        b"",
    );
    fails(&out, "KMSInvalidSignatureException");
    // A signing key does not encrypt.
    let out = kmsd.kmsctl(
        &[
            "encrypt",
            "--key",
            &key,
            "--encryption-algorithm",
            "RSAES_OAEP_SHA_256",
        ],
        b"x",
    );
    fails(&out, "InvalidKeyUsageException");
}

#[test]
fn rsa_3072_decrypts_what_openssl_encrypts() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let key = create_key(&kmsd, "RSA_3072", &["--key-usage", "ENCRYPT_DECRYPT"]);
    assert_eq!(
        describe(&kmsd, &key)["encryption_algorithms"],
        serde_json::json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
    );
    let pem = public_key(&kmsd, env.path(), &key);
    let plaintext: Vec<u8> = (0..=255u8).rev().cycle().take(300).collect();
    let plain = env.path().join("plain.bin");
    std::fs::write(&plain, &plaintext).unwrap();

    for (md, algorithm, other) in [
        ("sha256", "RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
        ("sha1", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"),
    ] {
        let ct = env.path().join(format!("{md}.ct"));
        openssl_ok(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            &path(&pem),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
            "-in",
            &path(&plain),
            "-out",
            &path(&ct),
        ]);
        let decrypt = |algorithm: &str| {
            kmsd.kmsctl(
                &[
                    "decrypt",
                    "--key",
                    &key,
                    "--encryption-algorithm",
                    algorithm,
                    "--ciphertext-file",
                    &path(&ct),
                ],
                b"",
            )
        };
        assert_eq!(ok(&decrypt(algorithm)), plaintext, "{algorithm}");
        fails(&decrypt(other), "InvalidCiphertextException");

        // kmsctl encrypt gives a bare RSAES-OAEP ciphertext (the modulus' 384 bytes), new
        // each time, that kmsctl decrypt takes back.
        let encrypted = json(&kmsd.kmsctl(
            &[
                "--output",
                "json",
                "encrypt",
                "--key",
                &key,
                "--encryption-algorithm",
                algorithm,
                "--plaintext-file",
                &path(&plain),
            ],
            b"",
        ));
        assert_eq!(encrypted["encryption_algorithm"], algorithm);
        let blob = encrypted["ciphertext_blob"].as_str().unwrap();
        assert_eq!(STANDARD.decode(blob).unwrap().len(), 384);
        let again = json(&kmsd.kmsctl(
            &[
                "--output",
                "json",
                "encrypt",
                "--key",
                &key,
                "--encryption-algorithm",
                algorithm,
                "--plaintext-file",
                &path(&plain),
            ],
            b"",
        ));
        assert_ne!(again["ciphertext_blob"], encrypted["ciphertext_blob"]);
        let out = kmsd.kmsctl(
            &[
                "--output",
                "json",
                "decrypt",
                "--key",
                &key,
                "--encryption-algorithm",
                algorithm,
                "--ciphertext",
                blob,
            ],
            b"",
        );
        let decrypted = json(&out);
        assert_eq!(decrypted["encryption_algorithm"], algorithm);
        assert_eq!(decrypted["key_id"], key.as_str());
        assert_eq!(
            STANDARD
                .decode(decrypted["plaintext"].as_str().unwrap())
                .unwrap(),
            plaintext
        );
    }

    // An RSA ciphertext names no key: kmsctl says so before calling.
    let out = kmsd.kmsctl(
        &["decrypt", "--encryption-algorithm", "RSAES_OAEP_SHA_256"],
        &[0u8; 384],
    );
    let stderr = fails(&out, "needs --key-id");
    assert!(!stderr.contains("Exception"), "{stderr}");
    // RSA_3072 with SHA-256 takes at most 384 - 2*32 - 2 = 318 bytes.
    let encrypt = |len: usize| {
        kmsd.kmsctl(
            &[
                "encrypt",
                "--key",
                &key,
                "--encryption-algorithm",
                "RSAES_OAEP_SHA_256",
            ],
            &vec![7u8; len],
        )
    };
    ok(&encrypt(318));
    fails(&encrypt(319), "ValidationException");
    // SYMMETRIC_DEFAULT (the default) is not an RSA key's algorithm.
    fails(
        &kmsd.kmsctl(&["encrypt", "--key", &key], b"x"),
        "InvalidKeyUsageException",
    );
}

#[test]
fn hmac_keys_generate_and_verify_macs() {
    let env = TestEnv::new();
    let kmsd = env.start();
    // The server picks GENERATE_VERIFY_MAC for an HMAC spec.
    let key = create_key(&kmsd, "HMAC_256", &[]);
    let described = describe(&kmsd, &key);
    assert_eq!(described["key_usage"], "GENERATE_VERIFY_MAC");
    assert_eq!(
        described["mac_algorithms"],
        serde_json::json!(["HMAC_SHA_256"])
    );
    let msg = binary_message(env.path(), "message.bin");
    let mac = env.path().join("mac.bin");
    let generate = |out: &Path| {
        kmsd.kmsctl(
            &[
                "generate-mac",
                "--key",
                &key,
                "--algorithm",
                "HMAC_SHA_256",
                "--message-file",
                &path(&msg),
                "--out",
                &path(out),
            ],
            b"",
        )
    };
    ok(&generate(&mac));
    let tag = std::fs::read(&mac).unwrap();
    assert_eq!(tag.len(), 32);
    // HMAC is deterministic.
    let again = env.path().join("again.bin");
    ok(&generate(&again));
    assert_eq!(std::fs::read(&again).unwrap(), tag);

    let verify = |mac: &Path, message: &Path| {
        kmsd.kmsctl(
            &[
                "verify-mac",
                "--key",
                &key,
                "--algorithm",
                "HMAC_SHA_256",
                "--message-file",
                &path(message),
                "--mac-file",
                &path(mac),
            ],
            b"",
        )
    };
    assert_eq!(ok(&verify(&mac, &msg)), b"valid\n");
    let mut flipped = tag.clone();
    flipped[31] ^= 0x80;
    let flipped_file = env.path().join("flipped.bin");
    std::fs::write(&flipped_file, &flipped).unwrap();
    fails(&verify(&flipped_file, &msg), "KMSInvalidMacException");
    let other = env.path().join("other.bin");
    std::fs::write(&other, b"another message").unwrap();
    fails(&verify(&mac, &other), "KMSInvalidMacException");

    // JSON and base64: the MAC of stdin, checked given in base64.
    let generated = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "generate-mac",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_256",
        ],
        b"stdin message",
    ));
    assert_eq!(generated["mac_algorithm"], "HMAC_SHA_256");
    let out = kmsd.kmsctl(
        &[
            "verify-mac",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_256",
            "--mac",
            generated["mac"].as_str().unwrap(),
        ],
        b"stdin message",
    );
    assert_eq!(ok(&out), b"valid\n");

    // Another hash than the key's, and keys of other usages.
    let out = kmsd.kmsctl(
        &[
            "generate-mac",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_384",
            "--message",
            "x",
        ],
        b"",
    );
    fails(&out, "InvalidKeyUsageException");
    let signing = create_key(&kmsd, "ECC_NIST_P256", &["--key-usage", "SIGN_VERIFY"]);
    let out = kmsd.kmsctl(
        &[
            "generate-mac",
            "--key",
            &signing,
            "--algorithm",
            "HMAC_SHA_256",
            "--message",
            "x",
        ],
        b"",
    );
    fails(&out, "InvalidKeyUsageException");
    let out = kmsd.kmsctl(
        &[
            "sign",
            "--key",
            &key,
            "--algorithm",
            "ECDSA_SHA_256",
            "--message",
            "x",
        ],
        b"",
    );
    fails(&out, "InvalidKeyUsageException");
}
