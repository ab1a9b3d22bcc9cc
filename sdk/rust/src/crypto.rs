//! Cryptography in the proxy's native code: digests, HMAC, constant-time comparison and
//! signature verification (RSA PKCS#1 v1.5 and PSS, ECDSA P-256 and P-384, Ed25519).
//!
//! The proxy runs these with the CPU's SHA and vector instructions; the same algorithms
//! compiled into a filter run several times slower in wasm, and make the module larger. Keys
//! are parsed once into handles: make them in [`Filter::new`](crate::Filter::new) and keep them
//! in the filter.
//!
//! ```
//! use weir_filter::crypto::{self, Hash, HmacKey};
//! let key = HmacKey::new(Hash::Sha256, b"a secret of at least 32 bytes....")?;
//! let tag = key.sign(b"header.payload");
//! assert!(key.verify(b"header.payload", &tag));
//! assert_eq!(crypto::digest(Hash::Sha256, b"abc").len(), 32);
//! # Ok::<(), weir_filter::HostError>(())
//! ```
//!
//! An instance holds at most [`MAX_KEYS`] keys at once (more is [`HostError::Invalid`]; a
//! dropped key frees its place); key material is at most [`MAX_KEY_BYTES`]. Time spent here
//! counts against the phase's time budget. Natively (`cargo test`), the SDK's emulator runs the
//! proxy's own implementation, so tests see the proxy's answers.

use crate::HostError;
use crate::sys::{Backend, Host};

/// Most keys (HMAC and verifying together) an instance holds at once.
pub const MAX_KEYS: usize = 256;
/// Most bytes of key material (a secret, a DER key, a modulus).
pub const MAX_KEY_BYTES: usize = 16 << 10;

/// A digest algorithm, and the hash of an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// A signature scheme. RSA keys are 2048 to 8192 bits; ECDSA signatures are the fixed-size
/// `r || s` form of JWS and WebAuthn (not ASN.1 DER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`).
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (`RS384`).
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (`RS512`).
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256 (`PS256`).
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384 (`PS384`).
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512 (`PS512`).
    RsaPssSha512,
    /// ECDSA on P-256 with SHA-256 (`ES256`).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384 (`ES384`).
    EcdsaP384Sha384,
    /// Ed25519 (`EdDSA`).
    Ed25519,
}

/// The digest of `data`.
pub fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    Backend::digest(hash, data)
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths (compare secrets,
/// API keys and MACs with this, never with `==`).
pub fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
    Backend::constant_time_equal(a, b)
}

/// A secret key for HMAC.
pub struct HmacKey(<Backend as Host>::HmacKey);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    /// A key from a secret of 1 byte to [`MAX_KEY_BYTES`].
    pub fn new(hash: Hash, secret: &[u8]) -> Result<HmacKey, HostError> {
        Backend::hmac_key(hash, secret).map(HmacKey)
    }

    /// The tag of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        Backend::hmac_sign(&self.0, message)
    }

    /// Whether `tag` is the tag of `message` (compared in constant time).
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        Backend::hmac_verify(&self.0, message, tag)
    }
}

/// A public key that verifies signatures of one algorithm. The key's type must fit the
/// algorithm (an RSA key for the `Rsa*` ones, a P-256 key for `EcdsaP256Sha256`, ...), else
/// making it is [`HostError::Invalid`].
pub struct VerifyingKey(<Backend as Host>::VerifyingKey);

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyingKey(..)")
    }
}

impl VerifyingKey {
    /// From DER `SubjectPublicKeyInfo`: the base64 body of a PEM `PUBLIC KEY` block (see
    /// [`pem_body`]).
    pub fn from_spki(alg: SignatureAlgorithm, der: &[u8]) -> Result<VerifyingKey, HostError> {
        Backend::verifying_key_spki(alg, der).map(VerifyingKey)
    }

    /// An RSA key from its modulus and public exponent, unsigned big-endian (a JWK's `n` and
    /// `e`, base64url-decoded).
    pub fn from_rsa_components(
        alg: SignatureAlgorithm,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<VerifyingKey, HostError> {
        Backend::verifying_key_rsa(alg, modulus, exponent).map(VerifyingKey)
    }

    /// An ECDSA key from its uncompressed point `0x04 || x || y` (a JWK's `x` and `y`), or an
    /// Ed25519 key from its 32 bytes (a JWK's `x`).
    pub fn from_raw(alg: SignatureAlgorithm, key: &[u8]) -> Result<VerifyingKey, HostError> {
        Backend::verifying_key_raw(alg, key).map(VerifyingKey)
    }

    /// Whether `signature` is a valid signature of `message` by this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        Backend::verify_signature(&self.0, message, signature)
    }
}

/// The base64 text inside the first PEM block labelled `label` (`"PUBLIC KEY"`), with line
/// breaks removed: decode it to get the DER. `None` when there is no such block.
pub fn pem_body<'a>(pem: &'a str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: &'a str = &pem[start..stop];
    Some(body.chars().filter(|c| !c.is_ascii_whitespace()).collect())
}
