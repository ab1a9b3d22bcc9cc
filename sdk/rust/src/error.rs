//! Errors a filter sees: typed host-call errors and config errors.

use std::fmt;

/// An error returned by a host call (mirrors the WIT `host-error` variant).
///
/// A host error is an ordinary value the filter decides what to do with; it is not a trap.
/// Its [`Display`](fmt::Display) form is `kind: message`, e.g.
/// `denied: kv namespace "sessions" is not granted`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostError {
    /// The filter's config does not grant this capability (callout target, KV namespace...).
    Denied(String),
    /// The call makes no sense now (e.g. the response status during the request phase).
    Unavailable(String),
    /// An argument was invalid (bad header name or value, bad metric name...).
    Invalid(String),
    /// The operation failed (callout connect error, timeout...).
    Failed(String),
}

impl HostError {
    /// The variant's WIT name: `denied`, `unavailable`, `invalid` or `failed`.
    ///
    /// ```
    /// use weir_filter::HostError;
    /// assert_eq!(HostError::Denied("no".into()).kind(), "denied");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::Unavailable(_) => "unavailable",
            Self::Invalid(_) => "invalid",
            Self::Failed(_) => "failed",
        }
    }

    /// The host's message.
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m) | Self::Unavailable(m) | Self::Invalid(m) | Self::Failed(m) => m,
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for HostError {}

/// The filter rejected its config (mirrors the WIT `config-error` record).
///
/// Produced when the config JSON does not deserialize into [`Filter::Config`](crate::Filter::Config)
/// or when [`Filter::new`](crate::Filter::new) returns an error. The host reports the message to
/// the operator and refuses the config change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigError {
    /// What is wrong with the config, for the operator.
    pub message: String,
}

impl ConfigError {
    /// A config error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
