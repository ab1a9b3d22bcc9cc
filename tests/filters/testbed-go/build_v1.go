//go:build !v2

package main

// Build is this build's x-testbed-build value; `-tags v2` makes a second, different module
// from the same source, for hot-swap tests.
const Build = "v1"
