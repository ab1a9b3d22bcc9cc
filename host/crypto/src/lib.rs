//! The cryptography Weir serves to filters through the WIT `crypto` interface: digests, HMAC,
//! constant-time comparison and signature verification, in native code (ring).
//!
//! Used by the host (`weir-filters`) and by the Rust SDK's native emulator, so a filter tested
//! with `cargo test` gets exactly the answers it gets in the proxy. Everything here takes bytes
//! a filter chose: key material is bounded ([`MAX_KEY_BYTES`]), DER is decoded by bounds-checked
//! decoders, and a key that does not fit its algorithm is refused when it is made, not at each
//! verification.

use der::asn1::UintRef;
use der::{Decode, Reader};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

/// Most bytes of key material (a secret, a DER key, a modulus).
pub const MAX_KEY_BYTES: usize = 16 << 10;
/// Most keys (HMAC and verifying together) one filter instance holds at once.
pub const MAX_KEYS_PER_INSTANCE: usize = 256;
/// Smallest RSA modulus accepted, in bits (smaller ones are factorable in practice).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (verification cost grows with its square).
pub const MAX_RSA_BITS: usize = 8192;

/// A digest algorithm (and the hash of an HMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// A signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWS RS256).
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (RS384).
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (RS512).
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1 SHA-256, salt the hash's length (PS256).
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384 (PS384).
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512 (PS512).
    RsaPssSha512,
    /// ECDSA on P-256 with SHA-256, `r || s` signatures (ES256).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384, `r || s` signatures (ES384).
    EcdsaP384Sha384,
    /// Ed25519 (EdDSA).
    Ed25519,
}

/// What kind of key an algorithm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec {
        /// The namedCurve OID.
        curve: ObjectIdentifier,
        /// Bytes of an uncompressed point.
        point: usize,
    },
    Ed25519,
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

impl SignatureAlgorithm {
    /// The WIT name (`rsa-pkcs1-sha256`), for messages.
    pub fn name(self) -> &'static str {
        use SignatureAlgorithm as A;
        match self {
            A::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
            A::RsaPkcs1Sha384 => "rsa-pkcs1-sha384",
            A::RsaPkcs1Sha512 => "rsa-pkcs1-sha512",
            A::RsaPssSha256 => "rsa-pss-sha256",
            A::RsaPssSha384 => "rsa-pss-sha384",
            A::RsaPssSha512 => "rsa-pss-sha512",
            A::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            A::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            A::Ed25519 => "ed25519",
        }
    }

    fn kind(self) -> KeyKind {
        use SignatureAlgorithm as A;
        match self {
            A::RsaPkcs1Sha256
            | A::RsaPkcs1Sha384
            | A::RsaPkcs1Sha512
            | A::RsaPssSha256
            | A::RsaPssSha384
            | A::RsaPssSha512 => KeyKind::Rsa,
            A::EcdsaP256Sha256 => KeyKind::Ec {
                curve: P256,
                point: 65,
            },
            A::EcdsaP384Sha384 => KeyKind::Ec {
                curve: P384,
                point: 97,
            },
            A::Ed25519 => KeyKind::Ed25519,
        }
    }

    fn rsa(self) -> &'static signature::RsaParameters {
        use SignatureAlgorithm as A;
        match self {
            A::RsaPkcs1Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            A::RsaPkcs1Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            A::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
            A::RsaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
            A::RsaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }

    fn other(self) -> &'static dyn VerificationAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_FIXED,
            SignatureAlgorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_FIXED,
            _ => &signature::ED25519,
        }
    }
}

/// Why a key was refused (the message never quotes key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn refuse<T>(message: impl Into<String>) -> Result<T, KeyError> {
    Err(KeyError(message.into()))
}

fn bounded(what: &str, bytes: &[u8]) -> Result<(), KeyError> {
    if bytes.is_empty() {
        return refuse(format!("{what} is empty"));
    }
    if bytes.len() > MAX_KEY_BYTES {
        return refuse(format!(
            "{what} is {} bytes; at most {MAX_KEY_BYTES}",
            bytes.len()
        ));
    }
    Ok(())
}

/// The digest of `data`.
pub fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    let alg = match hash {
        Hash::Sha256 => &ring::digest::SHA256,
        Hash::Sha384 => &ring::digest::SHA384,
        Hash::Sha512 => &ring::digest::SHA512,
    };
    ring::digest::digest(alg, data).as_ref().to_vec()
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Accumulate every byte's difference: no early exit, no data-dependent branch.
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A secret key for HMAC (its inner and outer hash states are computed once, here).
pub struct HmacKey(ring::hmac::Key);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    /// A key from a secret of 1 byte to [`MAX_KEY_BYTES`].
    pub fn new(hash: Hash, secret: &[u8]) -> Result<HmacKey, KeyError> {
        bounded("the HMAC secret", secret)?;
        let alg = match hash {
            Hash::Sha256 => ring::hmac::HMAC_SHA256,
            Hash::Sha384 => ring::hmac::HMAC_SHA384,
            Hash::Sha512 => ring::hmac::HMAC_SHA512,
        };
        Ok(HmacKey(ring::hmac::Key::new(alg, secret)))
    }

    /// The tag of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&self.0, message).as_ref().to_vec()
    }

    /// Whether `tag` is the tag of `message` (compared in constant time).
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        ring::hmac::verify(&self.0, message, tag).is_ok()
    }
}

/// A public key that verifies signatures of one algorithm.
#[derive(Debug)]
pub struct VerifyingKey {
    alg: SignatureAlgorithm,
    key: Material,
}

#[derive(Debug)]
enum Material {
    /// Modulus and exponent, leading zeros stripped.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed EC point or an Ed25519 key.
    Raw(Vec<u8>),
}

impl VerifyingKey {
    /// From DER `SubjectPublicKeyInfo` (the body of a PEM `PUBLIC KEY` block).
    pub fn from_spki(alg: SignatureAlgorithm, der: &[u8]) -> Result<VerifyingKey, KeyError> {
        bounded("the key", der)?;
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .or_else(|_| refuse("the key is not DER SubjectPublicKeyInfo"))?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| KeyError("the key's bit string is not whole bytes".into()))?;
        let oid = spki.algorithm.oid;
        match alg.kind() {
            KeyKind::Rsa => {
                if oid != RSA_ENCRYPTION {
                    return refuse(format!("{} needs an RSA key", alg.name()));
                }
                let (n, e) = pkcs1(bits)?;
                VerifyingKey::from_rsa_components(alg, n, e)
            }
            KeyKind::Ec { curve, .. } => {
                let named = spki
                    .algorithm
                    .parameters
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
                if oid != EC_PUBLIC_KEY || named != Some(curve) {
                    return refuse(format!("{} needs an EC key on its curve", alg.name()));
                }
                VerifyingKey::from_raw(alg, bits)
            }
            KeyKind::Ed25519 => {
                if oid != ED25519 {
                    return refuse("Ed25519 needs an Ed25519 key");
                }
                VerifyingKey::from_raw(alg, bits)
            }
        }
    }

    /// An RSA key from its modulus and public exponent, unsigned big-endian.
    pub fn from_rsa_components(
        alg: SignatureAlgorithm,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<VerifyingKey, KeyError> {
        if alg.kind() != KeyKind::Rsa {
            return refuse(format!("{} does not take an RSA key", alg.name()));
        }
        bounded("the modulus", modulus)?;
        bounded("the exponent", exponent)?;
        let n = strip(modulus);
        let e = strip(exponent);
        // `n` has no leading zero byte: its first byte's leading zero bits are all there are.
        let bits = n
            .first()
            .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return refuse(format!(
                "the RSA key has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
            ));
        }
        // What ring accepts: odd, at least 3, at most 33 bits.
        let small = e.len() <= 4 || (e.len() == 5 && e[0] == 1);
        if !small || e.last().is_none_or(|b| b & 1 == 0) || (e.len() == 1 && e[0] < 3) {
            return refuse("the RSA exponent must be odd, at least 3 and at most 33 bits");
        }
        Ok(VerifyingKey {
            alg,
            key: Material::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            },
        })
    }

    /// An ECDSA key from its uncompressed point `0x04 || x || y`, or an Ed25519 key from its
    /// 32 bytes.
    pub fn from_raw(alg: SignatureAlgorithm, key: &[u8]) -> Result<VerifyingKey, KeyError> {
        match alg.kind() {
            KeyKind::Rsa => {
                refuse("an RSA key is made from SubjectPublicKeyInfo or its modulus and exponent")
            }
            KeyKind::Ec { point, .. } => {
                if key.len() != point || key[0] != 4 {
                    return refuse(format!(
                        "{} needs an uncompressed point of {point} bytes (0x04 || x || y)",
                        alg.name()
                    ));
                }
                if !on_curve(point, key) {
                    return refuse(format!("the point is not on the curve of {}", alg.name()));
                }
                Ok(VerifyingKey {
                    alg,
                    key: Material::Raw(key.to_vec()),
                })
            }
            KeyKind::Ed25519 => {
                if key.len() != 32 {
                    return refuse("an Ed25519 key is 32 bytes");
                }
                Ok(VerifyingKey {
                    alg,
                    key: Material::Raw(key.to_vec()),
                })
            }
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.alg
    }

    /// Whether `signature` is a valid signature of `message` by this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(self.alg.rsa(), message, signature)
                .is_ok(),
            Material::Raw(k) => UnparsedPublicKey::new(self.alg.other(), k)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// Whether `key` is a valid public point of the curve whose uncompressed points are `point`
/// bytes long. ring checks points only when it uses them, and its ECDH is the one public API
/// that reports a bad peer point on its own: an agreement with a throwaway key tells (once, when
/// a key is made, never per verification).
fn on_curve(point: usize, key: &[u8]) -> bool {
    use ring::agreement;
    let alg = if point == 65 {
        &agreement::ECDH_P256
    } else {
        &agreement::ECDH_P384
    };
    let rng = ring::rand::SystemRandom::new();
    let Ok(mine) = agreement::EphemeralPrivateKey::generate(alg, &rng) else {
        return false;
    };
    let peer = agreement::UnparsedPublicKey::new(alg, key);
    agreement::agree_ephemeral(mine, &peer, |_| ()).is_ok()
}

fn strip(b: &[u8]) -> &[u8] {
    let zeros = b.iter().take_while(|&&x| x == 0).count();
    &b[zeros..]
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (PKCS#1).
fn pkcs1(der: &[u8]) -> Result<(&[u8], &[u8]), KeyError> {
    let bad = |_| KeyError("the RSA key is not a PKCS#1 RSAPublicKey".into());
    let mut r = der::SliceReader::new(der).map_err(bad)?;
    let (n, e) = r
        .sequence(|s| Ok((UintRef::decode(s)?, UintRef::decode(s)?)))
        .map_err(bad)?;
    r.finish(()).map_err(bad)?;
    Ok((n.as_bytes(), e.as_bytes()))
}

#[cfg(test)]
mod tests;
