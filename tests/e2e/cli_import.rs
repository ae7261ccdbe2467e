//! kmsctl with imported key material (bring your own key), checked against OpenSSL: material
//! wrapped by OpenSSL imports, encrypts, and can only come back the same; imported HMAC
//! material MACs as OpenSSL does.

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kms_e2e::{Kmsd, TestEnv};
use serde_json::Value;

use crate::cli_keys::{binary_message, create_key, describe, fails, json, ok, openssl_ok, path};

/// `import-key-material --material FILE` with RSAES_OAEP_SHA_1, which every HSM (SoftHSM2 2.6
/// included) unwraps; returns kmsctl's output.
fn import_sha1(kmsd: &Kmsd, key: &str, material: &Path) -> Output {
    kmsd.kmsctl(
        &[
            "--output",
            "json",
            "import-key-material",
            "--key",
            key,
            "--material",
            &path(material),
            "--wrapping-algorithm",
            "RSAES_OAEP_SHA_1",
            "--wrapping-key-spec",
            "RSA_3072",
        ],
        b"",
    )
}

#[test]
fn imported_key_material_encrypts_and_can_only_come_back_the_same() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let key = create_key(&kmsd, "SYMMETRIC_DEFAULT", &["--origin", "EXTERNAL"]);
    let described = describe(&kmsd, &key);
    assert_eq!(described["key_state"], "PendingImport");
    assert_eq!(described["origin"], "EXTERNAL");
    fails(
        &kmsd.kmsctl(&["encrypt", "--key", &key], b"x"),
        "KMSInvalidStateException",
    );

    let material = env.path().join("material.bin");
    std::fs::write(&material, (1..=32u8).collect::<Vec<_>>()).unwrap();

    // Material of the wrong length is refused by kmsctl, before any call.
    let short = env.path().join("short.bin");
    std::fs::write(&short, [9u8; 16]).unwrap();
    let stderr = fails(&import_sha1(&kmsd, &key, &short), "exactly 32 bytes");
    assert!(!stderr.contains("Exception"), "{stderr}");
    assert_eq!(describe(&kmsd, &key)["key_state"], "PendingImport");

    // The default wrapping algorithm, RSAES_OAEP_SHA_256: real HSMs unwrap with it, SoftHSM2
    // 2.6 does not, and then kmsctl says what to do.
    let out = kmsd.kmsctl(
        &[
            "import-key-material",
            "--key",
            &key,
            "--material",
            &path(&material),
        ],
        b"",
    );
    if out.status.success() {
        assert_eq!(describe(&kmsd, &key)["key_state"], "Enabled");
        ok(&kmsd.kmsctl(&["delete-imported-key-material", "--key", &key], b""));
    } else {
        let stderr = fails(&out, "UnsupportedOperationException");
        assert!(stderr.contains("RSAES_OAEP_SHA_256"), "{stderr}");
        assert!(
            stderr.contains("hint: ") && stderr.contains("--wrapping-algorithm RSAES_OAEP_SHA_1"),
            "{stderr}"
        );
    }

    let imported = json(&import_sha1(&kmsd, &key, &material));
    assert_eq!(imported["key_state"], "Enabled");
    assert_eq!(imported["expiration_model"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
    assert_eq!(imported["valid_to"], Value::Null);
    let plain = b"sealed under imported material";
    let blob = env.path().join("blob");
    ok(&kmsd.kmsctl(&["encrypt", "--key", &key, "--out", &path(&blob)], plain));
    let decrypt = || kmsd.kmsctl(&["decrypt", "--ciphertext-file", &path(&blob)], b"");
    assert_eq!(ok(&decrypt()), plain);

    // Without material the key is PendingImport and unusable.
    let deleted = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "delete-imported-key-material",
            "--key",
            &key,
        ],
        b"",
    ));
    assert_eq!(deleted["key_state"], "PendingImport");
    assert_eq!(deleted["expiration_model"], Value::Null);
    fails(
        &kmsd.kmsctl(&["encrypt", "--key", &key], b"x"),
        "KMSInvalidStateException",
    );
    fails(&decrypt(), "KMSInvalidStateException");

    // Other material can never replace it.
    let other = env.path().join("other.bin");
    std::fs::write(&other, [0x5Au8; 32]).unwrap();
    fails(
        &import_sha1(&kmsd, &key, &other),
        "IncorrectKeyMaterialException",
    );
    assert_eq!(describe(&kmsd, &key)["key_state"], "PendingImport");

    // The same material, wrapped by OpenSSL with the parameters kmsctl wrote, comes back
    // with an expiry, and the old blob decrypts again.
    let params = env.path().join("params");
    let out = kmsd.kmsctl(
        &[
            "--output",
            "json",
            "get-parameters-for-import",
            "--key",
            &key,
            "--wrapping-algorithm",
            "RSAES_OAEP_SHA_1",
            "--out-dir",
            &path(&params),
        ],
        b"",
    );
    let written = json(&out);
    assert_eq!(written["wrapping_algorithm"], "RSAES_OAEP_SHA_1");
    assert!(written["parameters_valid_to"].is_string(), "{written}");
    let wrapping_key = params.join("wrapping-key.der");
    let token = params.join("import-token.bin");
    let text = String::from_utf8(openssl_ok(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        &path(&wrapping_key),
        "-text",
        "-noout",
    ]))
    .unwrap();
    assert!(
        text.contains("4096 bit"),
        "the default wrapping key: {text}"
    );
    let wrapped = env.path().join("wrapped.bin");
    openssl_ok(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        &path(&wrapping_key),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha1",
        "-pkeyopt",
        "rsa_mgf1_md:sha1",
        "-in",
        &path(&material),
        "-out",
        &path(&wrapped),
    ]);
    let import_wrapped = |token: &Path| {
        kmsd.kmsctl(
            &[
                "--output",
                "json",
                "import-key-material",
                "--key",
                &key,
                "--import-token",
                &path(token),
                "--encrypted-material",
                &path(&wrapped),
                "--valid-to",
                "2099-01-01T00:00:00Z",
            ],
            b"",
        )
    };
    let mut forged = std::fs::read(&token).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged_token = env.path().join("forged-token.bin");
    std::fs::write(&forged_token, &forged).unwrap();
    fails(
        &import_wrapped(&forged_token),
        "InvalidImportTokenException",
    );

    let imported = json(&import_wrapped(&token));
    assert_eq!(imported["key_state"], "Enabled");
    assert_eq!(imported["expiration_model"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(imported["valid_to"], "2099-01-01T00:00:00Z");
    assert_eq!(ok(&decrypt()), plain);
    let text = String::from_utf8(ok(&kmsd.kmsctl(&["describe-key", "--key", &key], b""))).unwrap();
    assert!(
        text.contains("KEY_MATERIAL_EXPIRES") && text.contains("2099-01-01T00:00:00Z"),
        "{text}"
    );

    // Keys whose material the HSM generated take none.
    let generated = create_key(&kmsd, "SYMMETRIC_DEFAULT", &[]);
    let stderr = fails(
        &import_sha1(&kmsd, &generated, &material),
        "--origin EXTERNAL",
    );
    assert!(!stderr.contains("Exception"), "{stderr}");
}

#[test]
fn imported_hmac_material_macs_as_openssl_does() {
    let env = TestEnv::new();
    let kmsd = env.start();
    for (spec, algorithm, md, len, too_short, too_long) in [
        ("HMAC_256", "HMAC_SHA_256", "sha256", 48, 31, 65),
        ("HMAC_512", "HMAC_SHA_512", "sha512", 64, 63, 129),
    ] {
        let key = create_key(&kmsd, spec, &["--origin", "EXTERNAL"]);
        for bad in [too_short, too_long] {
            let file = env.path().join(format!("{spec}-{bad}.bin"));
            std::fs::write(&file, vec![1u8; bad]).unwrap();
            let stderr = fails(&import_sha1(&kmsd, &key, &file), "key material is");
            assert!(stderr.contains(spec), "{stderr}");
        }
        let material: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 256).unwrap())
            .collect();
        let file = env.path().join(format!("{spec}.bin"));
        std::fs::write(&file, &material).unwrap();
        let imported = json(&import_sha1(&kmsd, &key, &file));
        assert_eq!(imported["key_state"], "Enabled");

        let msg = binary_message(env.path(), "message.bin");
        let mac = ok(&kmsd.kmsctl(
            &[
                "generate-mac",
                "--key",
                &key,
                "--algorithm",
                algorithm,
                "--message-file",
                &path(&msg),
            ],
            b"",
        ));
        let mac = STANDARD
            .decode(String::from_utf8(mac).unwrap().trim())
            .unwrap();
        let hexkey = material.iter().fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            write!(hex, "{b:02x}").unwrap();
            hex
        });
        let expected = openssl_ok(&[
            "dgst",
            &format!("-{md}"),
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hexkey}"),
            "-binary",
            &path(&msg),
        ]);
        assert_eq!(mac, expected, "{spec}: kmsctl's MAC is not OpenSSL's HMAC");
    }
}
