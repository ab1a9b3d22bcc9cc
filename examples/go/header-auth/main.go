// header-auth: an API-key check on one request header (spec: examples/README.md).
//
// Config: {"header": "x-api-key", "keys": {"<key>": "<client name>", ...}}. A request without
// the header gets 401, one with an unknown key 403; a known key is removed (it never reaches
// the upstream) and the client's name goes upstream in x-client.
package main

import (
	"errors"
	"fmt"

	weir "github.com/weir-proxy/weir/sdk/go"
)

// Config is the filter's config.
type Config struct {
	// Header carries the key. Default: x-api-key.
	Header string `json:"header"`
	// Keys maps each key to its client's name (any UTF-8 text). At least one.
	Keys map[string]string `json:"keys"`
}

// HeaderAuth is the configured filter.
type HeaderAuth struct {
	weir.DefaultFilter
	header string
	keys   map[string]string
}

// New checks the config and builds the filter.
func New(raw []byte) (weir.Filter, weir.Phases, error) {
	cfg := Config{Header: "x-api-key"}
	if err := weir.DecodeConfig(raw, &cfg); err != nil {
		return nil, 0, err
	}
	if len(cfg.Keys) == 0 {
		return nil, 0, errors.New("keys must hold at least one entry")
	}
	if !weir.IsHeaderName(cfg.Header) {
		return nil, 0, fmt.Errorf("header %q is not a header name", cfg.Header)
	}
	// The key is removed once checked, and the proxy owns framing headers.
	if weir.IsFramingHeader(cfg.Header) {
		return nil, 0, fmt.Errorf("header %q is one the proxy sets", cfg.Header)
	}
	return &HeaderAuth{header: cfg.Header, keys: cfg.Keys}, weir.PhaseRequestHeaders, nil
}

func (f *HeaderAuth) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action {
	key, ok := req.Header(f.header)
	if !ok {
		return weir.Respond(weir.JSON(401, map[string]string{"error": "missing api key"}).
			WithHeader("www-authenticate", fmt.Sprintf("ApiKey header=%q", f.header)))
	}
	client, ok := f.keys[key]
	if !ok {
		return weir.Respond(weir.JSON(403, map[string]string{"error": "invalid api key"}))
	}
	if err := req.RemoveHeader(f.header); err != nil {
		return weir.Respond(weir.Text(500, "header-auth: "+err.Error()))
	}
	if err := req.SetHeader("x-client", client); err != nil {
		return weir.Respond(weir.Text(500, "header-auth: "+err.Error()))
	}
	return weir.Continue
}

func init() { weir.Register(New) }

func main() {}
