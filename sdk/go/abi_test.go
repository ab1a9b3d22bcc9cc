//go:build !wasip1

package weir_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The core-module signatures of every import and export (sdk/ABI.md): the canonical-ABI
// flattening of wit/filter.wit, worked out by hand. A result that flattens to more than one
// value becomes a trailing return-pointer parameter (imports) or an i32 pointer result
// (exports).
var wantImports = map[string]string{
	"weir:filter/http@0.1.0 method":               "(i32)",
	"weir:filter/http@0.1.0 path":                 "(i32)",
	"weir:filter/http@0.1.0 set-path":             "(i32,i32,i32)",
	"weir:filter/http@0.1.0 authority":            "(i32)",
	"weir:filter/http@0.1.0 scheme":               "(i32)",
	"weir:filter/http@0.1.0 client-address":       "(i32)",
	"weir:filter/http@0.1.0 route-name":           "(i32)",
	"weir:filter/http@0.1.0 cluster-name":         "(i32)",
	"weir:filter/http@0.1.0 request-id":           "(i32)",
	"weir:filter/http@0.1.0 status":               "()->(i32)",
	"weir:filter/http@0.1.0 set-status":           "(i32,i32)",
	"weir:filter/http@0.1.0 get-header":           "(i32,i32,i32,i32)",
	"weir:filter/http@0.1.0 get-header-all":       "(i32,i32,i32,i32)",
	"weir:filter/http@0.1.0 set-header":           "(i32,i32,i32,i32,i32,i32)",
	"weir:filter/http@0.1.0 append-header":        "(i32,i32,i32,i32,i32,i32)",
	"weir:filter/http@0.1.0 remove-header":        "(i32,i32,i32,i32)",
	"weir:filter/http@0.1.0 headers":              "(i32,i32)",
	"weir:filter/http@0.1.0 body":                 "(i32,i32)",
	"weir:filter/http@0.1.0 set-body":             "(i32,i32,i32,i32)",
	"weir:filter/log@0.1.0 write":                 "(i32,i32,i32)",
	"weir:filter/clock@0.1.0 now-ms":              "()->(i64)",
	"weir:filter/clock@0.1.0 monotonic-ns":        "()->(i64)",
	"weir:filter/clock@0.1.0 random-bytes":        "(i32,i32)",
	"weir:filter/metrics@0.1.0 counter-add":       "(i32,i32,i32,i32,i64,i32)",
	"weir:filter/metrics@0.1.0 gauge-set":         "(i32,i32,i32,i32,i64,i32)",
	"weir:filter/metrics@0.1.0 histogram-observe": "(i32,i32,i32,i32,f64,i32)",
	"weir:filter/kv@0.1.0 get":                    "(i32,i32,i32,i32,i32)",
	"weir:filter/kv@0.1.0 set":                    "(i32,i32,i32,i32,i32,i32,i64,i32)",
	"weir:filter/kv@0.1.0 compare-and-swap":       "(i32,i32,i32,i32,i64,i32,i32,i64,i32)",
	"weir:filter/kv@0.1.0 delete":                 "(i32,i32,i32,i32,i32)",
	"weir:filter/kv@0.1.0 increment":              "(i32,i32,i32,i32,i64,i64,i32)",
	"weir:filter/kv@0.1.0 take-tokens":            "(i32,i32,i32,i32,i64,i64,i64,i64,i32)",
	"weir:filter/callout@0.1.0 send":              "(i32,i32,i32,i32,i32,i32,i32,i32,i32,i32,i32,i32)",
	"weir:filter/trace@0.1.0 sampled":             "()->(i32)",
	"weir:filter/trace@0.1.0 set-attribute":       "(i32,i32,i32,i32,i32)",
	"weir:filter/trace@0.1.0 add-event":           "(i32,i32,i32,i32,i32)",
}

var wantExports = map[string]string{
	"_initialize":                                            "()",
	"cabi_realloc":                                           "(i32,i32,i32,i32)->(i32)",
	"cabi_realloc_adapter":                                   "(i32,i32,i32,i32)->(i32)",
	"weir:filter/filter@0.1.0#configure":                     "(i32,i32)->(i32)",
	"weir:filter/filter@0.1.0#on-request-headers":            "(i32)->(i32)",
	"weir:filter/filter@0.1.0#on-request-body":               "(i32,i32)->(i32)",
	"weir:filter/filter@0.1.0#on-response-headers":           "(i32)->(i32)",
	"weir:filter/filter@0.1.0#on-response-body":              "(i32,i32)->(i32)",
	"weir:filter/filter@0.1.0#on-log":                        "(i32)",
	"weir:filter/filter@0.1.0#context-done":                  "(i32)",
	"cabi_post_weir:filter/filter@0.1.0#configure":           "(i32)",
	"cabi_post_weir:filter/filter@0.1.0#on-request-headers":  "(i32)",
	"cabi_post_weir:filter/filter@0.1.0#on-request-body":     "(i32)",
	"cabi_post_weir:filter/filter@0.1.0#on-response-headers": "(i32)",
	"cabi_post_weir:filter/filter@0.1.0#on-response-body":    "(i32)",
}

// TestCoreModuleABI builds testdata/abifilter (which calls every host function) for wasip1 and
// checks the module's imports and exports against the table above.
func TestCoreModuleABI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a wasm module")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "abi.wasm")
	cmd := exec.Command(goBin, "build", "-buildmode=c-shared", "-o", out, ".")
	cmd.Dir = filepath.Join("testdata", "abifilter")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	wasm, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseModule(wasm)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range wantImports {
		if got, ok := m.imports[name]; !ok {
			t.Errorf("import %s: missing", name)
		} else if got != want {
			t.Errorf("import %s: %s, want %s", name, got, want)
		}
	}
	for name, got := range m.imports {
		if _, ok := wantImports[name]; !ok && !strings.HasPrefix(name, "wasi_snapshot_preview1 ") {
			t.Errorf("unexpected import %s %s", name, got)
		}
	}
	for name, want := range wantExports {
		if got, ok := m.exports[name]; !ok {
			t.Errorf("export %s: missing", name)
		} else if got != want {
			t.Errorf("export %s: %s, want %s", name, got, want)
		}
	}
	if !m.memory {
		t.Error("memory is not exported")
	}
	if m.minPages*64<<10 > 8<<20 {
		t.Errorf("initial memory %d KiB: the static data grew (was 5.3 MiB)", m.minPages*64)
	}
}

type module struct {
	imports, exports map[string]string
	memory           bool
	minPages         uint64
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.err = fmt.Errorf("truncated module")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) leb() uint64 {
	var v uint64
	for shift := 0; r.err == nil; shift += 7 {
		c := r.byte()
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			break
		}
	}
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if uint64(len(r.b)) < n {
		r.err = fmt.Errorf("truncated module")
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) name() string { return string(r.bytes(r.leb())) }

func valType(c byte) string {
	switch c {
	case 0x7f:
		return "i32"
	case 0x7e:
		return "i64"
	case 0x7d:
		return "f32"
	case 0x7c:
		return "f64"
	}
	return fmt.Sprintf("0x%x", c)
}

func (r *reader) limits() uint64 {
	flags := r.byte()
	min := r.leb()
	if flags&1 != 0 {
		r.leb()
	}
	return min
}

// parseModule reads the type, import, function, memory and export sections: just enough for
// the test.
func parseModule(b []byte) (*module, error) {
	if !bytes.HasPrefix(b, []byte("\x00asm\x01\x00\x00\x00")) {
		return nil, fmt.Errorf("not a core wasm module")
	}
	m := &module{imports: map[string]string{}, exports: map[string]string{}}
	var types []string
	var funcs []string // function index → signature
	r := &reader{b: b[8:]}
	for len(r.b) > 0 && r.err == nil {
		id := r.byte()
		sec := &reader{b: r.bytes(r.leb())}
		switch id {
		case 1:
			for n := sec.leb(); n > 0 && sec.err == nil; n-- {
				sec.byte() // 0x60
				var params, results []string
				for k := sec.leb(); k > 0; k-- {
					params = append(params, valType(sec.byte()))
				}
				for k := sec.leb(); k > 0; k-- {
					results = append(results, valType(sec.byte()))
				}
				sig := "(" + strings.Join(params, ",") + ")"
				if len(results) > 0 {
					sig += "->(" + strings.Join(results, ",") + ")"
				}
				types = append(types, sig)
			}
		case 2:
			for n := sec.leb(); n > 0 && sec.err == nil; n-- {
				name := sec.name() + " " + sec.name()
				switch kind := sec.byte(); kind {
				case 0:
					sig := types[sec.leb()]
					m.imports[name] = sig
					funcs = append(funcs, sig)
				case 1:
					sec.byte()
					sec.limits()
				case 2:
					sec.limits()
				case 3:
					sec.byte()
					sec.byte()
				}
			}
		case 3:
			for n := sec.leb(); n > 0 && sec.err == nil; n-- {
				funcs = append(funcs, types[sec.leb()])
			}
		case 5:
			if sec.leb() > 0 {
				m.minPages = sec.limits()
			}
		case 7:
			for n := sec.leb(); n > 0 && sec.err == nil; n-- {
				name := sec.name()
				kind := sec.byte()
				idx := sec.leb()
				switch kind {
				case 0:
					m.exports[name] = funcs[idx]
				case 2:
					m.memory = m.memory || name == "memory"
				}
			}
		}
		if sec.err != nil {
			return nil, sec.err
		}
	}
	return m, r.err
}
