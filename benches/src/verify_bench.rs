//! The native reference for the realistic chain's RS256 and ES256 rows: how long ring — the
//! library behind Weir's crypto host calls — takes to verify one JWS signature, on this core.
//!
//! `verify-bench <RS256|ES256> <spki.der> <token> [ms]` verifies the token's signature over and
//! over for `ms` milliseconds (default 1000) and prints µs per verification. Run it alone on the
//! proxy's core (the scenario pins it to CPU0, idle by then): wall time is then its CPU time,
//! comparable with the scenarios' proxy CPU per request. The key is parsed once, as Weir's key
//! handles are.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, alg, spki, token, rest @ ..] = args.as_slice() else {
        bail!("usage: verify-bench <RS256|ES256> <spki.der> <token> [ms]");
    };
    let ms: u64 = rest.first().map_or(Ok(1000), |m| m.parse())?;
    let der = std::fs::read(spki).with_context(|| format!("reading {spki}"))?;
    let key = weir_crypto::VerifyingKey::from_spki(
        match alg.as_str() {
            "RS256" => weir_crypto::SignatureAlgorithm::RsaPkcs1Sha256,
            "ES256" => weir_crypto::SignatureAlgorithm::EcdsaP256Sha256,
            other => bail!("unknown algorithm {other}"),
        },
        &der,
    )?;
    let (input, sig) = token.rsplit_once('.').context("a JWS has three parts")?;
    let sig = URL_SAFE_NO_PAD.decode(sig)?;
    if !key.verify(input.as_bytes(), &sig) {
        bail!("the token does not verify with this key");
    }
    let start = Instant::now();
    let budget = Duration::from_millis(ms);
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..32 {
            std::hint::black_box(key.verify(input.as_bytes(), &sig));
        }
        n += 32;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{us:.2}");
    Ok(())
}
