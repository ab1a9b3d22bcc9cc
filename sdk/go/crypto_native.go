//go:build !wasip1

// Natively (go test) the crypto interface runs on Go's standard library under the proxy's
// rules (key sizes, key kinds, the fixed r || s ECDSA form, PSS salt = hash length), so a
// filter's tests see the proxy's answers. It needs no test host.

package weir

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"hash"
	"math/big"
	"sync/atomic"
)

type nativeHmac struct {
	newHash func() hash.Hash
	secret  []byte
}

type nativeVerifying struct {
	alg SignatureAlgorithm
	key crypto.PublicKey
}

type hmacHandle = *nativeHmac
type verifyingHandle = *nativeVerifying

// liveKeys counts keys made and not closed (the proxy bounds them per instance).
var liveKeys atomic.Int64

func keep() error {
	if liveKeys.Load() >= MaxCryptoKeys {
		return hostError(Invalid, fmt.Sprintf("an instance holds at most %d keys; close keys it no longer uses", MaxCryptoKeys))
	}
	liveKeys.Add(1)
	return nil
}

func keyMaterial(what string, b []byte) error {
	if len(b) == 0 {
		return hostError(Invalid, what+" is empty")
	}
	if len(b) > MaxKeyBytes {
		return hostError(Invalid, fmt.Sprintf("%s is %d bytes; at most %d", what, len(b), MaxKeyBytes))
	}
	return nil
}

func hashOf(h Hash) (func() hash.Hash, crypto.Hash) {
	switch h {
	case SHA384:
		return sha512.New384, crypto.SHA384
	case SHA512:
		return sha512.New, crypto.SHA512
	default:
		return sha256.New, crypto.SHA256
	}
}

func sysDigest(h Hash, data []byte) []byte {
	newHash, _ := hashOf(h)
	d := newHash()
	d.Write(data)
	return d.Sum(nil)
}

func sysConstantTimeEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

func sysHmacKey(h Hash, secret []byte) (hmacHandle, error) {
	if err := keyMaterial("the HMAC secret", secret); err != nil {
		return nil, err
	}
	if err := keep(); err != nil {
		return nil, err
	}
	newHash, _ := hashOf(h)
	return &nativeHmac{newHash, append([]byte{}, secret...)}, nil
}

func sysHmacSign(k hmacHandle, message []byte) []byte {
	m := hmac.New(k.newHash, k.secret)
	m.Write(message)
	return m.Sum(nil)
}

func sysHmacVerify(k hmacHandle, message, tag []byte) bool {
	return hmac.Equal(sysHmacSign(k, message), tag)
}

func sysHmacDrop(hmacHandle) { liveKeys.Add(-1) }

// kind is what key an algorithm takes: "rsa", a curve, or "ed25519".
func (a SignatureAlgorithm) kind() (string, elliptic.Curve, Hash) {
	switch a {
	case RsaPkcs1Sha256, RsaPssSha256:
		return "rsa", nil, SHA256
	case RsaPkcs1Sha384, RsaPssSha384:
		return "rsa", nil, SHA384
	case RsaPkcs1Sha512, RsaPssSha512:
		return "rsa", nil, SHA512
	case EcdsaP256Sha256:
		return "ec", elliptic.P256(), SHA256
	case EcdsaP384Sha384:
		return "ec", elliptic.P384(), SHA384
	default:
		return "ed25519", nil, SHA512
	}
}

func verifying(alg SignatureAlgorithm, key crypto.PublicKey) (verifyingHandle, error) {
	if err := keep(); err != nil {
		return nil, err
	}
	return &nativeVerifying{alg, key}, nil
}

func sysVerifyingKeySPKI(alg SignatureAlgorithm, der []byte) (verifyingHandle, error) {
	if err := keyMaterial("the key", der); err != nil {
		return nil, err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, hostError(Invalid, "the key is not DER SubjectPublicKeyInfo")
	}
	kind, curve, _ := alg.kind()
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if kind == "rsa" {
			return rsaKey(alg, k.N, big.NewInt(int64(k.E)))
		}
	case *ecdsa.PublicKey:
		if kind == "ec" && k.Curve == curve {
			return verifying(alg, k)
		}
	case ed25519.PublicKey:
		if kind == "ed25519" {
			return verifying(alg, k)
		}
	}
	return nil, hostError(Invalid, fmt.Sprintf("the key's type does not fit algorithm %d", alg))
}

func rsaKey(alg SignatureAlgorithm, n, e *big.Int) (verifyingHandle, error) {
	if bits := n.BitLen(); bits < 2048 || bits > 8192 {
		return nil, hostError(Invalid, fmt.Sprintf("the RSA key has %d bits; 2048 to 8192 are accepted", bits))
	}
	if e.Bit(0) == 0 || e.Cmp(big.NewInt(3)) < 0 || e.BitLen() > 33 {
		return nil, hostError(Invalid, "the RSA exponent must be odd, at least 3 and at most 33 bits")
	}
	return verifying(alg, &rsa.PublicKey{N: n, E: int(e.Int64())})
}

func sysVerifyingKeyRSA(alg SignatureAlgorithm, modulus, exponent []byte) (verifyingHandle, error) {
	if kind, _, _ := alg.kind(); kind != "rsa" {
		return nil, hostError(Invalid, "the algorithm does not take an RSA key")
	}
	if err := keyMaterial("the modulus", modulus); err != nil {
		return nil, err
	}
	if err := keyMaterial("the exponent", exponent); err != nil {
		return nil, err
	}
	return rsaKey(alg, new(big.Int).SetBytes(modulus), new(big.Int).SetBytes(exponent))
}

func sysVerifyingKeyRaw(alg SignatureAlgorithm, key []byte) (verifyingHandle, error) {
	kind, curve, _ := alg.kind()
	switch kind {
	case "ec":
		size := (curve.Params().BitSize + 7) / 8
		if len(key) != 1+2*size || key[0] != 4 {
			return nil, hostError(Invalid, fmt.Sprintf("needs an uncompressed point of %d bytes (0x04 || x || y)", 1+2*size))
		}
		if _, err := ecdhCurve(alg).NewPublicKey(key); err != nil {
			return nil, hostError(Invalid, "the point is not on the curve")
		}
		x := new(big.Int).SetBytes(key[1 : 1+size])
		y := new(big.Int).SetBytes(key[1+size:])
		return verifying(alg, &ecdsa.PublicKey{Curve: curve, X: x, Y: y})
	case "ed25519":
		if len(key) != ed25519.PublicKeySize {
			return nil, hostError(Invalid, "an Ed25519 key is 32 bytes")
		}
		return verifying(alg, ed25519.PublicKey(append([]byte{}, key...)))
	}
	return nil, hostError(Invalid, "an RSA key is made from SubjectPublicKeyInfo or its modulus and exponent")
}

func ecdhCurve(alg SignatureAlgorithm) ecdh.Curve {
	if alg == EcdsaP384Sha384 {
		return ecdh.P384()
	}
	return ecdh.P256()
}

func sysVerify(k verifyingHandle, message, signature []byte) bool {
	_, _, h := k.alg.kind()
	newHash, ch := hashOf(h)
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		d := newHash()
		d.Write(message)
		if k.alg >= RsaPssSha256 {
			opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: ch}
			return rsa.VerifyPSS(key, ch, d.Sum(nil), signature, opts) == nil
		}
		return rsa.VerifyPKCS1v15(key, ch, d.Sum(nil), signature) == nil
	case *ecdsa.PublicKey:
		size := (key.Curve.Params().BitSize + 7) / 8
		if len(signature) != 2*size || !key.Curve.IsOnCurve(key.X, key.Y) {
			return false
		}
		d := newHash()
		d.Write(message)
		r := new(big.Int).SetBytes(signature[:size])
		s := new(big.Int).SetBytes(signature[size:])
		return ecdsa.Verify(key, d.Sum(nil), r, s)
	case ed25519.PublicKey:
		return len(signature) == ed25519.SignatureSize && ed25519.Verify(key, message, signature)
	}
	return false
}

func sysVerifyingDrop(verifyingHandle) { liveKeys.Add(-1) }
