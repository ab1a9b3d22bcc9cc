// An explicit wasm trap for the canonical-ABI glue: `unreachable`, nothing else. The proxy
// classifies an unreachable trap as a filter panic and applies the filter's failure policy.

#include "textflag.h"

// func trap()
TEXT ·trap(SB), NOSPLIT, $0-0
	UNDEF
	RET
