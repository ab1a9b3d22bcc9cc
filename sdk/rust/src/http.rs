//! The current request and response, as a phase sees them.
//!
//! These are handles: every method is a host call acting on the request whose phase is
//! running, so values are always current (another filter's change is visible) and nothing is
//! copied until asked for. Setters take `&mut self`; a phase that only gets `&Request` (for
//! example [`Response::request`]) cannot change the request.

use crate::HostError;
use crate::sys::{Backend, Host};

/// Which header map a header call acts on (internal mirror of the WIT `header-map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderMap {
    Request,
    Response,
}

/// Which body a [`Body`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// The request body, on its way upstream.
    Request,
    /// The response body, on its way downstream.
    Response,
}

macro_rules! header_methods {
    ($map:expr, $which:literal) => {
        #[doc = concat!("The first value of a ", $which, " header, if present (names are case-insensitive).")]
        pub fn header(&self, name: &str) -> Option<String> {
            Backend::get_header($map, name)
        }

        #[doc = concat!("Every value of a ", $which, " header, in order.")]
        pub fn header_all(&self, name: &str) -> Vec<String> {
            Backend::get_header_all($map, name)
        }

        #[doc = concat!("All ", $which, " headers, in order, as (name, value) pairs.")]
        pub fn headers(&self) -> Vec<(String, String)> {
            Backend::headers($map)
        }

        #[doc = concat!("Replaces all values of a ", $which, " header with one value.")]
        ///
        /// Errors with [`HostError::Invalid`] for a bad name or value, or for a framing or
        /// hop-by-hop header only the proxy sets (`content-length`, `connection`...: see
        /// [`validate::FRAMING_HEADERS`](crate::validate::FRAMING_HEADERS)), and
        /// [`HostError::Unavailable`] when the headers can no longer change.
        pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
            Backend::set_header($map, name, value)
        }

        #[doc = concat!("Adds a value to a ", $which, " header, keeping existing ones.")]
        ///
        /// Errors as [`set_header`](Self::set_header).
        pub fn append_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
            Backend::append_header($map, name, value)
        }

        #[doc = concat!("Removes every value of a ", $which, " header.")]
        ///
        /// Errors as [`set_header`](Self::set_header): a framing or hop-by-hop header cannot
        /// be removed either.
        pub fn remove_header(&mut self, name: &str) -> Result<(), HostError> {
            Backend::remove_header($map, name)
        }
    };
}

/// The current request: head, headers and properties.
///
/// Passed as `&mut Request` to [`Filter::on_request_headers`](crate::Filter::on_request_headers);
/// later phases can read it through [`Response::request`], [`Body::request`] and
/// [`LogView::request`].
#[derive(Debug)]
pub struct Request {
    _private: (),
}

impl Request {
    pub(crate) fn current() -> Self {
        Self { _private: () }
    }

    /// Request method (`GET`).
    pub fn method(&self) -> String {
        Backend::method()
    }

    /// Request path with query, as it will be sent upstream (`/v1/users?id=7`).
    pub fn path(&self) -> String {
        Backend::path()
    }

    /// Replaces the path (with query) sent upstream. Request phases only.
    ///
    /// Errors with [`HostError::Invalid`] for a path that does not start with `/` and
    /// [`HostError::Unavailable`] outside the request phases.
    pub fn set_path(&mut self, path: &str) -> Result<(), HostError> {
        Backend::set_path(path)
    }

    /// The authority (`host[:port]`) the client asked for.
    pub fn authority(&self) -> String {
        Backend::authority()
    }

    /// `http` or `https`, as seen by the client.
    pub fn scheme(&self) -> String {
        Backend::scheme()
    }

    /// The client's address, `ip:port`.
    pub fn client_address(&self) -> String {
        Backend::client_address()
    }

    /// Name of the route that matched.
    pub fn route_name(&self) -> String {
        Backend::route_name()
    }

    /// Name of the cluster the route sends to.
    pub fn cluster_name(&self) -> String {
        Backend::cluster_name()
    }

    /// The request id (`x-request-id`).
    pub fn request_id(&self) -> String {
        Backend::request_id()
    }

    header_methods!(HeaderMap::Request, "request");

    /// The first value of a header set on the response to come by
    /// [`set_response_header`](Self::set_response_header) (in the response phases, the
    /// response's own header).
    pub fn response_header(&self, name: &str) -> Option<String> {
        Backend::get_header(HeaderMap::Response, name)
    }

    /// Sets a header on the response the client will get, from a request phase, whatever it
    /// is; response phases then see it. On the upstream's response the name replaces that
    /// name's values; a local response (this filter's, a later one's, or the proxy's error)
    /// keeps the headers it sets itself and gets the others. A filter that only adds response
    /// headers (a rate limit's `RateLimit-*`) so needs no response phase and no per-request
    /// state.
    ///
    /// Errors as [`set_header`](Self::set_header).
    pub fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        Backend::set_header(HeaderMap::Response, name, value)
    }

    /// Adds a value to a header set on the response to come (see
    /// [`set_response_header`](Self::set_response_header)); the upstream's values of that name
    /// are still replaced.
    pub fn append_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        Backend::append_header(HeaderMap::Response, name, value)
    }
}

/// The current response: status and headers, plus read access to the request.
///
/// Passed as `&mut Response` to
/// [`Filter::on_response_headers`](crate::Filter::on_response_headers).
#[derive(Debug)]
pub struct Response {
    request: Request,
}

impl Response {
    pub(crate) fn current() -> Self {
        Self {
            request: Request::current(),
        }
    }

    /// The request this response answers (read-only).
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Response status.
    pub fn status(&self) -> u16 {
        Backend::status()
    }

    /// Replaces the response status. Response-headers phase only.
    ///
    /// Errors with [`HostError::Invalid`] for a status outside 100–599 and
    /// [`HostError::Unavailable`] outside the response-headers phase.
    pub fn set_status(&mut self, status: u16) -> Result<(), HostError> {
        Backend::set_status(status)
    }

    header_methods!(HeaderMap::Response, "response");
}

/// The body bytes of a body phase: the current chunk plus any chunks held by an earlier
/// [`Action::Buffer`](crate::Action::Buffer).
#[derive(Debug)]
pub struct Body {
    kind: BodyKind,
    response: Response,
}

impl Body {
    pub(crate) fn current(kind: BodyKind) -> Self {
        Self {
            kind,
            response: Response::current(),
        }
    }

    /// Whether this is the request or the response body.
    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// The bytes held so far (copied out of the host on every call: keep the result).
    pub fn bytes(&self) -> Result<Vec<u8>, HostError> {
        Backend::body(self.kind)
    }

    /// Replaces the bytes returned by [`bytes`](Self::bytes) with these.
    pub fn set(&mut self, bytes: impl AsRef<[u8]>) -> Result<(), HostError> {
        Backend::set_body(self.kind, bytes.as_ref())
    }

    /// The request (read-only).
    pub fn request(&self) -> &Request {
        &self.response.request
    }

    /// The response head (read-only), for a response body; `None` for a request body.
    pub fn response(&self) -> Option<&Response> {
        match self.kind {
            BodyKind::Request => None,
            BodyKind::Response => Some(&self.response),
        }
    }
}

/// What [`Filter::on_log`](crate::Filter::on_log) sees: the finished request and response,
/// readable but not writable.
#[derive(Debug)]
pub struct LogView {
    response: Response,
}

impl LogView {
    pub(crate) fn current() -> Self {
        Self {
            response: Response::current(),
        }
    }

    /// The request as it was sent upstream.
    pub fn request(&self) -> &Request {
        &self.response.request
    }

    /// The response as it was sent downstream.
    pub fn response(&self) -> &Response {
        &self.response
    }
}
