#!/usr/bin/env python3
"""An independent implementation of the SYMMETRIC_DEFAULT v1 ciphertext format (README,
"Ciphertext format"), used to write and check symmetric_default_v1.json.

    python3 symmetric_default_v1.py            # check the committed vectors
    python3 symmetric_default_v1.py --write    # rewrite them

Needs the `cryptography` package. The Rust tests check the same vectors against kms-core and
against SoftHSM2, so the two implementations and the HSM path agree byte for byte.
"""
import hashlib
import hmac
import json
import struct
import sys
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

LABEL = b"kms.v1 SYMMETRIC_DEFAULT message key\x00"
AES_INFO = b"kms.v1 SYMMETRIC_DEFAULT aes-256-gcm key"
COMMIT_INFO = b"kms.v1 SYMMETRIC_DEFAULT key commitment"
HERE = Path(__file__).resolve().parent
OUT = HERE / "symmetric_default_v1.json"


def encode_context(ctx):
    out = struct.pack(">H", len(ctx))
    for k in sorted(ctx, key=lambda s: s.encode()):
        kb, vb = k.encode(), ctx[k].encode()
        out += struct.pack(">H", len(kb)) + kb + struct.pack(">H", len(vb)) + vb
    return out


def hkdf(k_msg, info):
    # HKDF-SHA256 with no salt: extract with a zero salt, then expand.
    prk = hmac.new(b"\x00" * 32, k_msg, hashlib.sha256).digest()
    return HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def make(case):
    secret = bytes.fromhex(case["master_secret_hex"])
    nonce = bytes.fromhex(case["nonce_hex"])
    plaintext = bytes.fromhex(case["plaintext_hex"])
    derivation_input = LABEL + nonce
    k_msg = hmac.new(secret, derivation_input, hashlib.sha256).digest()
    aes_key, commitment = hkdf(k_msg, AES_INFO), hkdf(k_msg, COMMIT_INFO)
    header = (bytes([1]) + uuid.UUID(case["key_id"]).bytes + struct.pack(">I", case["key_version"])
              + bytes([1]) + nonce + commitment)
    context = encode_context(case["encryption_context"])
    sealed = AESGCM(aes_key).encrypt(b"\x00" * 12, plaintext, header + context)
    return dict(case,
                derivation_input_hex=derivation_input.hex(),
                k_msg_hex=k_msg.hex(),
                aes_key_hex=aes_key.hex(),
                commitment_hex=commitment.hex(),
                context_encoding_hex=context.hex(),
                ciphertext_blob_hex=(header + sealed).hex())


CASES = [
    dict(description="empty context, short plaintext",
         master_secret_hex=bytes(range(32)).hex(),
         key_id="6f1c2e3a-9b7d-4c5e-8f01-23456789abcd", key_version=1,
         nonce_hex=bytes(range(100, 132)).hex(),
         encryption_context={}, plaintext_hex=b"hello, kms".hex()),
    dict(description="two pairs given out of order, version 7",
         master_secret_hex=bytes([0xA5] * 32).hex(),
         key_id="00000000-0000-4000-8000-000000000001", key_version=7,
         nonce_hex=bytes([0x11] * 32).hex(),
         encryption_context={"tenant": "acme", "purpose": "backup"},
         plaintext_hex=bytes(range(256)).hex()),
    dict(description="UTF-8 context and a 4096-byte plaintext",
         master_secret_hex=hashlib.sha256(b"test master secret").hexdigest(),
         key_id="ffffffff-ffff-4fff-bfff-ffffffffffff", key_version=4294967295,
         nonce_hex=hashlib.sha256(b"nonce").hexdigest(),
         encryption_context={"é": "ü", "Z": "", "z": "=;"},
         plaintext_hex=(bytes(range(256)) * 16).hex()),
]


def main():
    vectors = [make(c) for c in CASES]
    if "--write" in sys.argv:
        OUT.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {len(vectors)} vectors to {OUT}")
        return 0
    committed = json.loads(OUT.read_text())
    if committed != vectors:
        print("the committed vectors differ from this implementation", file=sys.stderr)
        return 1
    print(f"{len(vectors)} vectors match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
