//! `header-auth`: an API-key check on one request header (spec: `examples/README.md`).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::json;
use weir_filter::validate::{is_framing_header, is_header_name};
use weir_filter::{Action, Filter, LocalResponse, Phases, Request, export_filter};

/// `{ "header": "x-api-key", "keys": { "<key>": "<client name>" } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: HashMap<String, String>,
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

/// The configured filter.
pub struct HeaderAuth {
    header: String,
    keys: HashMap<String, String>,
}

impl Filter for HeaderAuth {
    type Config = Config;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;

    fn new(config: Config) -> Result<Self, String> {
        if config.keys.is_empty() {
            return Err("keys must hold at least one entry".to_owned());
        }
        if !is_header_name(&config.header) {
            return Err(format!("header {:?} is not a header name", config.header));
        }
        // The key is removed once checked, and the proxy owns framing headers.
        if is_framing_header(&config.header) {
            return Err(format!("header {:?} is one the proxy sets", config.header));
        }
        Ok(Self {
            header: config.header,
            keys: config.keys,
        })
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        let Some(key) = req.header(&self.header) else {
            return LocalResponse::json(401, &json!({ "error": "missing api key" }))
                .header(
                    "www-authenticate",
                    format!("ApiKey header=\"{}\"", self.header),
                )
                .into();
        };
        let Some(client) = self.keys.get(&key) else {
            return LocalResponse::json(403, &json!({ "error": "invalid api key" })).into();
        };
        match req
            .remove_header(&self.header)
            .and_then(|()| req.set_header("x-client", client))
        {
            Ok(()) => Action::Continue,
            Err(e) => LocalResponse::text(500, format!("header-auth: {e}")).into(),
        }
    }
}

export_filter!(HeaderAuth);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_filter::testing::{Harness, TestRequest};

    use super::*;

    fn harness() -> Harness<HeaderAuth> {
        Harness::new(json!({ "keys": { "k-1": "Jürgen" } })).expect("valid config")
    }

    #[test]
    fn a_known_key_names_the_client_and_is_removed() {
        let mut h = harness();
        let mut req = TestRequest::get("/").header("x-api-key", "k-1");
        assert_eq!(h.request_headers(&mut req), Action::Continue);
        assert_eq!(req.header_value("x-client"), Some("Jürgen"));
        assert_eq!(req.header_value("x-api-key"), None);
    }

    #[test]
    fn missing_and_unknown_keys_are_refused() {
        let mut h = harness();
        let a = h.request_headers(&mut TestRequest::get("/"));
        let r = a.local_response().expect("a refusal");
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header_value("www-authenticate"),
            Some("ApiKey header=\"x-api-key\"")
        );
        assert_eq!(r.body, br#"{"error":"missing api key"}"#);
        let a = h.request_headers(&mut TestRequest::get("/").header("x-api-key", "nope"));
        assert_eq!(a.local_response().map(|r| r.status), Some(403));
    }

    #[test]
    fn an_empty_key_table_is_a_config_error() {
        assert!(Harness::<HeaderAuth>::new(json!({ "keys": {} })).is_err());
    }

    #[test]
    fn a_header_the_proxy_sets_is_a_config_error() {
        let err =
            Harness::<HeaderAuth>::new(json!({ "keys": { "a": "b" }, "header": "Connection" }))
                .unwrap_err();
        assert!(err.to_string().contains("is one the proxy sets"), "{err}");
    }
}
