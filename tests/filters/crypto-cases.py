#!/usr/bin/env python3
"""Writes the crypto cases of host-calls.json (run from the repository root; needs Python's
`cryptography`). The keys are made fresh each run and thrown away: only public keys, messages and
signatures go into the table, with the answer every implementation must give (the proxy's ring,
and the Rust, Go and AssemblyScript emulators)."""

import hashlib
import hmac
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

MSG = "header.payload"
SPKI = dict(encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo)


def case(call, expect, **fields):
    return {"call": call, **fields, "expect": expect}


def rs(sig_der, size):
    r, s = decode_dss_signature(sig_der)
    return (r.to_bytes(size, "big") + s.to_bytes(size, "big")).hex()


def flip(hexsig):
    b = bytearray(bytes.fromhex(hexsig))
    b[len(b) // 2] ^= 0x40
    return b.hex()


def cases():
    out = [
        case("crypto.digest", "ok " + hashlib.sha256(b"abc").hexdigest(), alg="sha256", value="abc"),
        case("crypto.digest", "ok " + hashlib.sha384(b"abc").hexdigest(), alg="sha384", value="abc"),
        case("crypto.digest", "ok " + hashlib.sha512(b"").hexdigest(), alg="sha512", value=""),
    ]
    tag = hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest()
    out += [
        case("crypto.hmac", "ok " + tag, alg="sha256", key="Jefe", value="what do ya want for nothing?"),
        case("crypto.hmac", "ok " + hmac.new(b"k", MSG.encode(), hashlib.sha512).hexdigest(), alg="sha512", key="k", value=MSG),
        case("crypto.hmac", "invalid", alg="sha256", key="", value=MSG),
        case("crypto.hmac", "invalid", alg="sha256", key="x" * (16 * 1024 + 1), value=MSG),
        case("crypto.hmac-verify", "ok true", alg="sha256", key="Jefe", value="what do ya want for nothing?", signature=tag),
        case("crypto.hmac-verify", "ok false", alg="sha256", key="Jefe", value="what do ya want for nothing?", signature=flip(tag)),
        case("crypto.hmac-verify", "ok false", alg="sha256", key="Jefe", value="what do ya want for nothing?", signature=tag[:-2]),
        case("crypto.equal", "ok true", name="abc", value="abc"),
        case("crypto.equal", "ok false", name="abc", value="abd"),
        case("crypto.equal", "ok false", name="abc", value="ab"),
    ]
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rspki = rk.public_key().public_bytes(**SPKI).hex()
    nums = rk.public_key().public_numbers()
    ne = f"{nums.n.to_bytes(256, 'big').hex()}:{nums.e.to_bytes(3, 'big').hex()}"
    pkcs1 = rk.sign(MSG.encode(), padding.PKCS1v15(), hashes.SHA256()).hex()
    pss = rk.sign(MSG.encode(), padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.DIGEST_LENGTH), hashes.SHA384()).hex()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    p256 = ec.generate_private_key(ec.SECP256R1())
    point = p256.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex()
    es256 = rs(p256.sign(MSG.encode(), ec.ECDSA(hashes.SHA256())), 32)
    p384 = ec.generate_private_key(ec.SECP384R1())
    es384 = rs(p384.sign(MSG.encode(), ec.ECDSA(hashes.SHA384())), 48)
    ed = ed25519.Ed25519PrivateKey.generate()
    edraw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    edsig = ed.sign(MSG.encode()).hex()
    v = lambda expect, alg, form, key, sig, value=MSG: case("crypto.verify", expect, alg=alg, name=form, key=key, value=value, signature=sig)
    out += [
        v("ok true", "rsa-pkcs1-sha256", "spki", rspki, pkcs1),
        v("ok false", "rsa-pkcs1-sha256", "spki", rspki, pkcs1, value=MSG + "!"),
        v("ok false", "rsa-pkcs1-sha256", "spki", rspki, flip(pkcs1)),
        v("ok true", "rsa-pkcs1-sha256", "rsa", ne, pkcs1),
        v("ok false", "rsa-pkcs1-sha384", "spki", rspki, pkcs1),
        v("ok true", "rsa-pss-sha384", "spki", rspki, pss),
        v("ok false", "rsa-pss-sha256", "spki", rspki, pkcs1),
        v("ok true", "ecdsa-p256-sha256", "raw", point, es256),
        v("ok false", "ecdsa-p256-sha256", "raw", point, es256[:-2]),
        v("ok false", "ecdsa-p256-sha256", "raw", point, flip(es256)),
        v("ok true", "ecdsa-p384-sha384", "spki", p384.public_key().public_bytes(**SPKI).hex(), es384),
        v("ok true", "ed25519", "raw", edraw, edsig),
        v("ok false", "ed25519", "raw", edraw, flip(edsig)),
        v("ok true", "ed25519", "spki", ed.public_key().public_bytes(**SPKI).hex(), edsig),
        # Keys refused when made: wrong kind, too small, off the curve, malformed, no such form.
        v("invalid", "ecdsa-p256-sha256", "spki", rspki, es256),
        v("invalid", "ecdsa-p384-sha384", "raw", point, es384),
        v("invalid", "rsa-pkcs1-sha256", "rsa", f"{small.n.to_bytes(128, 'big').hex()}:010001", pkcs1),
        v("invalid", "rsa-pkcs1-sha256", "rsa", f"{nums.n.to_bytes(256, 'big').hex()}:010000", pkcs1),
        v("invalid", "ecdsa-p256-sha256", "raw", "04" + "01" * 64, es256),
        v("invalid", "ecdsa-p256-sha256", "spki", rspki[:40], es256),
        v("invalid", "ed25519", "raw", edraw[:-2], edsig),
        v("invalid", "rsa-pkcs1-sha256", "raw", point, pkcs1),
        case("crypto.key-limit", "ok 256"),
    ]
    return out


if __name__ == "__main__":
    path = "tests/filters/host-calls.json"
    table = json.load(open(path))
    table["cases"] = [c for c in table["cases"] if not c["call"].startswith("crypto.")] + cases()
    with open(path, "w") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{path}: {sum(c['call'].startswith('crypto.') for c in table['cases'])} crypto cases", file=sys.stderr)
