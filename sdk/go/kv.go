package weir

import (
	"fmt"
	"time"
)

// Entry is a stored value and its version.
type Entry struct {
	Value []byte
	// Version is never 0; pass it to CompareAndSwap.
	Version uint64
}

// BucketResult is the outcome of [KVAPI.TakeTokens].
type BucketResult struct {
	// Allowed reports whether the tokens were taken.
	Allowed bool
	// Remaining is the number of tokens left after the call.
	Remaining uint64
	// RetryAfter is, when not allowed, how long until enough tokens are back (0 when allowed).
	RetryAfter time.Duration
	// Reset is how long until the bucket is full again.
	Reset time.Duration
}

// KVAPI is the type of [KV]: shared state across requests, instances and filters, by
// namespace. Every namespace must be granted in the filter's config (grants.kv); another one
// is a Denied error. Values carry a version for optimistic concurrency (CompareAndSwap);
// counters (Increment) and token buckets (TakeTokens) are atomic on the host.
type KVAPI struct{}

// KV is the host's key-value store: weir.KV.Increment("ratelimit", ip, 1, time.Minute).
var KV KVAPI

// ttlMs converts a TTL to the WIT's milliseconds: 0 is no expiry, a positive TTL under 1 ms
// counts as 1 ms so it still expires, a negative one is Invalid.
func ttlMs(what string, ttl time.Duration) (uint64, error) {
	switch {
	case ttl < 0:
		return 0, hostError(Invalid, fmt.Sprintf("%s: negative ttl %v", what, ttl))
	case ttl == 0:
		return 0, nil
	case ttl < time.Millisecond:
		return 1, nil
	}
	return uint64(ttl / time.Millisecond), nil
}

// Get reads a key: its entry, and whether it exists.
func (KVAPI) Get(namespace, key string) (Entry, bool, error) {
	return sysKVGet(utf8String(namespace), utf8String(key))
}

// Set writes a key, expiring after ttl (0: never). It returns the new version.
func (KVAPI) Set(namespace, key string, value []byte, ttl time.Duration) (uint64, error) {
	ms, err := ttlMs("kv set", ttl)
	if err != nil {
		return 0, err
	}
	return sysKVSet(utf8String(namespace), utf8String(key), value, ms)
}

// CompareAndSwap writes only if the key's current version is expected (0: the key must not
// exist). It returns the new version and true, or false if the version did not match (read
// again and retry).
func (KVAPI) CompareAndSwap(namespace, key string, expected uint64, value []byte, ttl time.Duration) (uint64, bool, error) {
	ms, err := ttlMs("kv compare-and-swap", ttl)
	if err != nil {
		return 0, false, err
	}
	return sysKVCompareAndSwap(utf8String(namespace), utf8String(key), expected, value, ms)
}

// Delete deletes a key (deleting a missing key is not an error).
func (KVAPI) Delete(namespace, key string) error {
	return sysKVDelete(utf8String(namespace), utf8String(key))
}

// Increment adds delta to an atomic counter (created at 0) and returns the new value. With a
// ttl > 0 the counter resets that long after it was created (a fixed window).
func (KVAPI) Increment(namespace, key string, delta int64, ttl time.Duration) (int64, error) {
	ms, err := ttlMs("kv increment", ttl)
	if err != nil {
		return 0, err
	}
	return sysKVIncrement(utf8String(namespace), utf8String(key), delta, ms)
}

// TakeTokens takes cost tokens from the bucket key (capacity burst, refilled at rate tokens
// per period), atomically: the rate-limit primitive. A new bucket starts full.
func (KVAPI) TakeTokens(namespace, key string, rate uint64, period time.Duration, burst, cost uint64) (BucketResult, error) {
	if period <= 0 {
		return BucketResult{}, hostError(Invalid, fmt.Sprintf("kv take-tokens: period must be positive, got %v", period))
	}
	periodMs := uint64(period / time.Millisecond)
	if periodMs == 0 {
		periodMs = 1
	}
	return sysKVTakeTokens(utf8String(namespace), utf8String(key), rate, periodMs, burst, cost)
}

func bucketResult(allowed bool, remaining, retryAfterMs, resetMs uint64) BucketResult {
	return BucketResult{
		Allowed:    allowed,
		Remaining:  remaining,
		RetryAfter: msDuration(retryAfterMs),
		Reset:      msDuration(resetMs),
	}
}

func msDuration(ms uint64) time.Duration {
	if ms > uint64(1<<63-1)/uint64(time.Millisecond) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(ms) * time.Millisecond
}
