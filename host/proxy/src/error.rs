//! The request path's one error type: what went wrong (a kind, which fixes the status the
//! client gets), why (the source, kept whole for the debug log, never shown to the client), and
//! whether a retry on another endpoint could help.

use std::fmt;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use weir_config::RetryOn;

use crate::body::{BoxError, ProxyBody};
use crate::retry::ClientFault;

/// Why a request was answered by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A malformed request: the reason is safe to show the client.
    BadRequest(&'static str),
    /// A request head over `limits.max_request_header_bytes` or `max_request_headers`.
    HeadTooLarge(&'static str),
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1).
    Expectation,
    NoRoute,
    /// The request body is over `limits.max_request_body_bytes`.
    TooLarge,
    /// The request body stalled (`limits.request_body_timeout`).
    RequestTimeout,
    /// No connection or response head in time.
    UpstreamTimeout,
    /// The upstream refused, reset, failed TLS or answered something that is not HTTP.
    Upstream,
    /// A cluster limit (circuit breaker) was reached: what, and the limit.
    Overflow(&'static str, usize),
    /// A fail-closed filter failed.
    Filter(Arc<str>),
}

impl ErrorKind {
    /// The access log's `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest(_) => "bad_request",
            ErrorKind::HeadTooLarge(_) => "head_too_large",
            ErrorKind::Expectation => "expectation",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::TooLarge => "body_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Overflow(..) => "overflow",
            ErrorKind::Filter(_) => "filter_failed",
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ErrorKind::BadRequest(_) => StatusCode::BAD_REQUEST,
            ErrorKind::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::Expectation => StatusCode::EXPECTATION_FAILED,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Overflow(..) | ErrorKind::Filter(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A request the proxy answers itself, and why.
pub(crate) struct ProxyError {
    pub kind: ErrorKind,
    /// The failure underneath (a hyper or connect error), for the debug log.
    pub source: Option<BoxError>,
    /// The kind of failed try this was, when another endpoint could answer instead.
    pub retry: Option<RetryOn>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind) -> ProxyError {
        ProxyError {
            kind,
            source: None,
            retry: None,
        }
    }

    /// An upstream failure caused by `source`.
    pub fn upstream(source: impl Into<BoxError>) -> ProxyError {
        ProxyError::new(ErrorKind::Upstream).because(source)
    }

    pub fn because(mut self, source: impl Into<BoxError>) -> ProxyError {
        self.source = Some(source.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The response the client gets: status, what happened in a few words, and the request id
    /// to quote. Never the source (it may name internal addresses).
    pub fn response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let id = request_id.to_str().unwrap_or_default();
        let status = self.status();
        let body = format!("{} {} (request id {id})\n", status.as_u16(), self.kind);
        let mut res = Response::new(ProxyBody::full(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res.headers_mut()
            .insert(crate::head::X_REQUEST_ID.clone(), request_id.clone());
        res
    }
}

impl From<ErrorKind> for ProxyError {
    fn from(kind: ErrorKind) -> ProxyError {
        ProxyError::new(kind)
    }
}

impl From<ClientFault> for ProxyError {
    fn from(fault: ClientFault) -> ProxyError {
        ProxyError::new(match fault {
            ClientFault::TooLarge => ErrorKind::TooLarge,
            ClientFault::Malformed => ErrorKind::BadRequest("malformed request body"),
            ClientFault::Stalled => ErrorKind::RequestTimeout,
        })
    }
}

/// What the client is told (the response body's words).
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::BadRequest(why) | ErrorKind::HeadTooLarge(why) => f.write_str(why),
            ErrorKind::Expectation => f.write_str("only the expectation 100-continue is supported"),
            ErrorKind::NoRoute => f.write_str("no route matches this request"),
            ErrorKind::TooLarge => f.write_str("request body too large"),
            ErrorKind::RequestTimeout => f.write_str("request body timed out"),
            ErrorKind::UpstreamTimeout => f.write_str("upstream timed out"),
            ErrorKind::Upstream => f.write_str("upstream unavailable"),
            ErrorKind::Overflow(what, max) => {
                write!(f, "upstream cluster at its limit of {max} {what}")
            }
            ErrorKind::Filter(name) => write!(f, "filter {name:?} failed"),
        }
    }
}

/// The kind, then every source in the chain (for logs).
impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        let mut source = self.source.as_deref().map(|e| e as &dyn std::error::Error);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_sees_the_kind_and_request_id_never_the_source() {
        let err = ProxyError::upstream("connect to 10.1.2.3:8080 refused");
        let res = err.response(&HeaderValue::from_static("rid-1"));
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(res.headers()["x-request-id"], "rid-1");
        let debug = format!("{err:?}");
        assert!(
            debug.contains("10.1.2.3"),
            "the log keeps the cause: {debug}"
        );
        assert_eq!(
            ErrorKind::Overflow("connections", 8).to_string(),
            "upstream cluster at its limit of 8 connections"
        );
    }
}
