//! `json-transform`: edits the top-level members of a JSON object request body (spec:
//! `examples/README.md`).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Value, json};
use weir_filter::{Action, Body, Filter, LocalResponse, Phases, export_filter};

/// `{ "remove": [...], "rename": { "old": "new" }, "set": { "k": <any JSON> } }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    remove: Vec<String>,
    rename: HashMap<String, String>,
    set: Members,
}

/// A JSON object's members in their order (serde_json's `Map` sorts them without the
/// `preserve_order` feature, which would change every crate's `Map` in the workspace).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Ordered)
    }
}

impl Members {
    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A string and a `Value` always serialize.
            out.push_str(&Value::from(k.as_str()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }
}

/// The configured filter.
pub struct JsonTransform(Config);

impl JsonTransform {
    /// Applies remove, rename, then set.
    fn edit(&self, mut members: Members) -> Members {
        let c = &self.0;
        members.0.retain(|(k, _)| !c.remove.contains(k));
        for (k, _) in &mut members.0 {
            if let Some(new) = c.rename.get(k) {
                k.clone_from(new);
            }
        }
        for (k, v) in &c.set.0 {
            match members.0.iter_mut().find(|(m, _)| m == k) {
                Some((_, old)) => *old = v.clone(),
                None => members.0.push((k.clone(), v.clone())),
            }
        }
        members
    }
}

impl Filter for JsonTransform {
    type Config = Config;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_BODY;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self(config))
    }

    fn on_request_body(&self, body: &mut Body, end: bool, _: &mut ()) -> Action {
        if !end {
            return Action::Buffer;
        }
        let bytes = match body.bytes() {
            Ok(b) => b,
            Err(e) => return LocalResponse::text(500, format!("json-transform: {e}")).into(),
        };
        if bytes.is_empty() {
            return Action::Continue;
        }
        let Ok(members) = serde_json::from_slice::<Members>(&bytes) else {
            return LocalResponse::json(400, &json!({ "error": "body must be a JSON object" }))
                .into();
        };
        match body.set(self.edit(members).to_json()) {
            Ok(()) => Action::Continue,
            Err(e) => LocalResponse::text(500, format!("json-transform: {e}")).into(),
        }
    }
}

export_filter!(JsonTransform);

#[cfg(test)]
mod tests {
    use weir_filter::testing::{Harness, TestRequest};

    use super::*;

    fn run(config: Value, body: &str) -> (Action, Vec<u8>) {
        let mut h = Harness::<JsonTransform>::new(config).unwrap();
        let mut req = TestRequest::post("/");
        let (head, tail) = body.split_at(body.len() / 2);
        assert_eq!(
            h.request_body(&mut req, head.as_bytes(), false),
            Action::Buffer
        );
        let action = h.request_body(&mut req, tail.as_bytes(), true);
        (action, req.forwarded_body().to_vec())
    }

    #[test]
    fn members_are_removed_renamed_and_set_in_order() {
        let config =
            json!({ "remove": ["pw"], "rename": { "n": "name" }, "set": { "v": 2, "new": [1] } });
        let (action, body) = run(
            config,
            r#"{"n":"Jürgen \u00e9 😀","pw":"x","v":1,"z":{"b":1}}"#,
        );
        assert_eq!(action, Action::Continue);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"name":"Jürgen é 😀","v":2,"z":{"b":1},"new":[1]}"#
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_a_400() {
        let (action, _) = run(json!({}), "[1, 2]");
        assert_eq!(action.local_response().map(|r| r.status), Some(400));
    }
}
