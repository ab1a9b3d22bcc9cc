package weir

// CryptoAPI is the type of [Crypto]: cryptography in the proxy's native code — digests, HMAC,
// constant-time comparison and signature verification (RSA PKCS#1 v1.5 and PSS, ECDSA P-256
// and P-384, Ed25519).
//
// The proxy runs these with the CPU's SHA and vector instructions; the same algorithms compiled
// into a filter run several times slower in wasm and make the module larger. Keys are parsed
// once into handles: make them in the ConfigureFunc and keep them in the filter.
//
// An instance holds at most [MaxCryptoKeys] keys at once (more is Invalid; Close frees a key's
// place); key material is at most [MaxKeyBytes]. Time spent here counts against the phase's time
// budget. Natively (go test) the SDK verifies with Go's standard library under the same rules.
type CryptoAPI struct{}

// Crypto reaches the proxy's crypto:
//
//	key, err := weir.Crypto.NewHmacKey(weir.SHA256, secret)
//	ok := key.Verify([]byte(signingInput), signature)
var Crypto CryptoAPI

// MaxCryptoKeys is the most keys (HMAC and verifying together) an instance holds at once.
const MaxCryptoKeys = 256

// MaxKeyBytes is the most bytes of key material (a secret, a DER key, a modulus).
const MaxKeyBytes = 16 << 10

// Hash is a digest algorithm, and the hash of an HMAC.
type Hash uint8

// The digest algorithms (values are the WIT enum's).
const (
	SHA256 Hash = iota
	SHA384
	SHA512
)

// SignatureAlgorithm is a signature scheme. RSA keys are 2048 to 8192 bits; ECDSA signatures
// are the fixed-size r || s form of JWS and WebAuthn (not ASN.1 DER).
type SignatureAlgorithm uint8

// The signature schemes (values are the WIT enum's).
const (
	RsaPkcs1Sha256  SignatureAlgorithm = iota // JWS RS256
	RsaPkcs1Sha384                            // RS384
	RsaPkcs1Sha512                            // RS512
	RsaPssSha256                              // PS256
	RsaPssSha384                              // PS384
	RsaPssSha512                              // PS512
	EcdsaP256Sha256                           // ES256
	EcdsaP384Sha384                           // ES384
	Ed25519                                   // EdDSA
)

// Digest returns the digest of data.
func (CryptoAPI) Digest(h Hash, data []byte) []byte { return sysDigest(h, data) }

// ConstantTimeEqual reports whether a and b are equal, in time that depends only on their
// lengths (compare secrets, API keys and MACs with this, never with ==).
func (CryptoAPI) ConstantTimeEqual(a, b []byte) bool { return sysConstantTimeEqual(a, b) }

// HmacKey is a secret key for HMAC.
type HmacKey struct{ h hmacHandle }

// NewHmacKey makes a key from a secret of 1 byte to MaxKeyBytes.
func (CryptoAPI) NewHmacKey(h Hash, secret []byte) (*HmacKey, error) {
	k, err := sysHmacKey(h, secret)
	if err != nil {
		return nil, err
	}
	return &HmacKey{k}, nil
}

// Sign returns the tag of message.
func (k *HmacKey) Sign(message []byte) []byte { return sysHmacSign(k.h, message) }

// Verify reports whether tag is the tag of message (compared in constant time).
func (k *HmacKey) Verify(message, tag []byte) bool { return sysHmacVerify(k.h, message, tag) }

// Close frees the key's place in the instance; the key must not be used after.
func (k *HmacKey) Close() { sysHmacDrop(k.h) }

// VerifyingKey is a public key that verifies signatures of one algorithm. The key's type must
// fit the algorithm (an RSA key for the Rsa* ones, a P-256 key for EcdsaP256Sha256, ...), else
// making it is Invalid.
type VerifyingKey struct{ h verifyingHandle }

// VerifyingKeyFromSPKI makes a key from DER SubjectPublicKeyInfo: the base64 body of a PEM
// "PUBLIC KEY" block.
func (CryptoAPI) VerifyingKeyFromSPKI(alg SignatureAlgorithm, der []byte) (*VerifyingKey, error) {
	return verifyingKey(sysVerifyingKeySPKI(alg, der))
}

// VerifyingKeyFromRSAComponents makes an RSA key from its modulus and public exponent, unsigned
// big-endian (a JWK's n and e, base64url-decoded).
func (CryptoAPI) VerifyingKeyFromRSAComponents(alg SignatureAlgorithm, modulus, exponent []byte) (*VerifyingKey, error) {
	return verifyingKey(sysVerifyingKeyRSA(alg, modulus, exponent))
}

// VerifyingKeyFromRaw makes an ECDSA key from its uncompressed point 0x04 || x || y (a JWK's x
// and y), or an Ed25519 key from its 32 bytes (a JWK's x).
func (CryptoAPI) VerifyingKeyFromRaw(alg SignatureAlgorithm, key []byte) (*VerifyingKey, error) {
	return verifyingKey(sysVerifyingKeyRaw(alg, key))
}

func verifyingKey(h verifyingHandle, err error) (*VerifyingKey, error) {
	if err != nil {
		return nil, err
	}
	return &VerifyingKey{h}, nil
}

// Verify reports whether signature is a valid signature of message by this key.
func (k *VerifyingKey) Verify(message, signature []byte) bool {
	return sysVerify(k.h, message, signature)
}

// Close frees the key's place in the instance; the key must not be used after.
func (k *VerifyingKey) Close() { sysVerifyingDrop(k.h) }
