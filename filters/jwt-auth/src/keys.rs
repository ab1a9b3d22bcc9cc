//! Verification keys: parsed once at configure from `keys` entries and JWKS documents, then
//! used to check signatures. The crypto is the proxy's (`weir_filter::crypto`, native code):
//! this module only maps JOSE names and key formats onto it.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use weir_filter::crypto::{Hash, HmacKey, SignatureAlgorithm as Sig, VerifyingKey};

/// The signature algorithms the filter accepts (RFC 7518 §3.1, RFC 8037 for EdDSA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256 (a shared secret).
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519 (`EdDSA` with curve Ed25519).
    EdDsa,
}

/// What kind of key an algorithm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac(Hash),
    Rsa(Sig),
    /// ECDSA: the scheme, the JWK curve name and its coordinate size.
    Ec(Sig, &'static str, usize),
    Ed25519,
}

/// Every algorithm with its JOSE name, in the order messages list them.
const ALGS: [(Alg, &str); 12] = [
    (Alg::Hs256, "HS256"),
    (Alg::Hs384, "HS384"),
    (Alg::Hs512, "HS512"),
    (Alg::Rs256, "RS256"),
    (Alg::Rs384, "RS384"),
    (Alg::Rs512, "RS512"),
    (Alg::Ps256, "PS256"),
    (Alg::Ps384, "PS384"),
    (Alg::Ps512, "PS512"),
    (Alg::Es256, "ES256"),
    (Alg::Es384, "ES384"),
    (Alg::EdDsa, "EdDSA"),
];

/// The supported names, for messages.
pub const SUPPORTED: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

impl Alg {
    /// The algorithm named by a JOSE `alg` value; `None` for anything unsupported, `none`
    /// included.
    pub fn parse(name: &str) -> Option<Alg> {
        ALGS.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        ALGS.iter()
            .find(|(a, _)| *a == self)
            .map_or("?", |(_, n)| n)
    }

    fn family(self) -> Family {
        match self {
            Alg::Hs256 => Family::Hmac(Hash::Sha256),
            Alg::Hs384 => Family::Hmac(Hash::Sha384),
            Alg::Hs512 => Family::Hmac(Hash::Sha512),
            Alg::Rs256 => Family::Rsa(Sig::RsaPkcs1Sha256),
            Alg::Rs384 => Family::Rsa(Sig::RsaPkcs1Sha384),
            Alg::Rs512 => Family::Rsa(Sig::RsaPkcs1Sha512),
            Alg::Ps256 => Family::Rsa(Sig::RsaPssSha256),
            Alg::Ps384 => Family::Rsa(Sig::RsaPssSha384),
            Alg::Ps512 => Family::Rsa(Sig::RsaPssSha512),
            Alg::Es256 => Family::Ec(Sig::EcdsaP256Sha256, "P-256", 32),
            Alg::Es384 => Family::Ec(Sig::EcdsaP384Sha384, "P-384", 48),
            Alg::EdDsa => Family::Ed25519,
        }
    }

    /// The smallest HMAC secret for this algorithm: the hash's output size (RFC 7518 §3.2).
    fn min_secret(self) -> usize {
        match self {
            Alg::Hs384 => 48,
            Alg::Hs512 => 64,
            _ => MIN_HMAC_SECRET,
        }
    }
}

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (48 bytes for
/// HS384, 64 for HS512).
pub const MIN_HMAC_SECRET: usize = 32;

/// Key material, ready to verify: a handle on a key the proxy parsed.
pub enum Material {
    Hmac(HmacKey),
    Public(VerifyingKey),
}

/// One verification key.
pub struct Key {
    /// The key id tokens name in their header; a key without one matches tokens by algorithm.
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Alg,
    pub material: Material,
}

impl Key {
    /// The algorithm this key verifies (a key is never used for another one).
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether `signature` is this key's signature of `input`. Never panics, whatever the
    /// bytes.
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            // Compared in constant time by the proxy.
            Material::Hmac(key) => key.verify(input, signature),
            // JWS carries ECDSA signatures as raw r || s (RFC 7518 §3.4), as the proxy takes them.
            Material::Public(key) => key.verify(input, signature),
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
    let hmac = matches!(alg.family(), Family::Hmac(_));
    let material = match (&config.secret, &config.public_key_pem) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: give either secret or public_key_pem, not both"
            ));
        }
        (Some(secret), None) if hmac => {
            hmac_secret(&format!("{at}.secret"), alg, secret.as_bytes())?
        }
        (None, _) if hmac => return Err(format!("{at}: alg {} needs a secret", alg.name())),
        (Some(_), None) => {
            return Err(format!(
                "{at}: alg {} needs public_key_pem, not a secret",
                alg.name()
            ));
        }
        (None, None) => {
            return Err(format!("{at}: alg {} needs public_key_pem", alg.name()));
        }
        (None, Some(pem)) => public_pem(&format!("{at}.public_key_pem"), alg, pem)?,
    };
    Ok(Key {
        kid: non_empty_kid(at, config.kid.as_deref())?,
        alg,
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
        .ok_or_else(|| format!("{at}: unknown algorithm {name:?} (supported: {SUPPORTED})"))
}

fn hmac_secret(at: &str, alg: Alg, secret: &[u8]) -> Result<Material, String> {
    let min = alg.min_secret();
    if secret.len() < min {
        return Err(format!(
            "{at}: an {} secret must be at least {min} bytes (RFC 7518 3.2), got {}",
            alg.name(),
            secret.len()
        ));
    }
    let Family::Hmac(hash) = alg.family() else {
        return Err(format!("{at}: {} does not take a secret", alg.name()));
    };
    let key = HmacKey::new(hash, secret).map_err(|e| format!("{at}: {}", e.message()))?;
    Ok(Material::Hmac(key))
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

/// A public key in PEM: `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo, any algorithm), or `BEGIN RSA
/// PUBLIC KEY` (PKCS#1) for the RSA algorithms.
fn public_pem(at: &str, alg: Alg, pem: &str) -> Result<Material, String> {
    pem_kind_check(at, pem)?;
    let pem = pem.trim();
    let der = |body: String| {
        STANDARD
            .decode(body)
            .map_err(|_| format!("{at}: the PEM body is not base64"))
    };
    let (sig, spki) = match (
        alg.family(),
        weir_filter::crypto::pem_body(pem, "PUBLIC KEY"),
    ) {
        (Family::Rsa(sig), None) => match weir_filter::crypto::pem_body(pem, "RSA PUBLIC KEY") {
            Some(body) => (sig, rsa_spki(&der(body)?)),
            None => return Err(format!("{at}: not an RSA public key in PEM")),
        },
        (family, Some(body)) => (
            sig_of(family).ok_or_else(|| format!("{at}: {} takes no public key", alg.name()))?,
            der(body)?,
        ),
        (_, None) => {
            return Err(format!(
                "{at}: not a public key in PEM (BEGIN PUBLIC KEY) for {}",
                alg.name()
            ));
        }
    };
    let key = VerifyingKey::from_spki(sig, &spki).map_err(|e| {
        format!(
            "{at}: not a usable {} public key ({})",
            alg.name(),
            e.message()
        )
    })?;
    Ok(Material::Public(key))
}

fn sig_of(family: Family) -> Option<Sig> {
    match family {
        Family::Hmac(_) => None,
        Family::Rsa(sig) | Family::Ec(sig, _, _) => Some(sig),
        Family::Ed25519 => Some(Sig::Ed25519),
    }
}

/// Wraps a PKCS#1 `RSAPublicKey` in a SubjectPublicKeyInfo (rsaEncryption, NULL parameters).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALGORITHM.to_vec();
    der_push(&mut inner, 0x03, &bits);
    let mut out = Vec::with_capacity(inner.len() + 4);
    der_push(&mut out, 0x30, &inner);
    out
}

/// Appends a DER TLV (definite length).
fn der_push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let n = value.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
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
                    "{at}: skipped: algorithm {name:?} is not supported ({SUPPORTED} are)"
                )));
            }
        },
        None => None,
    };
    let (alg, material) = match jwk.kty.as_str() {
        "RSA" => {
            let alg = fit(at, alg, "RSA", Alg::Rs256, |f| matches!(f, Family::Rsa(_)))?;
            let n = b64_member(at, "n", jwk.n.as_deref())?;
            let e = b64_member(at, "e", jwk.e.as_deref())?;
            let Family::Rsa(sig) = alg.family() else {
                unreachable!("fit checked the family")
            };
            let key = VerifyingKey::from_rsa_components(sig, &n, &e)
                .map_err(|err| format!("{at}: invalid RSA key ({})", err.message()))?;
            (alg, Material::Public(key))
        }
        "EC" => {
            let crv = jwk.crv.as_deref().unwrap_or("");
            let by_curve = match crv {
                "P-256" => Alg::Es256,
                "P-384" => Alg::Es384,
                _ if alg.is_some_and(|a| matches!(a.family(), Family::Ec(..))) => {
                    return Err(format!(
                        "{at}.crv: {} needs curve {}, got {crv:?}",
                        alg.map_or("?", Alg::name),
                        if alg == Some(Alg::Es384) {
                            "P-384"
                        } else {
                            "P-256"
                        }
                    ));
                }
                _ => {
                    return Ok(JwkOutcome::Skipped(format!(
                        "{at}: skipped: curve {crv:?} is not supported (P-256 and P-384 are)"
                    )));
                }
            };
            if let Some(a) = alg
                && a != by_curve
                && matches!(a.family(), Family::Ec(..))
            {
                return Err(format!(
                    "{at}.crv: {} needs curve {}, got {crv:?}",
                    a.name(),
                    if a == Alg::Es384 { "P-384" } else { "P-256" }
                ));
            }
            let alg = fit(at, alg, "EC", by_curve, |f| matches!(f, Family::Ec(..)))?;
            let Family::Ec(sig, curve, size) = alg.family() else {
                unreachable!("fit checked the family")
            };
            let x = b64_member(at, "x", jwk.x.as_deref())?;
            let y = b64_member(at, "y", jwk.y.as_deref())?;
            if x.len() != size || y.len() != size {
                return Err(format!(
                    "{at}: {curve} coordinates x and y must be {size} bytes each"
                ));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = VerifyingKey::from_raw(sig, &point)
                .map_err(|e| format!("{at}: x, y is not a point on {curve} ({})", e.message()))?;
            (alg, Material::Public(key))
        }
        "OKP" => {
            let crv = jwk.crv.as_deref().unwrap_or("");
            if crv != "Ed25519" {
                return Ok(JwkOutcome::Skipped(format!(
                    "{at}: skipped: OKP curve {crv:?} is not supported (Ed25519 is)"
                )));
            }
            let alg = fit(at, alg, "OKP", Alg::EdDsa, |f| f == Family::Ed25519)?;
            let x = b64_member(at, "x", jwk.x.as_deref())?;
            let key = VerifyingKey::from_raw(Sig::Ed25519, &x)
                .map_err(|e| format!("{at}.x: not an Ed25519 key ({})", e.message()))?;
            (alg, Material::Public(key))
        }
        "oct" => {
            let alg = fit(at, alg, "oct", Alg::Hs256, |f| matches!(f, Family::Hmac(_)))?;
            let k = b64_member(at, "k", jwk.k.as_deref())?;
            (alg, hmac_secret(&format!("{at}.k"), alg, &k)?)
        }
        other => {
            return Ok(JwkOutcome::Skipped(format!(
                "{at}: skipped: key type {other:?} is not supported (RSA, EC, OKP, oct are)"
            )));
        }
    };
    Ok(JwkOutcome::Key(Key {
        kid: non_empty_kid(at, jwk.kid.as_deref())?,
        alg,
        material,
    }))
}

/// The algorithm a JWK of type `kty` is used with: its own `alg` when that fits the key type,
/// else `default` (a JWK without `alg`).
fn fit(
    at: &str,
    alg: Option<Alg>,
    kty: &str,
    default: Alg,
    fits: impl Fn(Family) -> bool,
) -> Result<Alg, String> {
    match alg {
        Some(alg) if !fits(alg.family()) => Err(format!(
            "{at}: alg {} does not fit key type {kty}",
            alg.name()
        )),
        Some(alg) => Ok(alg),
        None => Ok(default),
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
