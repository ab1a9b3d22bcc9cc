//go:build v2

package main

// Build is this build's x-testbed-build value (see build_v1.go).
const Build = "v2"
