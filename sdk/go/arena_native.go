//go:build !wasip1

package weir

// Natively there is no arena: host calls pass Go values.
func setArenaSize(int) {}
