use super::*;
use SignatureAlgorithm as A;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RsaKeyPair,
};

const RSA_PK8: &[u8] = include_bytes!("../tests/keys/rsa2048.pk8.der");
const RSA_SPKI: &[u8] = include_bytes!("../tests/keys/rsa2048.spki.der");
const P256_PK8: &[u8] = include_bytes!("../tests/keys/p256.pk8.der");
const P256_SPKI: &[u8] = include_bytes!("../tests/keys/p256.spki.der");
const P384_PK8: &[u8] = include_bytes!("../tests/keys/p384.pk8.der");
const P384_SPKI: &[u8] = include_bytes!("../tests/keys/p384.spki.der");
const ED_PK8: &[u8] = include_bytes!("../tests/keys/ed25519.pk8.der");
const ED_SPKI: &[u8] = include_bytes!("../tests/keys/ed25519.spki.der");

const ALL: [A; 9] = [
    A::RsaPkcs1Sha256,
    A::RsaPkcs1Sha384,
    A::RsaPkcs1Sha512,
    A::RsaPssSha256,
    A::RsaPssSha384,
    A::RsaPssSha512,
    A::EcdsaP256Sha256,
    A::EcdsaP384Sha384,
    A::Ed25519,
];

fn spki_for(alg: A) -> &'static [u8] {
    match alg.kind() {
        KeyKind::Rsa => RSA_SPKI,
        KeyKind::Ec { point: 65, .. } => P256_SPKI,
        KeyKind::Ec { .. } => P384_SPKI,
        KeyKind::Ed25519 => ED_SPKI,
    }
}

/// A signature of `msg` by the test key of `alg`, made by ring's signing side.
fn sign(alg: A, msg: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    match alg.kind() {
        KeyKind::Rsa => {
            let pair = RsaKeyPair::from_pkcs8(RSA_PK8).unwrap();
            let enc: &dyn signature::RsaEncoding = match alg {
                A::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                A::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
                A::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
                A::RsaPssSha256 => &signature::RSA_PSS_SHA256,
                A::RsaPssSha384 => &signature::RSA_PSS_SHA384,
                _ => &signature::RSA_PSS_SHA512,
            };
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(enc, &rng, msg, &mut sig).unwrap();
            sig
        }
        KeyKind::Ec { point, .. } => {
            let (a, pk8) = if point == 65 {
                (&ECDSA_P256_SHA256_FIXED_SIGNING, P256_PK8)
            } else {
                (&ECDSA_P384_SHA384_FIXED_SIGNING, P384_PK8)
            };
            let pair = EcdsaKeyPair::from_pkcs8(a, pk8, &rng).unwrap();
            pair.sign(&rng, msg).unwrap().as_ref().to_vec()
        }
        KeyKind::Ed25519 => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(ED_PK8).unwrap();
            pair.sign(msg).as_ref().to_vec()
        }
    }
}

#[test]
fn digests_match_the_published_vectors() {
    let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(digest(Hash::Sha256, b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(digest(Hash::Sha384, b"abc")),
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
    );
    assert_eq!(digest(Hash::Sha512, b"").len(), 64);
}

#[test]
fn hmac_matches_rfc_4231_and_refuses_wrong_tags() {
    // RFC 4231, test case 2.
    let key = HmacKey::new(Hash::Sha256, b"Jefe").unwrap();
    let msg = b"what do ya want for nothing?";
    let tag = key.sign(msg);
    let hex: String = tag.iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert!(key.verify(msg, &tag));
    let mut bad = tag.clone();
    bad[31] ^= 1;
    assert!(!key.verify(msg, &bad));
    assert!(!key.verify(msg, &tag[..31]), "a truncated tag is no tag");
    assert!(!key.verify(b"what do ya want for nothing!", &tag));
    assert_eq!(
        HmacKey::new(Hash::Sha512, b"k").unwrap().sign(b"").len(),
        64
    );
    assert_eq!(
        HmacKey::new(Hash::Sha384, b"k").unwrap().sign(b"").len(),
        48
    );
}

#[test]
fn hmac_secrets_are_bounded_and_never_printed() {
    assert!(HmacKey::new(Hash::Sha256, b"").is_err());
    assert!(HmacKey::new(Hash::Sha256, &vec![7; MAX_KEY_BYTES]).is_ok());
    let e = HmacKey::new(Hash::Sha256, &vec![7; MAX_KEY_BYTES + 1]).unwrap_err();
    assert!(e.0.contains("at most"), "{e}");
    let key = HmacKey::new(Hash::Sha256, b"hunter2-hunter2").unwrap();
    assert!(!format!("{key:?}").contains("hunter2"));
}

#[test]
fn constant_time_equal_is_equality() {
    assert!(constant_time_equal(b"", b""));
    assert!(constant_time_equal(b"abc", b"abc"));
    assert!(!constant_time_equal(b"abc", b"abd"));
    assert!(!constant_time_equal(b"abc", b"ab"));
    assert!(!constant_time_equal(b"\x00", b""));
}

#[test]
fn every_algorithm_verifies_its_signatures_and_nothing_else() {
    let msg = b"eyJhbGciOi.eyJzdWIiOiJhbGljZSJ9";
    for alg in ALL {
        let key = VerifyingKey::from_spki(alg, spki_for(alg)).unwrap();
        let sig = sign(alg, msg);
        assert!(key.verify(msg, &sig), "{alg:?}: a good signature");
        assert!(
            !key.verify(b"eyJhbGciOi.eyJzdWIiOiJtYWxsb3J5In0", &sig),
            "{alg:?}: other message"
        );
        for i in [0, sig.len() / 2, sig.len() - 1] {
            let mut bad = sig.clone();
            bad[i] ^= 0x40;
            assert!(!key.verify(msg, &bad), "{alg:?}: byte {i} flipped");
        }
        assert!(!key.verify(msg, &sig[..sig.len() - 1]), "{alg:?}: short");
        assert!(
            !key.verify(msg, &[sig.clone(), vec![0]].concat()),
            "{alg:?}: long"
        );
        assert!(!key.verify(msg, &[]), "{alg:?}: empty");
        // The other algorithms of the same key kind do not accept it (PKCS#1 vs PSS, hashes).
        for other in ALL {
            if other != alg && other.kind() == alg.kind() {
                let k = VerifyingKey::from_spki(other, spki_for(other)).unwrap();
                assert!(!k.verify(msg, &sig), "{alg:?} signature taken by {other:?}");
            }
        }
    }
}

#[test]
fn rsa_from_components_is_the_same_key() {
    let spki = SubjectPublicKeyInfoRef::try_from(RSA_SPKI).unwrap();
    let (n, e) = pkcs1(spki.subject_public_key.as_bytes().unwrap()).unwrap();
    // A JWK's n may carry a leading zero; both forms are one key.
    let padded = [&[0u8][..], n].concat();
    let key = VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &padded, e).unwrap();
    assert!(key.verify(b"m", &sign(A::RsaPkcs1Sha256, b"m")));
}

#[test]
fn ec_and_ed25519_from_raw_are_the_same_key() {
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, P256_PK8, &rng).unwrap();
    let key = VerifyingKey::from_raw(A::EcdsaP256Sha256, pair.public_key().as_ref()).unwrap();
    assert!(key.verify(b"m", &sign(A::EcdsaP256Sha256, b"m")));
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(ED_PK8).unwrap();
    let key = VerifyingKey::from_raw(A::Ed25519, pair.public_key().as_ref()).unwrap();
    assert!(key.verify(b"m", &sign(A::Ed25519, b"m")));
}

#[test]
fn a_key_of_the_wrong_kind_is_refused_when_made() {
    for alg in ALL {
        for spki in [RSA_SPKI, P256_SPKI, P384_SPKI, ED_SPKI] {
            let made = VerifyingKey::from_spki(alg, spki);
            assert_eq!(made.is_ok(), spki == spki_for(alg), "{alg:?}");
        }
    }
    // RSA has no raw form; EC and Ed25519 have no components.
    assert!(VerifyingKey::from_raw(A::RsaPkcs1Sha256, &[4; 256]).is_err());
    assert!(
        VerifyingKey::from_rsa_components(A::EcdsaP256Sha256, &[0xff; 256], &[1, 0, 1]).is_err()
    );
    // Points of the wrong size or compressed.
    assert!(VerifyingKey::from_raw(A::EcdsaP256Sha256, &[4; 97]).is_err());
    assert!(VerifyingKey::from_raw(A::EcdsaP384Sha384, &[4; 65]).is_err());
    assert!(VerifyingKey::from_raw(A::EcdsaP256Sha256, &[2; 33]).is_err());
    assert!(VerifyingKey::from_raw(A::Ed25519, &[1; 31]).is_err());
    // Well-formed points that are not on the curve, and the point at infinity's stand-in.
    for alg in [A::EcdsaP256Sha256, A::EcdsaP384Sha384] {
        let size = if alg == A::EcdsaP256Sha256 { 65 } else { 97 };
        for fill in [0u8, 1, 0xff] {
            let mut point = vec![fill; size];
            point[0] = 4;
            let e = VerifyingKey::from_raw(alg, &point).unwrap_err();
            assert!(e.0.contains("not on the curve"), "{e}");
        }
    }
}

#[test]
fn rsa_sizes_and_exponents_outside_what_is_safe_are_refused() {
    let ok_e = [1, 0, 1];
    let n = |bytes: usize| {
        let mut n = vec![0xc3; bytes];
        n[bytes - 1] |= 1;
        n
    };
    assert!(VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &n(256), &ok_e).is_ok());
    assert!(VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &n(1024), &ok_e).is_ok());
    for bad_n in [n(128), n(255), n(1025), vec![0; 256], vec![]] {
        assert!(
            VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &bad_n, &ok_e).is_err(),
            "{} bytes",
            bad_n.len()
        );
    }
    for bad_e in [
        &[][..],
        &[0],
        &[1],
        &[2],
        &[1, 0, 0],
        &[3, 0, 0, 0, 1],
        &[0xff; 8],
    ] {
        assert!(
            VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &n(256), bad_e).is_err(),
            "{bad_e:?}"
        );
    }
    assert!(VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &n(256), &[3]).is_ok());
    assert!(
        VerifyingKey::from_rsa_components(A::RsaPkcs1Sha256, &n(256), &[1, 0, 0, 0, 1]).is_ok()
    );
}

#[test]
fn hostile_der_is_refused_never_a_panic() {
    for (alg, spki) in [
        (A::RsaPkcs1Sha256, RSA_SPKI),
        (A::EcdsaP256Sha256, P256_SPKI),
        (A::EcdsaP384Sha384, P384_SPKI),
        (A::Ed25519, ED_SPKI),
    ] {
        // Every truncation, and every single-byte corruption of the structure's first bytes.
        for cut in 0..spki.len() {
            assert!(
                VerifyingKey::from_spki(alg, &spki[..cut]).is_err(),
                "{alg:?} cut {cut}"
            );
        }
        for i in 0..spki.len().min(40) {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = spki.to_vec();
                bad[i] ^= flip;
                let _ = VerifyingKey::from_spki(alg, &bad);
            }
        }
        // Trailing bytes after the structure.
        assert!(VerifyingKey::from_spki(alg, &[spki, &[0]].concat()).is_err());
    }
    // Lengths that claim more than there is, nesting, and sheer size.
    for junk in [
        &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
        &[0x30, 0x80, 0x00, 0x00],
        &[0x30; 64],
        &[0xff; 64],
    ] {
        assert!(VerifyingKey::from_spki(A::RsaPkcs1Sha256, junk).is_err());
    }
    let e = VerifyingKey::from_spki(A::RsaPkcs1Sha256, &vec![0x30; MAX_KEY_BYTES + 1]).unwrap_err();
    assert!(e.0.contains("at most"), "{e}");
}
