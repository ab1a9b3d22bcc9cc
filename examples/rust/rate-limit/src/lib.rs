//! `rate-limit`: a fixed-window limit per client on the host's shared counters (spec:
//! `examples/README.md`).

use std::time::Duration;

use serde::Deserialize;
use weir_filter::{Action, Filter, LocalResponse, Phases, Request, Response, export_filter, kv};

/// `{ "limit": N, "window_ms": M, "namespace": "ratelimit", "key_header": "x-client" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    limit: u64,
    #[serde(default = "default_window_ms")]
    window_ms: u64,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "default_key_header")]
    key_header: String,
}

fn default_window_ms() -> u64 {
    60_000
}
fn default_namespace() -> String {
    "ratelimit".to_owned()
}
fn default_key_header() -> String {
    "x-client".to_owned()
}

/// The configured filter.
pub struct RateLimit(Config);

/// The client's IP: `client-address` without its port (and without brackets for IPv6).
fn client_ip(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Filter for RateLimit {
    type Config = Config;
    /// What is left of the window, for the response headers.
    type Context = Option<u64>;
    const PHASES: Phases = Phases::REQUEST_HEADERS.union(Phases::RESPONSE_HEADERS);

    fn new(config: Config) -> Result<Self, String> {
        if config.limit == 0 {
            return Err("limit must be at least 1".to_owned());
        }
        if config.window_ms == 0 {
            return Err("window_ms must be at least 1".to_owned());
        }
        Ok(Self(config))
    }

    fn on_request_headers(&self, req: &mut Request, remaining: &mut Option<u64>) -> Action {
        let c = &self.0;
        let key = req
            .header(&c.key_header)
            .unwrap_or_else(|| client_ip(&req.client_address()).to_owned());
        let window = Duration::from_millis(c.window_ms);
        let n = match kv::increment(&c.namespace, &key, 1, Some(window)) {
            Ok(n) => u64::try_from(n).unwrap_or(0),
            Err(e) => return LocalResponse::text(500, format!("rate-limit: {e}")).into(),
        };
        if n > c.limit {
            return LocalResponse::text(429, "rate limited")
                .header("retry-after", c.window_ms.div_ceil(1000).to_string())
                .header("x-ratelimit-limit", c.limit.to_string())
                .header("x-ratelimit-remaining", "0")
                .into();
        }
        *remaining = Some(c.limit - n);
        Action::Continue
    }

    fn on_response_headers(&self, res: &mut Response, remaining: &mut Option<u64>) -> Action {
        let Some(left) = *remaining else {
            return Action::Continue;
        };
        match res
            .set_header("x-ratelimit-limit", &self.0.limit.to_string())
            .and_then(|()| res.set_header("x-ratelimit-remaining", &left.to_string()))
        {
            Ok(()) => Action::Continue,
            Err(e) => LocalResponse::text(500, format!("rate-limit: {e}")).into(),
        }
    }
}

export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_filter::testing::{Harness, TestRequest, TestResponse};

    use super::*;

    #[test]
    fn the_limit_holds_per_client_and_the_window_resets_it() {
        let mut h = Harness::<RateLimit>::new(json!({ "limit": 2, "window_ms": 1500 })).unwrap();
        for left in ["1", "0"] {
            let mut req = TestRequest::get("/").header("x-client", "a");
            assert_eq!(h.request_headers(&mut req), Action::Continue);
            let mut res = TestResponse::new(200);
            h.response_headers(&mut req, &mut res);
            assert_eq!(res.header_value("x-ratelimit-remaining"), Some(left));
            h.done(&req);
        }
        let mut req = TestRequest::get("/").header("x-client", "a");
        let refused = h.request_headers(&mut req);
        let r = refused.local_response().expect("429");
        assert_eq!((r.status, r.header_value("retry-after")), (429, Some("2")));
        h.done(&req);
        let mut other = TestRequest::get("/").client("10.0.0.9:5555");
        assert_eq!(h.request_headers(&mut other), Action::Continue);
        h.done(&other);
        h.host().advance(Duration::from_millis(1600));
        let mut req = TestRequest::get("/").header("x-client", "a");
        assert_eq!(h.request_headers(&mut req), Action::Continue);
    }

    #[test]
    fn client_ips_lose_their_port() {
        assert_eq!(client_ip("10.1.2.3:443"), "10.1.2.3");
        assert_eq!(client_ip("[::1]:8080"), "::1");
    }
}
