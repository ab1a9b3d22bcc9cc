package weir

import "fmt"

// Level is a log level (the WIT `level` enum), most verbose first.
type Level uint8

const (
	LevelTrace Level = iota
	LevelDebug
	LevelInfo
	LevelWarn
	LevelError
)

func (l Level) String() string {
	switch l {
	case LevelTrace:
		return "trace"
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelWarn:
		return "warn"
	case LevelError:
		return "error"
	}
	return "unknown"
}

// LogAPI is the type of [Log]: logging into the proxy's log, tagged with the filter name and
// the request id. (Filters have no stdout/stderr worth using: use this.)
type LogAPI struct{}

// Log writes to the proxy's log: weir.Log.Info("token accepted"), weir.Log.Warnf("...%v", err).
var Log LogAPI

// Write writes one log line at level.
func (LogAPI) Write(level Level, message string) { sysLog(level, utf8String(message)) }

// Trace writes one line at LevelTrace.
func (l LogAPI) Trace(message string) { l.Write(LevelTrace, message) }

// Debug writes one line at LevelDebug.
func (l LogAPI) Debug(message string) { l.Write(LevelDebug, message) }

// Info writes one line at LevelInfo.
func (l LogAPI) Info(message string) { l.Write(LevelInfo, message) }

// Warn writes one line at LevelWarn.
func (l LogAPI) Warn(message string) { l.Write(LevelWarn, message) }

// Error writes one line at LevelError.
func (l LogAPI) Error(message string) { l.Write(LevelError, message) }

// Tracef formats (fmt.Sprintf) and writes one line at LevelTrace.
func (l LogAPI) Tracef(format string, args ...any) { l.Write(LevelTrace, fmt.Sprintf(format, args...)) }

// Debugf formats and writes one line at LevelDebug.
func (l LogAPI) Debugf(format string, args ...any) { l.Write(LevelDebug, fmt.Sprintf(format, args...)) }

// Infof formats and writes one line at LevelInfo.
func (l LogAPI) Infof(format string, args ...any) { l.Write(LevelInfo, fmt.Sprintf(format, args...)) }

// Warnf formats and writes one line at LevelWarn.
func (l LogAPI) Warnf(format string, args ...any) { l.Write(LevelWarn, fmt.Sprintf(format, args...)) }

// Errorf formats and writes one line at LevelError.
func (l LogAPI) Errorf(format string, args ...any) { l.Write(LevelError, fmt.Sprintf(format, args...)) }
