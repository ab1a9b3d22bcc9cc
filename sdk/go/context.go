package weir

// Context is one request's state inside a filter instance. The SDK creates it at the first
// phase call of a request and drops it when the proxy calls context-done, so nothing leaks
// from one request to the next. Use [State] for a typed per-request struct, or Set/Get for
// loose values.
type Context struct {
	id     uint32
	values map[any]any
}

// ID is the context id the proxy gave this request (unique within the instance while the
// request lives).
func (c *Context) ID() uint32 { return c.id }

// Set stores a value under key for the rest of this request.
func (c *Context) Set(key, value any) {
	if c.values == nil {
		c.values = make(map[any]any)
	}
	c.values[key] = value
}

// Get returns the value stored under key, or nil.
func (c *Context) Get(key any) any { return c.values[key] }

// Delete removes the value stored under key.
func (c *Context) Delete(key any) { delete(c.values, key) }

type stateKey[T any] struct{}

// State returns this request's *T, created as a zero T at first use: a typed per-request
// struct.
//
//	type reqState struct{ consumer string }
//	st := weir.State[reqState](ctx)
//	st.consumer = "alice"
func State[T any](c *Context) *T {
	if v, ok := c.values[stateKey[T]{}]; ok {
		return v.(*T)
	}
	v := new(T)
	c.Set(stateKey[T]{}, v)
	return v
}
