// json-transform: edits the top-level members of a JSON object request body (spec:
// examples/README.md).
//
// Config: {"remove": ["k", ...], "rename": {"old": "new", ...}, "set": {"k": <any JSON>, ...}},
// all optional, applied in that order. Members the config does not name keep their order and
// their exact JSON text (compacted), so nothing is re-encoded: strings keep their meaning
// byte for byte, numbers keep their precision.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"

	weir "github.com/weir-proxy/weir/sdk/go"
)

// Member is one member of a JSON object: its name and its value's JSON text.
type Member struct {
	Name  string
	Value json.RawMessage
}

// Members is a JSON object's members in their order (a Go map would lose it).
type Members []Member

var errNotObject = errors.New("not a JSON object")

// ParseObject reads a JSON object (and nothing after it but whitespace) into its members,
// with each value compacted.
func ParseObject(data []byte) (Members, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errNotObject
	}
	members := Members{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errNotObject
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, raw); err != nil {
			return nil, err
		}
		members = append(members, Member{Name: name, Value: compact.Bytes()})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return members, nil
}

// UnmarshalJSON keeps the members' order.
func (m *Members) UnmarshalJSON(data []byte) error {
	members, err := ParseObject(data)
	if err != nil {
		return err
	}
	*m = members
	return nil
}

// AppendJSON appends the object, compactly.
func (m Members) AppendJSON(out []byte) []byte {
	out = append(out, '{')
	for i, member := range m {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, member.Name)
		out = append(out, ':')
		out = append(out, member.Value...)
	}
	return append(out, '}')
}

// appendString appends s as a JSON string (without encoding/json's HTML escaping).
func appendString(out []byte, s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(out, bytes.TrimRight(b.Bytes(), "\n")...)
}

// Config is the filter's config.
type Config struct {
	Remove []string          `json:"remove"`
	Rename map[string]string `json:"rename"`
	Set    Members           `json:"set"`
}

// JSONTransform is the configured filter.
type JSONTransform struct {
	weir.DefaultFilter
	cfg Config
}

// New builds the filter.
func New(raw []byte) (weir.Filter, weir.Phases, error) {
	var cfg Config
	if err := weir.DecodeConfig(raw, &cfg); err != nil {
		return nil, 0, err
	}
	return &JSONTransform{cfg: cfg}, weir.PhaseRequestBody, nil
}

// Edit applies remove, rename, then set.
func (f *JSONTransform) Edit(members Members) Members {
	out := members[:0]
	for _, m := range members {
		removed := false
		for _, r := range f.cfg.Remove {
			if m.Name == r {
				removed = true
				break
			}
		}
		if !removed {
			out = append(out, m)
		}
	}
	for i := range out {
		if to, ok := f.cfg.Rename[out[i].Name]; ok {
			out[i].Name = to
		}
	}
	for _, s := range f.cfg.Set {
		found := false
		for i := range out {
			if out[i].Name == s.Name {
				out[i].Value = s.Value
				found = true
				break
			}
		}
		if !found {
			out = append(out, s)
		}
	}
	return out
}

func (f *JSONTransform) OnRequestBody(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
	if !end {
		return weir.Buffer
	}
	data, err := body.Bytes()
	if err != nil {
		return weir.Respond(weir.Text(500, "json-transform: "+err.Error()))
	}
	if len(data) == 0 {
		return weir.Continue
	}
	members, err := ParseObject(data)
	if err != nil {
		return weir.Respond(weir.JSON(400, map[string]string{"error": "body must be a JSON object"}))
	}
	if err := body.Set(f.Edit(members).AppendJSON(nil)); err != nil {
		return weir.Respond(weir.Text(500, "json-transform: "+err.Error()))
	}
	return weir.Continue
}

func init() { weir.Register(New) }

func main() {}
