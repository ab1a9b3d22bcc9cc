//! Password hashes in the config and their verification.
//!
//! Two formats:
//!
//! * `sha256:<salt>:<hex>` — hex of SHA-256(salt bytes ‖ password bytes); the salt is the
//!   text between the first and the last colon. Fast: for passwords that are long random
//!   tokens, or for development.
//! * `pbkdf2-sha256:<iterations>:<salt_b64>:<hash_b64>` — PBKDF2-HMAC-SHA256 (RFC 8018),
//!   salt and derived key in standard base64 (padding optional); the derived key length is the
//!   decoded hash's. Slow on purpose, bounded by the phase time budget.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use weir_filter::crypto::{self, Hash, HmacKey};

/// Standard base64 that accepts values with or without `=` padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Most PBKDF2 iterations accepted at all: far beyond any phase budget already.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Above this, a first verification risks the default 5 ms phase budget (see the README).
pub const BUDGET_ITERATIONS: u32 = 2_000;
const MIN_SALT: usize = 8;

/// A parsed `password_hash`.
#[derive(Debug, Clone)]
pub enum PasswordHash {
    Sha256 {
        salt: Vec<u8>,
        digest: [u8; 32],
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        key: Vec<u8>,
    },
}

impl PasswordHash {
    /// Parses a `password_hash` value; the error says what is wrong (not the value itself,
    /// which is a secret of sorts).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        if let Some(rest) = text.strip_prefix("sha256:") {
            let (salt, hex) = rest
                .rsplit_once(':')
                .ok_or("expected sha256:<salt>:<hex of sha256(salt + password)>")?;
            if salt.is_empty() {
                return Err("sha256: the salt must not be empty".to_owned());
            }
            let digest = parse_hex32(hex).ok_or("sha256: expected 64 hex digits after the salt")?;
            return Ok(PasswordHash::Sha256 {
                salt: salt.as_bytes().to_vec(),
                digest,
            });
        }
        if let Some(rest) = text.strip_prefix("pbkdf2-sha256:") {
            let parts: Vec<&str> = rest.split(':').collect();
            let [iterations, salt, key] = parts.as_slice() else {
                return Err("expected pbkdf2-sha256:<iterations>:<salt_b64>:<hash_b64>".to_owned());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|n| (1..=MAX_ITERATIONS).contains(n))
                .ok_or_else(|| format!("pbkdf2-sha256: iterations must be 1..={MAX_ITERATIONS}"))?;
            let salt = B64
                .decode(salt)
                .map_err(|_| "pbkdf2-sha256: the salt is not standard base64".to_owned())?;
            if salt.len() < MIN_SALT {
                return Err(format!(
                    "pbkdf2-sha256: the salt must be at least {MIN_SALT} bytes"
                ));
            }
            let key = B64
                .decode(key)
                .map_err(|_| "pbkdf2-sha256: the hash is not standard base64".to_owned())?;
            if !(16..=64).contains(&key.len()) {
                return Err("pbkdf2-sha256: the hash must be 16 to 64 bytes".to_owned());
            }
            return Ok(PasswordHash::Pbkdf2 {
                iterations,
                salt,
                key,
            });
        }
        Err("unknown format: expected sha256:<salt>:<hex> or pbkdf2-sha256:<iterations>:<salt_b64>:<hash_b64>".to_owned())
    }

    /// Whether `password` matches, compared in constant time. The hashing is the proxy's
    /// native crypto (`weir_filter::crypto`).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Sha256 { salt, digest } => {
                let got = crypto::digest(Hash::Sha256, &[salt.as_slice(), password].concat());
                crypto::constant_time_equal(&got, digest)
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                key,
            } => pbkdf2_sha256(password, salt, *iterations, key.len())
                .is_some_and(|got| crypto::constant_time_equal(&got, key)),
        }
    }

    /// Relative cost of one verification (PBKDF2 iterations; 1 for a plain hash).
    pub fn cost(&self) -> u32 {
        match self {
            PasswordHash::Sha256 { .. } => 1,
            PasswordHash::Pbkdf2 { iterations, .. } => *iterations,
        }
    }
}

/// PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) on the proxy's HMAC: `len` bytes derived from `password`
/// and `salt`. `None` when the proxy refuses the password as an HMAC key (over 16 KiB).
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32, len: usize) -> Option<Vec<u8>> {
    // HMAC pads a short key with zeros to the hash's block: an empty password is the same key
    // as 64 zero bytes (the proxy refuses empty keys).
    let key = if password.is_empty() {
        &[0u8; 64][..]
    } else {
        password
    };
    let prf = HmacKey::new(Hash::Sha256, key).ok()?;
    let mut out = Vec::with_capacity(len.div_ceil(32) * 32);
    for block in 1..=len.div_ceil(32) as u32 {
        let mut u = prf.sign(&[salt, &block.to_be_bytes()].concat());
        let mut t = u.clone();
        for _ in 1..iterations {
            u = prf.sign(&u);
            t.iter_mut().zip(&u).for_each(|(a, b)| *a ^= b);
        }
        out.extend_from_slice(&t);
    }
    out.truncate(len);
    Some(out)
}

/// Standard base64 with padding, for building hashes in tests and docs.
pub fn b64(bytes: &[u8]) -> String {
    general_purpose::STANDARD.encode(bytes)
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Decodes the base64 of a `Basic` credential (padding optional).
pub fn decode_b64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}
