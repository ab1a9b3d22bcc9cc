// Cryptography in the proxy's native code (WIT `crypto`): digests, HMAC, constant-time
// comparison and signature verification (RSA PKCS#1 v1.5 and PSS, ECDSA P-256 and P-384,
// Ed25519). The proxy runs these with the CPU's SHA and vector instructions; the same algorithms
// compiled into a filter run several times slower in wasm.

import {
  IMPORT_RET,
  crypto_constant_time_equal,
  crypto_digest,
  crypto_hmac_create,
  crypto_hmac_drop,
  crypto_hmac_sign,
  crypto_hmac_verify,
  crypto_key_drop,
  crypto_key_from_raw,
  crypto_key_from_rsa,
  crypto_key_from_spki,
  crypto_key_verify,
  liftBytesAt,
  releaseHostMemory,
} from "./abi";
import { HostError, Result, liftHostError } from "./errors";

/** Most keys (HMAC and verifying together) an instance holds at once. */
export const MAX_CRYPTO_KEYS: i32 = 256;
/** Most bytes of key material (a secret, a DER key, a modulus). */
export const MAX_KEY_BYTES: i32 = 16 << 10;

/** A digest algorithm, and the hash of an HMAC (values are the WIT enum's). */
export enum Hash {
  Sha256 = 0,
  Sha384 = 1,
  Sha512 = 2,
}

/**
 * A signature scheme. RSA keys are 2048 to 8192 bits; ECDSA signatures are the fixed-size
 * `r || s` form of JWS and WebAuthn (not ASN.1 DER).
 */
export enum SignatureAlgorithm {
  /** JWS RS256. */
  RsaPkcs1Sha256 = 0,
  RsaPkcs1Sha384 = 1,
  RsaPkcs1Sha512 = 2,
  /** JWS PS256. */
  RsaPssSha256 = 3,
  RsaPssSha384 = 4,
  RsaPssSha512 = 5,
  /** JWS ES256. */
  EcdsaP256Sha256 = 6,
  /** JWS ES384. */
  EcdsaP384Sha384 = 7,
  /** JWS EdDSA. */
  Ed25519 = 8,
}

// @ts-ignore: decorator
@inline function ptr(b: Uint8Array): usize {
  return b.dataStart;
}

function liftBytesResult(): Uint8Array {
  const out = liftBytesAt(IMPORT_RET);
  releaseHostMemory();
  return out;
}

/** A `result<own<resource>, host-error>` from the import return area: the handle at +4. */
function liftHandle(): Result<i32> {
  if (load<u8>(IMPORT_RET) == 0) return Result.success<i32>(load<i32>(IMPORT_RET, 4));
  const e = liftHostError(IMPORT_RET + 4);
  releaseHostMemory();
  return Result.failure<i32>(e);
}

/**
 * Digests and constant-time comparison. Keys are parsed once into handles (`HmacKey`,
 * `VerifyingKey`): make them in the filter's constructor and keep them. An instance holds at
 * most `MAX_CRYPTO_KEYS` keys at once (`close()` frees a key's place); key material is at most
 * `MAX_KEY_BYTES`. Time spent here counts against the phase's time budget.
 */
export class crypto {
  /** The digest of `data`. */
  static digest(hash: Hash, data: Uint8Array): Uint8Array {
    crypto_digest(<i32>hash, ptr(data), <usize>data.length, IMPORT_RET);
    return liftBytesResult();
  }

  /** Whether `a` and `b` are equal, in time that depends only on their lengths. */
  static constantTimeEqual(a: Uint8Array, b: Uint8Array): bool {
    return crypto_constant_time_equal(ptr(a), <usize>a.length, ptr(b), <usize>b.length) != 0;
  }
}

/** A secret key for HMAC. */
export class HmacKey {
  private constructor(private handle: i32) {}

  /** A key from a secret of 1 byte to `MAX_KEY_BYTES`. */
  static create(hash: Hash, secret: Uint8Array): Result<HmacKey> {
    crypto_hmac_create(<i32>hash, ptr(secret), <usize>secret.length, IMPORT_RET);
    const h = liftHandle();
    if (!h.ok) return Result.failure<HmacKey>(<HostError>h.error);
    return Result.success<HmacKey>(new HmacKey(h.value));
  }

  /** The tag of `message`. */
  sign(message: Uint8Array): Uint8Array {
    crypto_hmac_sign(this.handle, ptr(message), <usize>message.length, IMPORT_RET);
    return liftBytesResult();
  }

  /** Whether `tag` is the tag of `message` (compared in constant time). */
  verify(message: Uint8Array, tag: Uint8Array): bool {
    return crypto_hmac_verify(this.handle, ptr(message), <usize>message.length, ptr(tag), <usize>tag.length) != 0;
  }

  /** Frees the key's place in the instance; the key must not be used after. */
  close(): void {
    crypto_hmac_drop(this.handle);
  }
}

/**
 * A public key that verifies signatures of one algorithm. The key's type must fit the algorithm
 * (an RSA key for the `Rsa*` ones, a P-256 key for `EcdsaP256Sha256`, ...), else `invalid`.
 */
export class VerifyingKey {
  private constructor(private handle: i32) {}

  private static made(): Result<VerifyingKey> {
    const h = liftHandle();
    if (!h.ok) return Result.failure<VerifyingKey>(<HostError>h.error);
    return Result.success<VerifyingKey>(new VerifyingKey(h.value));
  }

  /** From DER SubjectPublicKeyInfo: the base64 body of a PEM `PUBLIC KEY` block. */
  static fromSpki(alg: SignatureAlgorithm, der: Uint8Array): Result<VerifyingKey> {
    crypto_key_from_spki(<i32>alg, ptr(der), <usize>der.length, IMPORT_RET);
    return VerifyingKey.made();
  }

  /** An RSA key from its modulus and exponent, unsigned big-endian (a JWK's `n` and `e`). */
  static fromRsaComponents(alg: SignatureAlgorithm, modulus: Uint8Array, exponent: Uint8Array): Result<VerifyingKey> {
    crypto_key_from_rsa(<i32>alg, ptr(modulus), <usize>modulus.length, ptr(exponent), <usize>exponent.length, IMPORT_RET);
    return VerifyingKey.made();
  }

  /** An ECDSA key from its uncompressed point `0x04 || x || y`, or an Ed25519 key's 32 bytes. */
  static fromRaw(alg: SignatureAlgorithm, key: Uint8Array): Result<VerifyingKey> {
    crypto_key_from_raw(<i32>alg, ptr(key), <usize>key.length, IMPORT_RET);
    return VerifyingKey.made();
  }

  /** Whether `signature` is a valid signature of `message` by this key. */
  verify(message: Uint8Array, signature: Uint8Array): bool {
    return crypto_key_verify(this.handle, ptr(message), <usize>message.length, ptr(signature), <usize>signature.length) != 0;
  }

  /** Frees the key's place in the instance; the key must not be used after. */
  close(): void {
    crypto_key_drop(this.handle);
  }
}
