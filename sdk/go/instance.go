package weir

import "errors"

// instance is a configured filter and the contexts of its live requests: what one wasm
// instance holds in the proxy, and what one weirtest.Harness holds natively.
type instance struct {
	filter   Filter
	phases   Phases
	contexts map[uint32]*Context
	// scratch is a stateless filter's context, emptied for every call (no allocation per call).
	scratch Context
}

// configureInstance runs WIT configure: the ConfigureFunc builds the filter and declares its
// phases; any error rejects the config.
func configureInstance(configure ConfigureFunc, config string) (*instance, error) {
	if configure == nil {
		return nil, errors.New("no filter registered: call weir.Register from an init function of package main")
	}
	f, phases, err := configure([]byte(config))
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, errors.New("the filter's configure function returned a nil Filter without an error")
	}
	return &instance{filter: f, phases: phases & (AllPhases | Stateless), contexts: make(map[uint32]*Context)}, nil
}

// context returns the context of id, created on first use; an empty one every call for a
// stateless filter, which keeps none.
func (in *instance) context(id uint32) *Context {
	if in.phases&Stateless != 0 {
		in.scratch = Context{id: id}
		return &in.scratch
	}
	c, ok := in.contexts[id]
	if !ok {
		c = &Context{id: id}
		in.contexts[id] = c
	}
	return c
}

func (in *instance) onRequestHeaders(id uint32) Action {
	return in.filter.OnRequestHeaders(in.context(id), &theRequest)
}

func (in *instance) onRequestBody(id uint32, end bool) Action {
	return in.filter.OnRequestBody(in.context(id), &theRequestBody, end)
}

func (in *instance) onResponseHeaders(id uint32) Action {
	return in.filter.OnResponseHeaders(in.context(id), &theResponse)
}

func (in *instance) onResponseBody(id uint32, end bool) Action {
	return in.filter.OnResponseBody(in.context(id), &theResponseBody, end)
}

func (in *instance) onLog(id uint32) {
	in.filter.OnLog(in.context(id), &theLogView)
}

// contextDone drops the request's context (if a phase ever created it).
func (in *instance) contextDone(id uint32) {
	delete(in.contexts, id)
}
