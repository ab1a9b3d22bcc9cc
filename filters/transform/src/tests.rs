use anyhow::Result;
use serde_json::json;
use weir_filter::testing::{Harness, TestRequest, TestResponse};
use weir_filter::{Action, Phases};

use super::*;

fn transform(config: serde_json::Value) -> Result<Harness<Transform>> {
    Ok(Harness::new(config)?)
}

fn config_error(config: serde_json::Value) -> String {
    match Harness::<Transform>::new(config) {
        Ok(_) => "<accepted>".to_owned(),
        Err(e) => e.message,
    }
}

#[test]
fn phases_follow_the_config() -> Result<()> {
    // The filter keeps no per-request state (`Context = ()`), so it is always stateless.
    assert_eq!(transform(json!({}))?.phases(), Phases::STATELESS);
    assert_eq!(
        transform(json!({ "request": { "remove": ["x-a"] } }))?.phases(),
        Phases::REQUEST_HEADERS | Phases::STATELESS
    );
    assert_eq!(
        transform(json!({ "rewrite_path": { "prefix": { "from": "/a/", "to": "/b/" } } }))?
            .phases(),
        Phases::REQUEST_HEADERS | Phases::STATELESS
    );
    assert_eq!(
        transform(json!({ "response": { "set": { "x-a": "1" } } }))?.phases(),
        Phases::RESPONSE_HEADERS | Phases::STATELESS
    );
    assert_eq!(
        transform(json!({ "body": { "request": [{ "find": "a", "replace": "b" }] } }))?.phases(),
        Phases::REQUEST_BODY | Phases::STATELESS
    );
    // Response body rules also take the request head, to ask for an uncompressed response.
    assert_eq!(
        transform(json!({ "body": { "response": [{ "find": "a", "replace": "b" }] } }))?.phases(),
        Phases::REQUEST_HEADERS | Phases::RESPONSE_BODY | Phases::STATELESS
    );
    Ok(())
}

#[test]
fn header_edits_remove_then_set_then_add_both_ways() -> Result<()> {
    let mut h = transform(json!({
        "request": {
            "add": { "x-tag": ["one", "two"], "x-count": 3 },
            "set": { "x-env": "prod", "x-keep": "replaced" },
            "remove": ["X-Secret", "x-keep"]
        },
        "response": {
            "add": { "x-served-by": "weir" },
            "set": { "cache-control": "no-store" },
            "remove": ["server"]
        }
    }))?;
    let mut req = TestRequest::get("/")
        .header("x-tag", "client")
        .header("x-env", "dev")
        .header("x-env", "qa")
        .header("x-secret", "s3cr3t")
        .header("x-keep", "old");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_values("x-tag"), ["client", "one", "two"]);
    assert_eq!(req.header_values("x-env"), ["prod"]);
    assert_eq!(req.header_values("x-count"), ["3"]);
    assert_eq!(req.header_values("x-secret"), Vec::<&str>::new());
    assert_eq!(
        req.header_values("x-keep"),
        ["replaced"],
        "removed, then set"
    );

    let mut res = TestResponse::new(200)
        .header("server", "upstream/1.0")
        .header("cache-control", "max-age=60")
        .header("x-served-by", "origin");
    assert_eq!(h.response_headers(&mut req, &mut res), Action::Continue);
    assert_eq!(res.header_values("server"), Vec::<&str>::new());
    assert_eq!(res.header_values("cache-control"), ["no-store"]);
    assert_eq!(res.header_values("x-served-by"), ["origin", "weir"]);
    h.done(&req);
    assert_eq!(h.live_contexts(), 0);
    Ok(())
}

#[test]
fn templates_substitute_request_variables() -> Result<()> {
    let mut h = transform(json!({
        "request": { "set": { "x-trace": "rid=$request_id route=${route}", "x-client": "$client_ip", "x-price": "$$5 $ 1$" } },
        "response": { "add": { "x-request": "$request_id@$route" } }
    }))?;
    let mut req = TestRequest::get("/")
        .request_id("abc-123")
        .route("api")
        .client("[2001:db8::1]:4444");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-trace"), Some("rid=abc-123 route=api"));
    assert_eq!(req.header_value("x-client"), Some("2001:db8::1"));
    assert_eq!(req.header_value("x-price"), Some("$5 $ 1$"));
    let mut res = TestResponse::new(200);
    assert_eq!(h.response_headers(&mut req, &mut res), Action::Continue);
    assert_eq!(res.header_value("x-request"), Some("abc-123@api"));
    Ok(())
}

#[test]
fn template_parsing() {
    let t = |s: &str| Template::parse(s);
    assert_eq!(t("plain"), Ok(Template(vec![Piece::Text("plain".into())])));
    assert_eq!(
        t("a$route${client_ip}b"),
        Ok(Template(vec![
            Piece::Text("a".into()),
            Piece::Route,
            Piece::ClientIp,
            Piece::Text("b".into())
        ]))
    );
    assert_eq!(t(""), Ok(Template(vec![])));
    assert_eq!(
        t("$host"),
        Err("unknown variable $host in \"$host\" (known: $client_ip, $request_id, $route; write $$ for a literal $)".into())
    );
    assert_eq!(t("${route"), Err("unclosed ${ in \"${route\"".into()));
    assert!(t("a\nb").is_err());
}

#[test]
fn prefix_rewrite_keeps_the_rest_and_the_query() -> Result<()> {
    let mut h =
        transform(json!({ "rewrite_path": { "prefix": { "from": "/old/", "to": "/new/v2/" } } }))?;
    let mut req = TestRequest::get("/old/users/7?x=1");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/new/v2/users/7?x=1");
    let mut req = TestRequest::get("/older/x");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/older/x", "not a match: unchanged");
    assert_eq!(h.counter("transform_path_rewrites_total", &[]), 1);
    Ok(())
}

#[test]
fn regex_rewrite_uses_groups_and_leaves_the_query_alone() -> Result<()> {
    let mut h = transform(json!({ "rewrite_path": { "regex": {
        "pattern": "^/users/(?P<id>[0-9]+)/profile$",
        "replacement": "/v2/profiles/${id}"
    } } }))?;
    let mut req = TestRequest::get("/users/42/profile?fields=name&x=/users/1/profile");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/v2/profiles/42?fields=name&x=/users/1/profile");
    let mut req = TestRequest::get("/users/x/profile");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/users/x/profile");

    // Every match is replaced (anchor the pattern to rewrite once).
    let mut h = transform(
        json!({ "rewrite_path": { "regex": { "pattern": "/v1/", "replacement": "/v2/" } } }),
    )?;
    let mut req = TestRequest::get("/v1/a/v1/");
    h.request_headers(&mut req);
    assert_eq!(req.path(), "/v2/a/v2/");
    Ok(())
}

#[test]
fn a_rewrite_that_breaks_the_path_is_a_500_not_a_bad_request_upstream() -> Result<()> {
    let mut h =
        transform(json!({ "rewrite_path": { "regex": { "pattern": "^/", "replacement": "" } } }))?;
    let mut req = TestRequest::get("/x");
    let action = h.request_headers(&mut req);
    let r = action.local_response().cloned();
    assert_eq!(
        r.map(|r| (r.status, r.body)),
        Some((500, br#"{"error":"transform failed"}"#.to_vec()))
    );
    assert_eq!(
        h.counter("transform_errors_total", &[("phase", "request")]),
        1
    );
    assert!(
        h.logs()
            .iter()
            .any(|l| l.message.contains("does not start with /")),
        "{:?}",
        h.logs()
    );
    Ok(())
}

#[test]
fn bodies_are_held_to_the_end_then_replaced_across_chunk_boundaries() -> Result<()> {
    let mut h = transform(json!({ "body": {
        "request": [ { "find": "color", "replace": "colour" }, { "find": "colour", "replace": "hue" } ],
        "response": [ { "find": "internal.example", "replace": "api.example.com" }, { "find": "secret", "replace": "" } ]
    } }))?;
    let mut req = TestRequest::post("/");
    assert_eq!(h.request_body(&mut req, b"the co", false), Action::Buffer);
    assert_eq!(
        h.request_body(&mut req, b"lor is color", false),
        Action::Buffer
    );
    assert_eq!(req.forwarded_body(), b"");
    assert_eq!(h.request_body(&mut req, b"!", true), Action::Continue);
    assert_eq!(
        req.forwarded_body(),
        b"the hue is hue!",
        "rules apply in order"
    );

    let mut res = TestResponse::new(200);
    let big = "x".repeat(100_000);
    for (i, chunk) in [&big[..], "internal.exam", "ple secret", &big[..]]
        .iter()
        .enumerate()
    {
        let end = i == 3;
        let want = if end {
            Action::Continue
        } else {
            Action::Buffer
        };
        assert_eq!(
            h.response_body(&mut req, &mut res, chunk.as_bytes(), end),
            want
        );
    }
    assert_eq!(
        res.forwarded_body(),
        format!("{big}api.example.com {big}").as_bytes()
    );
    assert_eq!(
        h.counter("transform_body_replacements_total", &[("body", "request")]),
        4
    );
    assert_eq!(
        h.counter("transform_body_replacements_total", &[("body", "response")]),
        2
    );
    Ok(())
}

#[test]
fn response_body_rules_ask_for_identity_and_skip_encoded_bodies() -> Result<()> {
    let mut h = transform(json!({ "body": { "response": [ { "find": "a", "replace": "b" } ] } }))?;
    let mut req = TestRequest::get("/").header("accept-encoding", "gzip, br");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("accept-encoding"), None);

    let mut res = TestResponse::new(200).header("content-encoding", "gzip");
    assert_eq!(
        h.response_body(&mut req, &mut res, b"aaa", false),
        Action::Continue,
        "streams, no holding"
    );
    assert_eq!(
        h.response_body(&mut req, &mut res, b"a", true),
        Action::Continue
    );
    assert_eq!(res.forwarded_body(), b"aaaa");
    assert_eq!(
        h.counter("transform_body_skipped_total", &[("body", "response")]),
        1
    );

    let mut res = TestResponse::new(200).header("content-encoding", "identity");
    assert_eq!(
        h.response_body(&mut req, &mut res, b"aa", true),
        Action::Continue
    );
    assert_eq!(res.forwarded_body(), b"bb");
    Ok(())
}

#[test]
fn replace_all_is_left_to_right_and_non_overlapping() -> Result<()> {
    let rules = compile_rules(
        "t",
        vec![Replace {
            find: "aa".into(),
            replace: "b".into(),
        }],
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(replace_all(b"aaaaa", &rules), (Some(b"bba".to_vec()), 2));
    assert_eq!(replace_all(b"xyz", &rules), (None, 0));
    assert_eq!(replace_all(b"", &rules), (None, 0));
    // Bytes that are not UTF-8 pass through.
    assert_eq!(
        replace_all(b"\xffaa\xfe", &rules),
        (Some(b"\xffb\xfe".to_vec()), 1)
    );
    Ok(())
}

#[test]
fn configs_are_validated_with_clear_messages() {
    assert_eq!(
        config_error(json!({ "request": { "set": { "bad name": "x" } } })),
        "request.set: \"bad name\" is not a valid header name"
    );
    assert_eq!(
        config_error(json!({ "response": { "remove": ["Content-Length"] } })),
        "response.remove: content-length is a framing or hop-by-hop header: the proxy sets it"
    );
    assert_eq!(
        config_error(json!({ "request": { "add": { "x-a": { "nested": 1 } } } })),
        "request.add.x-a: a value must be a string (or a list of strings)"
    );
    assert_eq!(
        config_error(json!({ "request": { "add": { "x-a": [] } } })),
        "request.add.x-a: give at least one value"
    );
    assert_eq!(
        config_error(json!({ "request": { "set": { "x-a": "$who" } } })),
        "request.set.x-a: unknown variable $who in \"$who\" (known: $client_ip, $request_id, $route; write $$ for a literal $)"
    );
    assert_eq!(
        config_error(json!({ "rewrite_path": { "prefix": { "from": "old", "to": "/new" } } })),
        "rewrite_path.prefix.from: \"old\" must start with /"
    );
    assert_eq!(
        config_error(json!({ "rewrite_path": { "prefix": { "from": "/old", "to": "new" } } })),
        "rewrite_path.prefix.to: \"new\" must start with /"
    );
    assert!(
        config_error(
            json!({ "rewrite_path": { "regex": { "pattern": "(", "replacement": "/" } } })
        )
        .starts_with("rewrite_path.regex.pattern: regex parse error")
    );
    assert!(
        config_error(json!({ "rewrite_path": { "suffix": {} } }))
            .starts_with("config: unknown variant `suffix`")
    );
    assert!(
        config_error(json!({ "rewrite_path": { "prefix": { "from": "/a", "to": "/b", "x": 1 } } }))
            .starts_with("config: unknown field `x`")
    );
    assert!(
        config_error(json!({ "requests": {} })).starts_with("config: unknown field `requests`")
    );
    assert_eq!(
        config_error(json!({ "body": { "response": [ { "find": "", "replace": "x" } ] } })),
        "body.response[0].find: must not be empty"
    );
}
