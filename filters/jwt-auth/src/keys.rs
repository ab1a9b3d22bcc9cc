//! Verification keys: parsed once at configure from `keys` entries and JWKS documents, then
//! used to check signatures.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use sha2::Sha256;

/// The signature algorithms the filter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256 (a shared secret).
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// The algorithm named by a JOSE `alg` value; `None` for anything unsupported, `none`
    /// included.
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_HMAC_SECRET: usize = 32;
/// Smaller RSA moduli are factorable in practice.
pub const MIN_RSA_BITS: usize = 2048;

/// Key material, ready to verify.
pub enum Material {
    Hmac(Vec<u8>),
    Rsa(Box<rsa::pkcs1v15::VerifyingKey<Sha256>>),
    Ec(p256::ecdsa::VerifyingKey),
}

/// One verification key.
pub struct Key {
    /// The key id tokens name in their header; a key without one matches tokens by algorithm.
    pub kid: Option<String>,
    pub material: Material,
}

impl Key {
    /// The algorithm this key verifies (a key is never used for another one).
    pub fn alg(&self) -> Alg {
        match self.material {
            Material::Hmac(_) => Alg::Hs256,
            Material::Rsa(_) => Alg::Rs256,
            Material::Ec(_) => Alg::Es256,
        }
    }

    /// Whether `signature` is this key's signature of `input`. Never panics, whatever the
    /// bytes.
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(input);
                // `verify_slice` compares in constant time.
                mac.verify_slice(signature).is_ok()
            }
            Material::Rsa(key) => {
                let key: &rsa::pkcs1v15::VerifyingKey<Sha256> = key;
                let size = key.as_ref().size();
                if signature.len() != size {
                    return false;
                }
                match rsa::pkcs1v15::Signature::try_from(signature) {
                    Ok(sig) => key.verify(input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
            Material::Ec(key) => {
                // JWS carries ECDSA signatures as raw r || s (RFC 7518 §3.4), not DER.
                if signature.len() != 64 {
                    return false;
                }
                match p256::ecdsa::Signature::from_slice(signature) {
                    Ok(sig) => key.verify(input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
        }
    }
}

/// A `keys` entry of the config: `{ kid, alg, secret }` or `{ kid, alg, public_key_pem }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id, matched against the token header's `kid`. Default: none (the key is tried for
    /// every token of its algorithm that names no known kid).
    #[serde(default)]
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `ES256`.
    pub alg: String,
    /// HS256 only: the shared secret, as text (at least 32 bytes).
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256 / ES256 only: the public key, PEM (`BEGIN PUBLIC KEY`, or `BEGIN RSA PUBLIC KEY`
    /// for RS256).
    #[serde(default)]
    pub public_key_pem: Option<String>,
}

/// Builds a key from a `keys` entry; `at` locates errors (`keys[0]`).
pub fn from_config(at: &str, config: &KeyConfig) -> Result<Key, String> {
    let alg = parse_alg(&format!("{at}.alg"), &config.alg)?;
    let material = match (alg, &config.secret, &config.public_key_pem) {
        (_, Some(_), Some(_)) => {
            return Err(format!(
                "{at}: give either secret or public_key_pem, not both"
            ));
        }
        (Alg::Hs256, Some(secret), None) => {
            hmac_secret(&format!("{at}.secret"), secret.as_bytes())?
        }
        (Alg::Hs256, None, _) => return Err(format!("{at}: alg HS256 needs a secret")),
        (_, Some(_), None) => {
            return Err(format!(
                "{at}: alg {} needs public_key_pem, not a secret",
                alg.name()
            ));
        }
        (_, None, None) => {
            return Err(format!("{at}: alg {} needs public_key_pem", alg.name()));
        }
        (Alg::Rs256, None, Some(pem)) => rsa_pem(&format!("{at}.public_key_pem"), pem)?,
        (Alg::Es256, None, Some(pem)) => ec_pem(&format!("{at}.public_key_pem"), pem)?,
    };
    Ok(Key {
        kid: non_empty_kid(at, config.kid.as_deref())?,
        material,
    })
}

fn non_empty_kid(at: &str, kid: Option<&str>) -> Result<Option<String>, String> {
    match kid {
        Some("") => Err(format!(
            "{at}.kid: must not be empty (leave it out instead)"
        )),
        other => Ok(other.map(str::to_owned)),
    }
}

fn parse_alg(at: &str, name: &str) -> Result<Alg, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err(format!(
            "{at}: \"none\" is never accepted: tokens must be signed"
        ));
    }
    Alg::parse(name)
        .ok_or_else(|| format!("{at}: unknown algorithm {name:?} (supported: HS256, RS256, ES256)"))
}

fn hmac_secret(at: &str, secret: &[u8]) -> Result<Material, String> {
    if secret.len() < MIN_HMAC_SECRET {
        return Err(format!(
            "{at}: an HS256 secret must be at least {MIN_HMAC_SECRET} bytes (RFC 7518 3.2), got {}",
            secret.len()
        ));
    }
    Ok(Material::Hmac(secret.to_vec()))
}

/// Rejects PEM blocks that are not public keys with a message that says what was given.
fn pem_kind_check(at: &str, pem: &str) -> Result<(), String> {
    if pem.contains("PRIVATE KEY") {
        return Err(format!(
            "{at}: this is a private key; give the public key (a private key never belongs in the proxy config)"
        ));
    }
    if pem.contains("BEGIN CERTIFICATE") {
        return Err(format!(
            "{at}: certificates are not supported; give the public key (`openssl x509 -pubkey -noout`)"
        ));
    }
    Ok(())
}

fn rsa_pem(at: &str, pem: &str) -> Result<Material, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    pem_kind_check(at, pem)?;
    let key = match rsa::RsaPublicKey::from_public_key_pem(pem.trim()) {
        Ok(k) => k,
        Err(spki) => rsa::RsaPublicKey::from_pkcs1_pem(pem.trim())
            .map_err(|_| format!("{at}: not an RSA public key in PEM ({spki})"))?,
    };
    rsa_key(at, key)
}

fn rsa_key(at: &str, key: rsa::RsaPublicKey) -> Result<Material, String> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "{at}: RSA keys must have at least {MIN_RSA_BITS} bits, this one has {bits}"
        ));
    }
    Ok(Material::Rsa(Box::new(rsa::pkcs1v15::VerifyingKey::new(
        key,
    ))))
}

fn ec_pem(at: &str, pem: &str) -> Result<Material, String> {
    use p256::pkcs8::DecodePublicKey;
    pem_kind_check(at, pem)?;
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| format!("{at}: not a P-256 public key in PEM ({e})"))?;
    Ok(Material::Ec(key))
}

/// A JWKS document (RFC 7517 §5): `{ "keys": [ JWK, ... ] }`.
///
/// Unknown members are ignored, here and in each key: a JWKS is a document published by an
/// identity provider, not config written for Weir, and RFC 7517 says to ignore what is not
/// understood.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwks {
    /// The keys, kept as JSON so each one is checked (and reported) on its own.
    pub keys: Vec<serde_json::Value>,
}

/// The JWK members the filter reads.
#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// What became of one JWK.
pub enum JwkOutcome {
    Key(Key),
    /// Not usable by this filter (another algorithm, curve or use); the reason is logged.
    Skipped(String),
}

/// Builds a key from one JWK; `at` locates errors (`jwks.keys[2]`). Keys of algorithms the
/// filter does not implement are skipped rather than rejected, so a provider's JWKS that also
/// lists, say, RS384 keys can be used as is; a key that claims a supported algorithm but is
/// malformed is an error.
pub fn from_jwk(at: &str, value: &serde_json::Value) -> Result<JwkOutcome, String> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| format!("{at}: {e}"))?;
    if let Some(use_) = jwk.use_.as_deref()
        && use_ != "sig"
    {
        return Ok(JwkOutcome::Skipped(format!(
            "{at}: skipped: use {use_:?} is not \"sig\""
        )));
    }
    let alg = match jwk.alg.as_deref() {
        Some(name) => match Alg::parse(name) {
            Some(alg) => Some(alg),
            None if name.eq_ignore_ascii_case("none") => {
                return Err(format!("{at}.alg: \"none\" is never accepted"));
            }
            None => {
                return Ok(JwkOutcome::Skipped(format!(
                    "{at}: skipped: algorithm {name:?} is not supported (HS256, RS256, ES256 are)"
                )));
            }
        },
        None => None,
    };
    let material = match jwk.kty.as_str() {
        "RSA" => {
            expect_alg(at, alg, Alg::Rs256, "RSA")?;
            let n = b64_member(at, "n", jwk.n.as_deref())?;
            let e = b64_member(at, "e", jwk.e.as_deref())?;
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|err| format!("{at}: invalid RSA key ({err})"))?;
            rsa_key(at, key)?
        }
        "EC" => {
            let crv = jwk.crv.as_deref().unwrap_or("");
            if crv != "P-256" {
                if alg == Some(Alg::Es256) {
                    return Err(format!("{at}.crv: ES256 needs curve P-256, got {crv:?}"));
                }
                return Ok(JwkOutcome::Skipped(format!(
                    "{at}: skipped: curve {crv:?} is not supported (P-256 is)"
                )));
            }
            expect_alg(at, alg, Alg::Es256, "EC")?;
            let x = b64_member(at, "x", jwk.x.as_deref())?;
            let y = b64_member(at, "y", jwk.y.as_deref())?;
            if x.len() != 32 || y.len() != 32 {
                return Err(format!(
                    "{at}: P-256 coordinates x and y must be 32 bytes each"
                ));
            }
            let mut sec1 = Vec::with_capacity(65);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map_err(|_| format!("{at}: x, y is not a point on P-256"))?;
            Material::Ec(key)
        }
        "oct" => {
            expect_alg(at, alg, Alg::Hs256, "oct")?;
            let k = b64_member(at, "k", jwk.k.as_deref())?;
            hmac_secret(&format!("{at}.k"), &k)?
        }
        other => {
            return Ok(JwkOutcome::Skipped(format!(
                "{at}: skipped: key type {other:?} is not supported (RSA, EC, oct are)"
            )));
        }
    };
    Ok(JwkOutcome::Key(Key {
        kid: non_empty_kid(at, jwk.kid.as_deref())?,
        material,
    }))
}

fn expect_alg(at: &str, alg: Option<Alg>, want: Alg, kty: &str) -> Result<(), String> {
    match alg {
        Some(alg) if alg != want => Err(format!(
            "{at}: alg {} does not fit key type {kty} (expected {})",
            alg.name(),
            want.name()
        )),
        _ => Ok(()),
    }
}

fn b64_member(at: &str, name: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("{at}.{name}: missing"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("{at}.{name}: not base64url without padding"))?;
    if bytes.is_empty() {
        return Err(format!("{at}.{name}: empty"));
    }
    Ok(bytes)
}
