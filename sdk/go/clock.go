package weir

import "time"

// ClockAPI is the type of [Clock]: time and randomness from the host. (Go's time.Now works in
// a filter too, through WASI, but the host clock is what the emulator can control in tests.)
type ClockAPI struct{}

// Clock reads the host's clocks: weir.Clock.Now(), weir.Clock.MonotonicNs().
var Clock ClockAPI

// NowMs is the wall clock: milliseconds since the UNIX epoch.
func (ClockAPI) NowMs() uint64 { return sysNowMs() }

// Now is the wall clock as a time.Time (millisecond precision).
func (ClockAPI) Now() time.Time { return time.UnixMilli(int64(sysNowMs())) }

// MonotonicNs is a monotonic clock in nanoseconds, for measuring durations.
func (ClockAPI) MonotonicNs() uint64 { return sysMonotonicNs() }

// Since is the time elapsed since a MonotonicNs reading.
func (c ClockAPI) Since(startNs uint64) time.Duration {
	now := c.MonotonicNs()
	if now < startNs {
		return 0
	}
	return time.Duration(now - startNs)
}

// RandomBytes returns n random bytes from the operating system's CSPRNG, through the host (the
// proxy gives at most 64 KiB per call).
func (ClockAPI) RandomBytes(n int) []byte {
	if n <= 0 {
		return []byte{}
	}
	if n > 1<<31 {
		n = 1 << 31
	}
	return sysRandomBytes(uint32(n))
}
