package weir

// Label is a metric label: a (name, value) pair.
type Label struct {
	Name  string
	Value string
}

// MetricsAPI is the type of [Metrics]: metrics exported on the proxy's /metrics with a
// `filter` label. Names must match [a-z_][a-z0-9_]*; a bad name is an Invalid error.
type MetricsAPI struct{}

// Metrics records metrics:
//
//	weir.Metrics.CounterAdd("auth_failures_total", 1, weir.Label{Name: "reason", Value: "expired"})
var Metrics MetricsAPI

func validLabels(labels []Label) []Label {
	for i, l := range labels {
		if utf8String(l.Name) != l.Name || utf8String(l.Value) != l.Value {
			out := append([]Label(nil), labels...)
			for j := i; j < len(out); j++ {
				out[j] = Label{utf8String(out[j].Name), utf8String(out[j].Value)}
			}
			return out
		}
	}
	return labels
}

// CounterAdd adds delta to a counter.
func (MetricsAPI) CounterAdd(name string, delta uint64, labels ...Label) error {
	return sysCounterAdd(utf8String(name), validLabels(labels), delta)
}

// GaugeSet sets a gauge.
func (MetricsAPI) GaugeSet(name string, value int64, labels ...Label) error {
	return sysGaugeSet(utf8String(name), validLabels(labels), value)
}

// HistogramObserve records an observation, in seconds.
func (MetricsAPI) HistogramObserve(name string, seconds float64, labels ...Label) error {
	return sysHistogramObserve(utf8String(name), validLabels(labels), seconds)
}
