//go:build !wasip1

package weir_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"

	weir "github.com/weir-proxy/weir/sdk/go"
)

func TestCryptoDigestAndHmacMatchPublishedVectors(t *testing.T) {
	if got := hex.EncodeToString(weir.Crypto.Digest(weir.SHA256, []byte("abc"))); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("sha256(abc) = %s", got)
	}
	key, err := weir.Crypto.NewHmacKey(weir.SHA256, []byte("Jefe"))
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	msg := []byte("what do ya want for nothing?")
	tag := key.Sign(msg)
	if hex.EncodeToString(tag) != "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" {
		t.Fatalf("RFC 4231 case 2: %x", tag)
	}
	if !key.Verify(msg, tag) || key.Verify(msg, tag[:31]) || key.Verify([]byte("other"), tag) {
		t.Fatal("verify")
	}
	if !weir.Crypto.ConstantTimeEqual([]byte("a"), []byte("a")) || weir.Crypto.ConstantTimeEqual([]byte("a"), []byte("ab")) {
		t.Fatal("constant-time equal")
	}
}

func TestCryptoRefusesBadKeyMaterial(t *testing.T) {
	var he *weir.HostError
	for _, secret := range [][]byte{{}, make([]byte, weir.MaxKeyBytes+1)} {
		if _, err := weir.Crypto.NewHmacKey(weir.SHA256, secret); !errors.As(err, &he) || he.Kind != weir.Invalid {
			t.Fatalf("secret of %d bytes: %v", len(secret), err)
		}
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := weir.Crypto.VerifyingKeyFromRSAComponents(weir.RsaPkcs1Sha256, small.N.Bytes(), []byte{1, 0, 1}); err == nil {
		t.Fatal("a 1024-bit RSA key was accepted")
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if _, err := weir.Crypto.VerifyingKeyFromSPKI(weir.EcdsaP256Sha256, der); err == nil {
		t.Fatal("a P-384 key was accepted for ES256")
	}
	for cut := 0; cut < len(der); cut++ {
		if _, err := weir.Crypto.VerifyingKeyFromSPKI(weir.EcdsaP384Sha384, der[:cut]); err == nil {
			t.Fatalf("a key cut at %d was accepted", cut)
		}
	}
	offCurve := make([]byte, 65)
	offCurve[0], offCurve[1] = 4, 1
	if _, err := weir.Crypto.VerifyingKeyFromRaw(weir.EcdsaP256Sha256, offCurve); err == nil {
		t.Fatal("a point off the curve was accepted")
	}
	if _, err := weir.Crypto.VerifyingKeyFromRaw(weir.RsaPkcs1Sha256, []byte{4, 1, 2}); err == nil {
		t.Fatal("an RSA key from raw bytes")
	}
}

func TestCryptoVerifiesEachAlgorithmsSignatures(t *testing.T) {
	msg := []byte("header.payload")
	d := sha256.Sum256(msg)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	rder, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	pkcs1, _ := rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, d[:])
	pss, _ := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r, s, _ := ecdsa.Sign(rand.Reader, ek, d[:])
	rs := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	point := append([]byte{4}, append(ek.X.FillBytes(make([]byte, 32)), ek.Y.FillBytes(make([]byte, 32))...)...)
	epub, epriv, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name string
		make func() (*weir.VerifyingKey, error)
		sig  []byte
	}{
		{"rs256 spki", func() (*weir.VerifyingKey, error) { return weir.Crypto.VerifyingKeyFromSPKI(weir.RsaPkcs1Sha256, rder) }, pkcs1},
		{"rs256 n,e", func() (*weir.VerifyingKey, error) {
			return weir.Crypto.VerifyingKeyFromRSAComponents(weir.RsaPkcs1Sha256, rk.N.Bytes(), big.NewInt(int64(rk.E)).Bytes())
		}, pkcs1},
		{"ps256", func() (*weir.VerifyingKey, error) { return weir.Crypto.VerifyingKeyFromSPKI(weir.RsaPssSha256, rder) }, pss},
		{"es256", func() (*weir.VerifyingKey, error) {
			return weir.Crypto.VerifyingKeyFromRaw(weir.EcdsaP256Sha256, point)
		}, rs},
		{"eddsa", func() (*weir.VerifyingKey, error) { return weir.Crypto.VerifyingKeyFromRaw(weir.Ed25519, epub) }, ed25519.Sign(epriv, msg)},
	}
	for _, c := range cases {
		k, err := c.make()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !k.Verify(msg, c.sig) {
			t.Fatalf("%s: a good signature was refused", c.name)
		}
		bad := append([]byte{}, c.sig...)
		bad[len(bad)/2] ^= 0x40
		if k.Verify(msg, bad) || k.Verify([]byte("other"), c.sig) || k.Verify(msg, c.sig[1:]) {
			t.Fatalf("%s: a bad signature was accepted", c.name)
		}
		k.Close()
	}
	// PKCS#1 and PSS signatures are not each other's.
	k, _ := weir.Crypto.VerifyingKeyFromSPKI(weir.RsaPssSha256, rder)
	if k.Verify(msg, pkcs1) {
		t.Fatal("a PKCS#1 signature passed as PSS")
	}
	k.Close()
}

func TestCryptoBoundsLiveKeys(t *testing.T) {
	var keys []*weir.HmacKey
	defer func() {
		for _, k := range keys {
			k.Close()
		}
	}()
	for {
		k, err := weir.Crypto.NewHmacKey(weir.SHA256, []byte("s"))
		if err != nil {
			if len(keys) != weir.MaxCryptoKeys {
				t.Fatalf("refused after %d keys: %v", len(keys), err)
			}
			break
		}
		keys = append(keys, k)
	}
	keys[0].Close()
	k, err := weir.Crypto.NewHmacKey(weir.SHA256, []byte("s"))
	if err != nil {
		t.Fatalf("a closed key did not free its place: %v", err)
	}
	keys[0] = k
}
