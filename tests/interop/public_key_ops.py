#!/usr/bin/env python3
"""The other side of the public-key and import end-to-end tests (tests/e2e/asymmetric.rs and
import.rs), written with Python's `cryptography`, an implementation the project did not write.

Every argument and result is hex. Subcommands:

    verify SPKI ALGORITHM MESSAGE SIGNATURE   exit 0 if the signature is valid, 1 if not
    verify-digest SPKI ALGORITHM DIGEST SIGNATURE
    encrypt SPKI sha1|sha256 PLAINTEXT        print an RSAES-OAEP ciphertext
    hmac sha256|sha384|sha512 KEY MESSAGE     print the HMAC
    open-blob MATERIAL BLOB CONTEXT_JSON      print the plaintext of a SYMMETRIC_DEFAULT v1 blob,
                                              opened offline from the README's format
"""
import hashlib
import hmac
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HASHES = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512}


def algorithm(name):
    """(hash class, kind) of an AWS signing algorithm name."""
    for suffix, hash_class in HASHES.items():
        if name.endswith(suffix):
            kind = "ecdsa" if name.startswith("ECDSA") else "pss" if "PSS" in name else "pkcs1"
            return hash_class, kind
    raise SystemExit(f"unknown algorithm {name}")


def verify(spki, name, data, signature, prehashed):
    key = serialization.load_der_public_key(spki)
    hash_class, kind = algorithm(name)
    chosen = utils.Prehashed(hash_class()) if prehashed else hash_class()
    try:
        if kind == "ecdsa":
            key.verify(signature, data, ec.ECDSA(chosen))
        elif kind == "pss":
            pss = padding.PSS(mgf=padding.MGF1(hash_class()), salt_length=hash_class.digest_size)
            key.verify(signature, data, pss, chosen)
        else:
            key.verify(signature, data, padding.PKCS1v15(), chosen)
    except InvalidSignature:
        return 1
    return 0


def encrypt(spki, hash_name, plaintext):
    key = serialization.load_der_public_key(spki)
    hash_class = hashes.SHA1 if hash_name == "sha1" else hashes.SHA256
    oaep = padding.OAEP(mgf=padding.MGF1(hash_class()), algorithm=hash_class(), label=None)
    print(key.encrypt(plaintext, oaep).hex())
    return 0


def encode_context(ctx):
    out = struct.pack(">H", len(ctx))
    for k in sorted(ctx, key=lambda s: s.encode()):
        kb, vb = k.encode(), ctx[k].encode()
        out += struct.pack(">H", len(kb)) + kb + struct.pack(">H", len(vb)) + vb
    return out


def open_blob(material, blob, ctx):
    """README "Ciphertext format": header (86 bytes) || AES-256-GCM ciphertext || tag."""
    header, sealed = blob[:86], blob[86:]
    if header[0] != 1 or header[21] != 1:
        raise SystemExit("not a v1 SYMMETRIC_DEFAULT blob")
    nonce, commitment = header[22:54], header[54:86]
    k_msg = hmac.new(material, b"kms.v1 SYMMETRIC_DEFAULT message key\x00" + nonce,
                     hashlib.sha256).digest()
    prk = hmac.new(b"\x00" * 32, k_msg, hashlib.sha256).digest()
    aes_key = HKDFExpand(hashes.SHA256(), 32, b"kms.v1 SYMMETRIC_DEFAULT aes-256-gcm key").derive(prk)
    expected = HKDFExpand(hashes.SHA256(), 32, b"kms.v1 SYMMETRIC_DEFAULT key commitment").derive(prk)
    if not hmac.compare_digest(expected, commitment):
        raise SystemExit("key commitment mismatch")
    print(AESGCM(aes_key).decrypt(b"\x00" * 12, sealed, header + encode_context(ctx)).hex())
    return 0


def main(argv):
    command, args = argv[1], argv[2:]
    raw = lambda i: bytes.fromhex(args[i])  # noqa: E731
    if command in ("verify", "verify-digest"):
        return verify(raw(0), args[1], raw(2), raw(3), command == "verify-digest")
    if command == "encrypt":
        return encrypt(raw(0), args[1], raw(2))
    if command == "hmac":
        print(hmac.new(raw(1), raw(2), getattr(hashlib, args[0])).hexdigest())
        return 0
    if command == "open-blob":
        return open_blob(raw(0), raw(1), json.loads(args[2]))
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
