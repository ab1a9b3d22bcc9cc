//! The WIT `crypto` interface: digests, HMAC, constant-time comparison and signature
//! verification in native code ([`weir_crypto`], on ring). Keys live in the instance's resource
//! table, at most [`MAX_KEYS_PER_INSTANCE`] at once; a refusal at that bound is counted on
//! `/metrics` (`weir_filter_limit_rejections_total{limit="crypto_keys"}`).

use wasmtime::component::Resource;
use weir_crypto::{HmacKey, KeyError, MAX_KEYS_PER_INSTANCE, VerifyingKey};

use crate::bindings::weir::filter::crypto::{
    self as wc, HashAlgorithm, Host, HostHmacKey, HostVerifyingKey, SignatureAlgorithm,
};
use crate::bindings::weir::filter::types::HostError;
use crate::host::HostState;

fn hash(h: HashAlgorithm) -> weir_crypto::Hash {
    match h {
        HashAlgorithm::Sha256 => weir_crypto::Hash::Sha256,
        HashAlgorithm::Sha384 => weir_crypto::Hash::Sha384,
        HashAlgorithm::Sha512 => weir_crypto::Hash::Sha512,
    }
}

fn signature(a: SignatureAlgorithm) -> weir_crypto::SignatureAlgorithm {
    use SignatureAlgorithm as W;
    use weir_crypto::SignatureAlgorithm as A;
    match a {
        W::RsaPkcs1Sha256 => A::RsaPkcs1Sha256,
        W::RsaPkcs1Sha384 => A::RsaPkcs1Sha384,
        W::RsaPkcs1Sha512 => A::RsaPkcs1Sha512,
        W::RsaPssSha256 => A::RsaPssSha256,
        W::RsaPssSha384 => A::RsaPssSha384,
        W::RsaPssSha512 => A::RsaPssSha512,
        W::EcdsaP256Sha256 => A::EcdsaP256Sha256,
        W::EcdsaP384Sha384 => A::EcdsaP384Sha384,
        W::Ed25519 => A::Ed25519,
    }
}

impl HostState {
    /// Stores a new key in the instance's table, within the per-instance bound.
    fn keep<T: Send + 'static>(
        &mut self,
        made: Result<T, KeyError>,
    ) -> wasmtime::Result<Result<Resource<T>, HostError>> {
        let key = match made {
            Ok(k) => k,
            Err(e) => return Ok(Err(HostError::Invalid(e.0))),
        };
        if self.keys >= MAX_KEYS_PER_INSTANCE {
            let rt = &self.shared.runtime;
            rt.registry
                .filter_limit_hit(&self.shared.spec.filter, "crypto_keys");
            return Ok(Err(HostError::Invalid(format!(
                "an instance holds at most {MAX_KEYS_PER_INSTANCE} keys; drop keys it no longer uses"
            ))));
        }
        let r = self.table.push(key)?;
        self.keys += 1;
        Ok(Ok(r))
    }

    fn forget<T: 'static>(&mut self, r: Resource<T>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        self.keys -= 1;
        Ok(())
    }
}

impl Host for HostState {
    fn digest(&mut self, algorithm: HashAlgorithm, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        Ok(weir_crypto::digest(hash(algorithm), &data))
    }

    fn constant_time_equal(&mut self, a: Vec<u8>, b: Vec<u8>) -> wasmtime::Result<bool> {
        Ok(weir_crypto::constant_time_equal(&a, &b))
    }
}

impl HostHmacKey for HostState {
    fn create(
        &mut self,
        algorithm: HashAlgorithm,
        secret: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<HmacKey>, HostError>> {
        self.keep(HmacKey::new(hash(algorithm), &secret))
    }

    fn sign(&mut self, key: Resource<HmacKey>, message: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&key)?.sign(&message))
    }

    fn verify(
        &mut self,
        key: Resource<HmacKey>,
        message: Vec<u8>,
        tag: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(self.table.get(&key)?.verify(&message, &tag))
    }

    fn drop(&mut self, key: Resource<HmacKey>) -> wasmtime::Result<()> {
        self.forget(key)
    }
}

impl HostVerifyingKey for HostState {
    fn from_spki(
        &mut self,
        algorithm: SignatureAlgorithm,
        der: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<VerifyingKey>, HostError>> {
        self.keep(VerifyingKey::from_spki(signature(algorithm), &der))
    }

    fn from_rsa_components(
        &mut self,
        algorithm: SignatureAlgorithm,
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<VerifyingKey>, HostError>> {
        self.keep(VerifyingKey::from_rsa_components(
            signature(algorithm),
            &modulus,
            &exponent,
        ))
    }

    fn from_raw(
        &mut self,
        algorithm: SignatureAlgorithm,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<VerifyingKey>, HostError>> {
        self.keep(VerifyingKey::from_raw(signature(algorithm), &key))
    }

    fn verify(
        &mut self,
        key: Resource<VerifyingKey>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(self.table.get(&key)?.verify(&message, &signature))
    }

    fn drop(&mut self, key: Resource<VerifyingKey>) -> wasmtime::Result<()> {
        self.forget(key)
    }
}

// The interface's own types need no host methods.
#[allow(unused_imports)]
use wc as _;
