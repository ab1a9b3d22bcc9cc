//go:build wasip1

// The WIT imports as wasm imports (names per sdk/ABI.md), and the SDK's host calls over them.
// Results that flatten to more than one value come back through importRet; strings and lists
// in them point into the host arena and are copied out at once (see abi_wasip1.go).

package weir

import (
	"runtime"
	"unsafe"
)

// importRet is the return area of import calls (the largest, take-tokens, is 40 bytes);
// uint64 elements make it 8-aligned.
var importRet [6]uint64

func retp() unsafe.Pointer { return unsafe.Pointer(&importRet) }

func ret8(off uintptr) uint8   { return *(*uint8)(unsafe.Add(retp(), off)) }
func ret16(off uintptr) uint16 { return *(*uint16)(unsafe.Add(retp(), off)) }
func ret32(off uintptr) uint32 { return *(*uint32)(unsafe.Add(retp(), off)) }
func ret64(off uintptr) uint64 { return *(*uint64)(unsafe.Add(retp(), off)) }
func retBool(off uintptr) bool { return ret8(off) != 0 }
func retS64(off uintptr) int64 { return int64(ret64(off)) }
func retString(off uintptr) string {
	return liftString(ret32(off), ret32(off+4))
}

// begin prepares an import call that may return memory: nothing in the arena is live between
// calls, so the whole arena is available to this one.
func begin() { resetArena() }

// hostErrorAt lifts a host-error variant at off: tag u8, then the message string at off+4.
func hostErrorAt(off uintptr) error {
	kind := ErrorKind(ret8(off))
	return &HostError{Kind: kind, Message: retString(off + 4)}
}

// unitResult lifts result<_, host-error> (4-aligned payload).
func unitResult() error {
	if ret8(0) == 0 {
		return nil
	}
	return hostErrorAt(4)
}

// ---- weir:filter/http ----

//go:wasmimport weir:filter/http@0.1.0 method
func impMethod(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 path
func impPath(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 set-path
func impSetPath(path string, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 authority
func impAuthority(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 scheme
func impScheme(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 client-address
func impClientAddress(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 route-name
func impRouteName(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 cluster-name
func impClusterName(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 request-id
func impRequestID(ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 status
func impStatus() uint32

//go:wasmimport weir:filter/http@0.1.0 set-status
func impSetStatus(status uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 get-header
func impGetHeader(m uint32, name string, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 get-header-all
func impGetHeaderAll(m uint32, name string, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 set-header
func impSetHeader(m uint32, name, value string, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 append-header
func impAppendHeader(m uint32, name, value string, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 remove-header
func impRemoveHeader(m uint32, name string, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 headers
func impHeaders(m uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 body
func impBody(kind uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/http@0.1.0 set-body
func impSetBody(kind uint32, p unsafe.Pointer, n uint32, ret unsafe.Pointer)

func sysMethod() string        { begin(); impMethod(retp()); return retString(0) }
func sysPath() string          { begin(); impPath(retp()); return retString(0) }
func sysAuthority() string     { begin(); impAuthority(retp()); return retString(0) }
func sysScheme() string        { begin(); impScheme(retp()); return retString(0) }
func sysClientAddress() string { begin(); impClientAddress(retp()); return retString(0) }
func sysRouteName() string     { begin(); impRouteName(retp()); return retString(0) }
func sysClusterName() string   { begin(); impClusterName(retp()); return retString(0) }
func sysRequestID() string     { begin(); impRequestID(retp()); return retString(0) }

func sysSetPath(path string) error {
	begin()
	impSetPath(path, retp())
	return unitResult()
}

func sysStatus() uint16 { return uint16(impStatus()) }

func sysSetStatus(status uint16) error {
	begin()
	impSetStatus(uint32(status), retp())
	return unitResult()
}

func sysGetHeader(m headerMap, name string) (string, bool) {
	begin()
	impGetHeader(uint32(m), name, retp())
	if ret8(0) == 0 {
		return "", false
	}
	return retString(4), true
}

func sysGetHeaderAll(m headerMap, name string) []string {
	begin()
	impGetHeaderAll(uint32(m), name, retp())
	return liftStrings(ret32(0), ret32(4))
}

func sysSetHeader(m headerMap, name, value string) error {
	begin()
	impSetHeader(uint32(m), name, value, retp())
	return unitResult()
}

func sysAppendHeader(m headerMap, name, value string) error {
	begin()
	impAppendHeader(uint32(m), name, value, retp())
	return unitResult()
}

func sysRemoveHeader(m headerMap, name string) error {
	begin()
	impRemoveHeader(uint32(m), name, retp())
	return unitResult()
}

func sysHeaders(m headerMap) []Header {
	begin()
	impHeaders(uint32(m), retp())
	return liftHeaders(ret32(0), ret32(4))
}

func sysBody(kind BodyKind) ([]byte, error) {
	begin()
	impBody(uint32(kind), retp())
	if ret8(0) != 0 {
		return nil, hostErrorAt(4)
	}
	return liftBytes(ret32(4), ret32(8)), nil
}

func sysSetBody(kind BodyKind, bytes []byte) error {
	begin()
	impSetBody(uint32(kind), unsafe.Pointer(unsafe.SliceData(bytes)), uint32(len(bytes)), retp())
	runtime.KeepAlive(bytes)
	return unitResult()
}

// ---- weir:filter/log ----

//go:wasmimport weir:filter/log@0.1.0 write
func impLogWrite(level uint32, message string)

func sysLog(level Level, message string) { impLogWrite(uint32(level), message) }

// ---- weir:filter/clock ----

//go:wasmimport weir:filter/clock@0.1.0 now-ms
func impNowMs() uint64

//go:wasmimport weir:filter/clock@0.1.0 monotonic-ns
func impMonotonicNs() uint64

//go:wasmimport weir:filter/clock@0.1.0 random-bytes
func impRandomBytes(n uint32, ret unsafe.Pointer)

func sysNowMs() uint64       { return impNowMs() }
func sysMonotonicNs() uint64 { return impMonotonicNs() }

func sysRandomBytes(n uint32) []byte {
	begin()
	impRandomBytes(n, retp())
	return liftBytes(ret32(0), ret32(4))
}

// ---- weir:filter/metrics ----

//go:wasmimport weir:filter/metrics@0.1.0 counter-add
func impCounterAdd(name string, labels unsafe.Pointer, n uint32, delta uint64, ret unsafe.Pointer)

//go:wasmimport weir:filter/metrics@0.1.0 gauge-set
func impGaugeSet(name string, labels unsafe.Pointer, n uint32, value int64, ret unsafe.Pointer)

//go:wasmimport weir:filter/metrics@0.1.0 histogram-observe
func impHistogramObserve(name string, labels unsafe.Pointer, n uint32, value float64, ret unsafe.Pointer)

func lowerLabels(labels []Label) []uint32 {
	return lowerPairs(len(labels), func(i int) (string, string) { return labels[i].Name, labels[i].Value })
}

func sysCounterAdd(name string, labels []Label, delta uint64) error {
	begin()
	l := lowerLabels(labels)
	impCounterAdd(name, slicePtr(l), uint32(len(labels)), delta, retp())
	runtime.KeepAlive(labels)
	return unitResult()
}

func sysGaugeSet(name string, labels []Label, value int64) error {
	begin()
	l := lowerLabels(labels)
	impGaugeSet(name, slicePtr(l), uint32(len(labels)), value, retp())
	runtime.KeepAlive(labels)
	return unitResult()
}

func sysHistogramObserve(name string, labels []Label, value float64) error {
	begin()
	l := lowerLabels(labels)
	impHistogramObserve(name, slicePtr(l), uint32(len(labels)), value, retp())
	runtime.KeepAlive(labels)
	return unitResult()
}

// ---- weir:filter/kv ----
// Results with u64 payloads are 8-aligned: the payload (or the host-error) starts at 8.

//go:wasmimport weir:filter/kv@0.1.0 get
func impKVGet(ns, key string, ret unsafe.Pointer)

//go:wasmimport weir:filter/kv@0.1.0 set
func impKVSet(ns, key string, value unsafe.Pointer, n uint32, ttlMs uint64, ret unsafe.Pointer)

//go:wasmimport weir:filter/kv@0.1.0 compare-and-swap
func impKVCompareAndSwap(ns, key string, expected uint64, value unsafe.Pointer, n uint32, ttlMs uint64, ret unsafe.Pointer)

//go:wasmimport weir:filter/kv@0.1.0 delete
func impKVDelete(ns, key string, ret unsafe.Pointer)

//go:wasmimport weir:filter/kv@0.1.0 increment
func impKVIncrement(ns, key string, delta int64, ttlMs uint64, ret unsafe.Pointer)

//go:wasmimport weir:filter/kv@0.1.0 take-tokens
func impKVTakeTokens(ns, key string, rate, periodMs, burst, cost uint64, ret unsafe.Pointer)

func sysKVGet(ns, key string) (Entry, bool, error) {
	begin()
	impKVGet(ns, key, retp())
	if ret8(0) != 0 {
		return Entry{}, false, hostErrorAt(8)
	}
	if ret8(8) == 0 {
		return Entry{}, false, nil
	}
	return Entry{Value: liftBytes(ret32(16), ret32(20)), Version: ret64(24)}, true, nil
}

func sysKVSet(ns, key string, value []byte, ttlMs uint64) (uint64, error) {
	begin()
	impKVSet(ns, key, unsafe.Pointer(unsafe.SliceData(value)), uint32(len(value)), ttlMs, retp())
	runtime.KeepAlive(value)
	if ret8(0) != 0 {
		return 0, hostErrorAt(8)
	}
	return ret64(8), nil
}

func sysKVCompareAndSwap(ns, key string, expected uint64, value []byte, ttlMs uint64) (uint64, bool, error) {
	begin()
	impKVCompareAndSwap(ns, key, expected, unsafe.Pointer(unsafe.SliceData(value)), uint32(len(value)), ttlMs, retp())
	runtime.KeepAlive(value)
	if ret8(0) != 0 {
		return 0, false, hostErrorAt(8)
	}
	if ret8(8) == 0 {
		return 0, false, nil
	}
	return ret64(16), true, nil
}

func sysKVDelete(ns, key string) error {
	begin()
	impKVDelete(ns, key, retp())
	return unitResult()
}

func sysKVIncrement(ns, key string, delta int64, ttlMs uint64) (int64, error) {
	begin()
	impKVIncrement(ns, key, delta, ttlMs, retp())
	if ret8(0) != 0 {
		return 0, hostErrorAt(8)
	}
	return retS64(8), nil
}

func sysKVTakeTokens(ns, key string, rate, periodMs, burst, cost uint64) (BucketResult, error) {
	begin()
	impKVTakeTokens(ns, key, rate, periodMs, burst, cost, retp())
	if ret8(0) != 0 {
		return BucketResult{}, hostErrorAt(8)
	}
	return bucketResult(retBool(8), ret64(16), ret64(24), ret64(32)), nil
}

// ---- weir:filter/callout ----

//go:wasmimport weir:filter/callout@0.1.0 send
func impCalloutSend(target, method, path string, headers unsafe.Pointer, nh uint32, body unsafe.Pointer, nb uint32, timeoutMs uint32, ret unsafe.Pointer)

func sysCalloutSend(target, method, path string, headers []Header, body []byte, timeoutMs uint32) (*CalloutResponse, error) {
	begin()
	h := lowerPairs(len(headers), func(i int) (string, string) { return headers[i].Name, headers[i].Value })
	impCalloutSend(target, method, path, slicePtr(h), uint32(len(headers)),
		unsafe.Pointer(unsafe.SliceData(body)), uint32(len(body)), timeoutMs, retp())
	runtime.KeepAlive(headers)
	runtime.KeepAlive(body)
	if ret8(0) != 0 {
		return nil, hostErrorAt(4)
	}
	return &CalloutResponse{
		Status:  int(ret16(4)),
		Headers: liftHeaders(ret32(8), ret32(12)),
		Body:    liftBytes(ret32(16), ret32(20)),
	}, nil
}

// ---- weir:filter/trace ----

//go:wasmimport weir:filter/trace@0.1.0 sampled
func impSpanSampled() uint32

//go:wasmimport weir:filter/trace@0.1.0 set-attribute
func impSpanSetAttribute(key, value string, ret unsafe.Pointer)

//go:wasmimport weir:filter/trace@0.1.0 add-event
func impSpanAddEvent(name string, attributes unsafe.Pointer, n uint32, ret unsafe.Pointer)

func sysSpanSampled() bool { return impSpanSampled() != 0 }

func sysSpanSetAttribute(key, value string) error {
	begin()
	impSpanSetAttribute(key, value, retp())
	return unitResult()
}

func sysSpanAddEvent(name string, attributes []Label) error {
	begin()
	l := lowerLabels(attributes)
	impSpanAddEvent(name, slicePtr(l), uint32(len(attributes)), retp())
	runtime.KeepAlive(attributes)
	return unitResult()
}

// ---- weir:filter/crypto ----

type hmacHandle = uint32
type verifyingHandle = uint32

//go:wasmimport weir:filter/crypto@0.1.0 digest
func impDigest(alg uint32, data unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/crypto@0.1.0 constant-time-equal
func impConstantTimeEqual(a unsafe.Pointer, na uint32, b unsafe.Pointer, nb uint32) uint32

//go:wasmimport weir:filter/crypto@0.1.0 [static]hmac-key.create
func impHmacCreate(alg uint32, secret unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/crypto@0.1.0 [method]hmac-key.sign
func impHmacSign(key uint32, msg unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/crypto@0.1.0 [method]hmac-key.verify
func impHmacVerify(key uint32, msg unsafe.Pointer, n uint32, tag unsafe.Pointer, nt uint32) uint32

//go:wasmimport weir:filter/crypto@0.1.0 [resource-drop]hmac-key
func impHmacDrop(key uint32)

//go:wasmimport weir:filter/crypto@0.1.0 [static]verifying-key.from-spki
func impVerifyingFromSPKI(alg uint32, der unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/crypto@0.1.0 [static]verifying-key.from-rsa-components
func impVerifyingFromRSA(alg uint32, mod unsafe.Pointer, nm uint32, exp unsafe.Pointer, ne uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/crypto@0.1.0 [static]verifying-key.from-raw
func impVerifyingFromRaw(alg uint32, key unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport weir:filter/crypto@0.1.0 [method]verifying-key.verify
func impVerifyingVerify(key uint32, msg unsafe.Pointer, n uint32, sig unsafe.Pointer, ns uint32) uint32

//go:wasmimport weir:filter/crypto@0.1.0 [resource-drop]verifying-key
func impVerifyingDrop(key uint32)

func bytesPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

// handleResult lifts result<own<resource>, host-error>: the handle or the error at offset 4.
func handleResult() (uint32, error) {
	if ret8(0) != 0 {
		return 0, hostErrorAt(4)
	}
	return ret32(4), nil
}

func sysDigest(h Hash, data []byte) []byte {
	begin()
	impDigest(uint32(h), bytesPtr(data), uint32(len(data)), retp())
	runtime.KeepAlive(data)
	return liftBytes(ret32(0), ret32(4))
}

func sysConstantTimeEqual(a, b []byte) bool {
	eq := impConstantTimeEqual(bytesPtr(a), uint32(len(a)), bytesPtr(b), uint32(len(b)))
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	return eq != 0
}

func sysHmacKey(h Hash, secret []byte) (hmacHandle, error) {
	begin()
	impHmacCreate(uint32(h), bytesPtr(secret), uint32(len(secret)), retp())
	runtime.KeepAlive(secret)
	return handleResult()
}

func sysHmacSign(k hmacHandle, message []byte) []byte {
	begin()
	impHmacSign(k, bytesPtr(message), uint32(len(message)), retp())
	runtime.KeepAlive(message)
	return liftBytes(ret32(0), ret32(4))
}

func sysHmacVerify(k hmacHandle, message, tag []byte) bool {
	ok := impHmacVerify(k, bytesPtr(message), uint32(len(message)), bytesPtr(tag), uint32(len(tag)))
	runtime.KeepAlive(message)
	runtime.KeepAlive(tag)
	return ok != 0
}

func sysHmacDrop(k hmacHandle) { impHmacDrop(k) }

func sysVerifyingKeySPKI(alg SignatureAlgorithm, der []byte) (verifyingHandle, error) {
	begin()
	impVerifyingFromSPKI(uint32(alg), bytesPtr(der), uint32(len(der)), retp())
	runtime.KeepAlive(der)
	return handleResult()
}

func sysVerifyingKeyRSA(alg SignatureAlgorithm, modulus, exponent []byte) (verifyingHandle, error) {
	begin()
	impVerifyingFromRSA(uint32(alg), bytesPtr(modulus), uint32(len(modulus)),
		bytesPtr(exponent), uint32(len(exponent)), retp())
	runtime.KeepAlive(modulus)
	runtime.KeepAlive(exponent)
	return handleResult()
}

func sysVerifyingKeyRaw(alg SignatureAlgorithm, key []byte) (verifyingHandle, error) {
	begin()
	impVerifyingFromRaw(uint32(alg), bytesPtr(key), uint32(len(key)), retp())
	runtime.KeepAlive(key)
	return handleResult()
}

func sysVerify(k verifyingHandle, message, signature []byte) bool {
	ok := impVerifyingVerify(k, bytesPtr(message), uint32(len(message)), bytesPtr(signature), uint32(len(signature)))
	runtime.KeepAlive(message)
	runtime.KeepAlive(signature)
	return ok != 0
}

func sysVerifyingDrop(k verifyingHandle) { impVerifyingDrop(k) }
