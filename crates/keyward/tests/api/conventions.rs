//! The conventions every endpoint shares: the error envelope and request ids, JSON bodies
//! (400, 413, 415), list paging and cursors, unknown routes, and the operational endpoints.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{manual, Res, TestApp};

/// A request with exactly these headers and body bytes (no JSON encoding by the client).
/// Oversized bodies go on a connection of their own: the server answers 413 without reading
/// them and closes that connection, which a pooled client could otherwise try to reuse.
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Res {
    let oversized = body.as_ref().is_some_and(|b| b.len() > 64 * 1024);
    let client = if oversized {
        reqwest::Client::new()
    } else {
        app.http.clone()
    };
    let mut r = client.request(method, format!("{}{}", app.url, path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.body(b);
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Res {
        status,
        body,
        headers,
    }
}

fn auth(app: &TestApp) -> String {
    format!("Bearer {}", app.admin)
}

/// Asserts the error envelope: the status, `{"error": {"code", "message", "request_id"}}` with
/// nothing else, and a `request_id` equal to the `x-request-id` header.
#[track_caller]
fn assert_error(res: &Res, status: u16, code: &str) {
    assert_eq!(res.status, status, "unexpected status; body: {}", res.body);
    let obj = res
        .body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {}", res.body));
    assert_eq!(obj.len(), 1, "the envelope has only `error`: {}", res.body);
    let err = res.body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {}", res.body));
    let mut fields: Vec<&str> = err.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["code", "message", "request_id"],
        "error fields: {}",
        res.body
    );
    assert_eq!(res.code(), code, "error code; body: {}", res.body);
    assert!(
        !err["message"].as_str().unwrap().is_empty(),
        "a human-readable message"
    );
    let header = res
        .headers
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap();
    assert!(!header.is_empty());
    assert_eq!(
        err["request_id"].as_str().unwrap(),
        header,
        "body request_id equals the header"
    );
}

fn ids(res: &Res) -> Vec<String> {
    res.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- envelope and request ids

async fn an_error_has_the_envelope_and_echoes_the_request_id(app: TestApp) {
    let res = raw(
        &app,
        Method::GET,
        "/v1/keys/key_doesnotexist0000000000",
        &[
            ("authorization", &auth(&app)),
            ("x-request-id", "client-chosen-id-42"),
        ],
        None,
    )
    .await;
    assert_error(&res, 404, "NOT_FOUND");
    assert_eq!(res.headers["x-request-id"], "client-chosen-id-42");
    assert_eq!(res.body["error"]["request_id"], "client-chosen-id-42");
}
both!(an_error_has_the_envelope_and_echoes_the_request_id);

async fn a_request_id_is_generated_when_the_client_sends_none(app: TestApp) {
    let a = app.get("/v1/keys/key_doesnotexist0000000000").await;
    let b = app.get("/v1/keys/key_doesnotexist0000000000").await;
    assert_error(&a, 404, "NOT_FOUND");
    assert_error(&b, 404, "NOT_FOUND");
    assert_ne!(
        a.headers["x-request-id"], b.headers["x-request-id"],
        "each request gets its own id"
    );
}
both!(a_request_id_is_generated_when_the_client_sends_none);

async fn successful_responses_carry_a_request_id_too(app: TestApp) {
    let res = app.get("/v1/keyspaces").await.expect(200);
    assert!(!res.headers["x-request-id"].to_str().unwrap().is_empty());
    let res = raw(
        &app,
        Method::GET,
        "/healthz",
        &[("x-request-id", "probe-1")],
        None,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-request-id"], "probe-1");
    // The data plane too, on a denied verification and on a 400.
    let res = raw(
        &app,
        Method::POST,
        "/v1/verify",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "verify-1"),
        ],
        Some(br#"{"key": "nope"}"#.to_vec()),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-request-id"], "verify-1");
    let res = raw(
        &app,
        Method::POST,
        "/v1/verify",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "verify-2"),
        ],
        Some(br#"{"key": ""}"#.to_vec()),
    )
    .await;
    assert_error(&res, 400, "BAD_REQUEST");
    assert_eq!(res.body["error"]["request_id"], "verify-2");
}
both!(successful_responses_carry_a_request_id_too);

async fn an_unknown_route_is_a_404_envelope(app: TestApp) {
    for path in ["/v1/nothing-here", "/v2/keys", "/v1/keys/abc/def/ghi"] {
        let res = app.get(path).await;
        assert_error(&res, 404, "NOT_FOUND");
    }
    let res = raw(&app, Method::GET, "/no/such/page", &[], None).await;
    assert_error(&res, 404, "NOT_FOUND");
}
both!(an_unknown_route_is_a_404_envelope);

// ---------------------------------------------------------------- JSON bodies: 400

async fn an_unknown_field_is_rejected_not_ignored(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "typo", "owner": "o", "expire_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    assert!(
        res.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expire_at"),
        "the message names the field: {}",
        res.body
    );
    // Nothing was created.
    let list = app
        .get(&format!("/v1/keys?keyspace_id={ks}"))
        .await
        .expect(200);
    assert!(ids(&list).is_empty());

    let res = app
        .post(
            "/v1/keyspaces",
            json!({"name": "x", "prefix": "unknownf", "polcy": {}}),
        )
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    let res = app
        .post(
            "/v1/keyspaces",
            json!({"name": "x", "prefix": "unknownf", "policy": {"max_lifetime": 5}}),
        )
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    let (id, key) = app.key(&ks, json!({})).await;
    let res = app
        .patch(&format!("/v1/keys/{id}"), json!({"enabeld": false}))
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    let res = app
        .post(
            &format!("/v1/keys/{id}/revoke"),
            json!({"reason": "x", "force": true}),
        )
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    let res = app
        .post(&format!("/v1/keys/{id}/rotate"), json!({"grace": 5}))
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    let res = app
        .send(
            Method::POST,
            "/v1/verify",
            None,
            Some(json!({"key": key, "scope": ["a"]})),
        )
        .await;
    assert_error(&res, 400, "BAD_REQUEST");
    // The key is untouched by all of that.
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(k.body["status"], "active");
    assert!(k.body["rotated_to"].is_null());
}
both!(an_unknown_field_is_rejected_not_ignored);

async fn malformed_json_and_missing_fields_are_400(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let json_ct = [
        ("content-type", "application/json"),
        ("authorization", &auth(&app) as &str),
    ];
    for body in [
        &b"{"[..],
        b"{\"name\": ",
        b"not json",
        b"[1, 2",
        b"{\"keyspace_id\": \"x\",}",
        b"\xff\xfe",
    ] {
        let res = raw(
            &app,
            Method::POST,
            "/v1/keys",
            &json_ct,
            Some(body.to_vec()),
        )
        .await;
        assert_error(&res, 400, "BAD_REQUEST");
    }
    // Valid JSON of the wrong shape.
    for body in [
        json!([]),
        json!("key"),
        json!(null),
        json!({"keyspace_id": ks, "name": 5, "owner": "o"}),
    ] {
        let res = app.post("/v1/keys", body).await;
        assert_error(&res, 400, "BAD_REQUEST");
    }
    // Missing required fields.
    assert_error(
        &app.post("/v1/keys", json!({"keyspace_id": ks, "owner": "o"}))
            .await,
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &app.post("/v1/keys", json!({"name": "n", "owner": "o"}))
            .await,
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &app.post("/v1/keyspaces", json!({"name": "n"})).await,
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &app.post("/v1/keyspaces", json!({"prefix": "abc"})).await,
        400,
        "BAD_REQUEST",
    );
    // A POST that needs a body, sent without one.
    let res = raw(
        &app,
        Method::POST,
        "/v1/keys",
        &[("authorization", &auth(&app))],
        None,
    )
    .await;
    assert_error(&res, 400, "BAD_REQUEST");
    // The data plane: malformed JSON and a missing key.
    for body in [
        &b"{\"key\": "[..],
        b"{}",
        b"{\"scopes\": []}",
        b"{\"key\": null}",
        b"{\"key\": 12}",
    ] {
        let res = raw(
            &app,
            Method::POST,
            "/v1/verify",
            &[("content-type", "application/json")],
            Some(body.to_vec()),
        )
        .await;
        assert_error(&res, 400, "BAD_REQUEST");
    }
    assert!(ids(&app
        .get(&format!("/v1/keys?keyspace_id={ks}"))
        .await
        .expect(200))
    .is_empty());
}
both!(malformed_json_and_missing_fields_are_400);

// ---------------------------------------------------------------- 415

async fn a_body_without_json_content_type_is_415_everywhere(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    let tok = auth(&app);
    let create =
        serde_json::to_vec(&json!({"keyspace_id": ks, "name": "n", "owner": "o"})).unwrap();
    let cases: Vec<(Method, String, Vec<u8>)> = vec![
        (Method::POST, "/v1/keys".into(), create.clone()),
        (
            Method::POST,
            "/v1/keyspaces".into(),
            br#"{"name": "n", "prefix": "ctype"}"#.to_vec(),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{id}"),
            br#"{"name": "renamed"}"#.to_vec(),
        ),
        (
            Method::PATCH,
            format!("/v1/keyspaces/{ks}"),
            br#"{"name": "renamed"}"#.to_vec(),
        ),
        (
            Method::POST,
            format!("/v1/keys/{id}/revoke"),
            br#"{"reason": "x"}"#.to_vec(),
        ),
        (
            Method::POST,
            format!("/v1/keys/{id}/rotate"),
            br#"{"grace_secs": 10}"#.to_vec(),
        ),
        (
            Method::POST,
            "/v1/keys/revoke".into(),
            br#"{"owner": "team-a", "reason": "x"}"#.to_vec(),
        ),
    ];
    for ctype in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        for (m, path, body) in &cases {
            let mut headers = vec![("authorization", tok.as_str())];
            if let Some(c) = ctype {
                headers.push(("content-type", c));
            }
            let res = raw(&app, m.clone(), path, &headers, Some(body.clone())).await;
            assert_error(&res, 415, "UNSUPPORTED_MEDIA_TYPE");
        }
        // The data plane as well, even with a perfectly good key in the body.
        let body = serde_json::to_vec(&json!({"key": key})).unwrap();
        let headers: Vec<(&str, &str)> =
            ctype.map(|c| vec![("content-type", c)]).unwrap_or_default();
        let res = raw(&app, Method::POST, "/v1/verify", &headers, Some(body)).await;
        assert_error(&res, 415, "UNSUPPORTED_MEDIA_TYPE");
    }
    // None of those changed anything.
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(k.body["name"], "test key");
    assert_eq!(k.body["status"], "active");
    assert_eq!(
        ids(&app
            .get(&format!("/v1/keys?keyspace_id={ks}"))
            .await
            .expect(200))
        .len(),
        1
    );
    // JSON with parameters is JSON.
    let res = raw(
        &app,
        Method::POST,
        "/v1/verify",
        &[("content-type", "application/json; charset=utf-8")],
        Some(serde_json::to_vec(&json!({"key": key})).unwrap()),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["code"], "VALID");
}
both!(a_body_without_json_content_type_is_415_everywhere);

async fn rotate_accepts_a_post_with_no_body_at_all(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({})).await;
    let res = raw(
        &app,
        Method::POST,
        &format!("/v1/keys/{id}/rotate"),
        &[("authorization", &auth(&app))],
        None,
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(res.body["rotated_from"], id.as_str());
    assert!(res.body["key"].as_str().is_some());
    // An empty body with a JSON content type is also "no body".
    let (id2, _) = app.key(&ks, json!({})).await;
    let res = raw(
        &app,
        Method::POST,
        &format!("/v1/keys/{id2}/rotate"),
        &[
            ("authorization", &auth(&app)),
            ("content-type", "application/json"),
        ],
        None,
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
}
both!(rotate_accepts_a_post_with_no_body_at_all);

// ---------------------------------------------------------------- 413

async fn a_body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_413(app: TestApp) {
    const LIMIT: usize = 64 * 1024;
    // `{"key":"<pad>"}` is the pad plus 10 bytes; a key that long is simply not found.
    let body = |total: usize| format!(r#"{{"key":"{}"}}"#, "a".repeat(total - 10)).into_bytes();
    assert_eq!(body(LIMIT).len(), LIMIT);
    let ct = [("content-type", "application/json")];
    let res = raw(&app, Method::POST, "/v1/verify", &ct, Some(body(LIMIT))).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["code"], "NOT_FOUND");
    assert_eq!(res.body["valid"], false);
    let res = raw(&app, Method::POST, "/v1/verify", &ct, Some(body(LIMIT + 1))).await;
    assert_error(&res, 413, "PAYLOAD_TOO_LARGE");
    let res = raw(&app, Method::POST, "/v1/verify", &ct, Some(body(LIMIT * 4))).await;
    assert_error(&res, 413, "PAYLOAD_TOO_LARGE");

    // On the management API, 64 KiB is read and judged on its content (meta too big: 400),
    // and one byte more is 413 whatever the content.
    let ks = app.keyspace(json!({})).await;
    let tok = auth(&app);
    let key_body = |total: usize| {
        let head = format!(r#"{{"keyspace_id":"{ks}","name":"big","owner":"o","meta":{{"pad":""#);
        let tail = r#""}}"#;
        let pad = total - head.len() - tail.len();
        format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
    };
    assert_eq!(key_body(LIMIT).len(), LIMIT);
    let headers = [
        ("content-type", "application/json"),
        ("authorization", tok.as_str()),
    ];
    let res = raw(
        &app,
        Method::POST,
        "/v1/keys",
        &headers,
        Some(key_body(LIMIT)),
    )
    .await;
    assert_error(&res, 400, "BAD_REQUEST");
    let res = raw(
        &app,
        Method::POST,
        "/v1/keys",
        &headers,
        Some(key_body(LIMIT + 1)),
    )
    .await;
    assert_error(&res, 413, "PAYLOAD_TOO_LARGE");
    assert!(ids(&app
        .get(&format!("/v1/keys?keyspace_id={ks}"))
        .await
        .expect(200))
    .is_empty());
}
both!(a_body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_413);

/// Sends a chunked request (no Content-Length) over a plain socket; returns the status line.
fn chunked_post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for chunk in body.chunks(8192) {
        // The server may answer and close before the whole body is sent.
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

async fn a_chunked_body_over_64_kib_is_413_too(app: TestApp) {
    let addr = app.addr;
    let small = format!(r#"{{"key":"{}"}}"#, "a".repeat(64 * 1024 - 10)).into_bytes();
    let big = format!(r#"{{"key":"{}"}}"#, "a".repeat(64 * 1024)).into_bytes();
    let (ok, too_big) = tokio::task::spawn_blocking(move || {
        (
            chunked_post(addr, "/v1/verify", &small),
            chunked_post(addr, "/v1/verify", &big),
        )
    })
    .await
    .unwrap();
    assert!(
        ok.starts_with("HTTP/1.1 200"),
        "exactly 64 KiB, chunked: {ok}"
    );
    assert!(
        too_big.starts_with("HTTP/1.1 413"),
        "over 64 KiB, chunked: {too_big}"
    );
}
both!(a_chunked_body_over_64_kib_is_413_too);

// ---------------------------------------------------------------- lists

async fn limit_outside_1_to_500_or_not_a_number_is_400(app: TestApp) {
    for path in ["/v1/keys", "/v1/keyspaces", "/v1/audit", "/v1/tokens"] {
        for bad in ["0", "501", "x", "-1", "1.5", ""] {
            let res = app.get(&format!("{path}?limit={bad}")).await;
            assert_error(&res, 400, "BAD_REQUEST");
        }
        for good in ["1", "500"] {
            app.get(&format!("{path}?limit={good}")).await.expect(200);
        }
    }
}
both!(limit_outside_1_to_500_or_not_a_number_is_400);

async fn lists_answer_items_and_next_cursor(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    app.key(&ks, json!({})).await;
    for path in ["/v1/keys", "/v1/keyspaces", "/v1/audit", "/v1/tokens"] {
        let res = app.get(path).await.expect(200);
        let obj = res.body.as_object().unwrap();
        assert!(obj["items"].is_array(), "{path}: {}", res.body);
        assert!(!obj["items"].as_array().unwrap().is_empty(), "{path}");
        assert!(
            obj.contains_key("next_cursor"),
            "{path}: next_cursor is present"
        );
        assert!(
            obj["next_cursor"].is_null(),
            "{path}: a short list has no next page"
        );
    }
}
both!(lists_answer_items_and_next_cursor);

async fn a_cursor_the_server_cannot_decode_is_400(app: TestApp) {
    for path in ["/v1/keys", "/v1/keyspaces", "/v1/audit", "/v1/tokens"] {
        for bad in ["garbage", "zz", "abc", "00", "6b65795f31", "%FF%FE"] {
            let res = app.get(&format!("{path}?cursor={bad}")).await;
            assert_error(&res, 400, "BAD_REQUEST");
        }
    }
}
both!(a_cursor_the_server_cannot_decode_is_400);

async fn a_cursor_is_only_valid_for_the_endpoint_and_filters_that_produced_it(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    for _ in 0..3 {
        app.key(&ks, json!({"owner": "alice"})).await;
        app.key(&ks, json!({"owner": "bob"})).await;
    }
    let first = app.get("/v1/keys?owner=alice&limit=1").await.expect(200);
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    // The same filters take it (with any limit).
    let next = app
        .get(&format!("/v1/keys?owner=alice&limit=1&cursor={cursor}"))
        .await
        .expect(200);
    assert_eq!(ids(&next).len(), 1);
    app.get(&format!("/v1/keys?owner=alice&limit=5&cursor={cursor}"))
        .await
        .expect(200);
    // Other filters, no filters, or another list do not.
    for path in [
        format!("/v1/keys?owner=bob&limit=1&cursor={cursor}"),
        format!("/v1/keys?limit=1&cursor={cursor}"),
        format!("/v1/keys?owner=alice&keyspace_id={ks}&limit=1&cursor={cursor}"),
        format!("/v1/keys?owner=alice&status=active&limit=1&cursor={cursor}"),
        format!("/v1/keyspaces?cursor={cursor}"),
        format!("/v1/tokens?cursor={cursor}"),
        format!("/v1/audit?cursor={cursor}"),
    ] {
        let res = app.get(&path).await;
        assert_error(&res, 400, "BAD_REQUEST");
    }
    // An audit cursor is not a key cursor either.
    let audit = app.get("/v1/audit?limit=1").await.expect(200);
    let ac = audit.body["next_cursor"]
        .as_str()
        .expect("a next audit page")
        .to_string();
    app.get(&format!("/v1/audit?limit=1&cursor={ac}"))
        .await
        .expect(200);
    assert_error(
        &app.get(&format!("/v1/keys?cursor={ac}")).await,
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &app.get(&format!("/v1/audit?action=key.create&cursor={ac}"))
            .await,
        400,
        "BAD_REQUEST",
    );
}
both!(a_cursor_is_only_valid_for_the_endpoint_and_filters_that_produced_it);

async fn cursor_pagination_returns_every_key_once_newest_first(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let mut created = Vec::new();
    for i in 0..7 {
        let (id, _) = app.key(&ks, json!({"name": format!("key {i}")})).await;
        created.push(id);
        app.advance(1);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/v1/keys?keyspace_id={ks}&limit=3"),
            Some(c) => format!("/v1/keys?keyspace_id={ks}&limit=3&cursor={c}"),
        };
        let res = app.get(&path).await.expect(200);
        let page = ids(&res);
        assert!(page.len() <= 3);
        seen.extend(page);
        pages += 1;
        assert!(pages <= 5, "pagination does not end");
        match res.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 keys at 3 a page");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates: {seen:?}");
    created.reverse();
    assert_eq!(seen, created, "all keys, newest first");
}

// Keys created at distinct (manual) times, so "newest first" has one right answer.
both!(
    cursor_pagination_returns_every_key_once_newest_first,
    manual
);

async fn keys_created_in_the_same_millisecond_page_by_id_without_loss(app: TestApp) {
    // On the manual clock every key has the same created_at: the id breaks the tie.
    let ks = app.keyspace(json!({})).await;
    let mut created = HashSet::new();
    for _ in 0..5 {
        created.insert(app.key(&ks, json!({})).await.0);
    }
    let mut seen = Vec::new();
    let mut path = format!("/v1/keys?keyspace_id={ks}&limit=2");
    loop {
        let res = app.get(&path).await.expect(200);
        seen.extend(ids(&res));
        match res.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/keys?keyspace_id={ks}&limit=2&cursor={c}"),
            None => break,
        }
        assert!(seen.len() <= 5);
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "ties ordered by id, descending");
}

both!(
    keys_created_in_the_same_millisecond_page_by_id_without_loss,
    manual
);

/// Follows `next_cursor` from `first` (a path with a query) to the end; returns the item ids.
async fn all_pages(app: &TestApp, first: &str, field: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = first.to_string();
    for _ in 0..50 {
        let res = app.get(&path).await.expect(200);
        out.extend(
            res.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i[field].clone()),
        );
        match res.body["next_cursor"].as_str() {
            Some(c) => path = format!("{first}&cursor={c}"),
            None => return out,
        }
    }
    panic!("pagination of {first} does not end");
}

async fn keyspaces_tokens_and_audit_events_page_newest_first(app: TestApp) {
    let mut keyspaces = Vec::new();
    let mut tokens = vec![app.get("/v1/tokens").await.expect(200).body["items"][0]["id"].clone()];
    for i in 0..5 {
        app.advance(1);
        let ks = app
            .post(
                "/v1/keyspaces",
                json!({"name": format!("ks {i}"), "prefix": format!("page{i}")}),
            )
            .await
            .expect(201);
        keyspaces.push(json!(ks.id()));
        let tok = app
            .post(
                "/v1/tokens",
                json!({"name": format!("t {i}"), "role": "viewer"}),
            )
            .await
            .expect(201);
        tokens.push(json!(tok.id()));
    }
    keyspaces.reverse();
    tokens.reverse();
    assert_eq!(
        all_pages(&app, "/v1/keyspaces?limit=2", "id").await,
        keyspaces
    );
    assert_eq!(all_pages(&app, "/v1/tokens?limit=2", "id").await, tokens);
    // Audit events by seq, descending, from the last to 1 without gaps.
    let seqs = all_pages(&app, "/v1/audit?limit=3", "seq").await;
    let want: Vec<Value> = (1..=11).rev().map(|n| json!(n)).collect();
    assert_eq!(seqs, want);
    let creates = all_pages(
        &app,
        "/v1/audit?action=keyspace.create&limit=2",
        "target_id",
    )
    .await;
    assert_eq!(creates, keyspaces);
}
both!(keyspaces_tokens_and_audit_events_page_newest_first, manual);

async fn an_unknown_query_parameter_is_400(app: TestApp) {
    let res = app.get("/v1/keys?ownr=alice").await;
    assert_error(&res, 400, "BAD_REQUEST");
    let res = app.get("/v1/keys?owner=a&owner=b").await;
    assert_error(&res, 400, "BAD_REQUEST");
}
both!(an_unknown_query_parameter_is_400);

// ---------------------------------------------------------------- operational endpoints

async fn operational_endpoints_need_no_token(app: TestApp) {
    let res = raw(&app, Method::GET, "/healthz", &[], None).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = raw(&app, Method::GET, "/readyz", &[], None).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = raw(&app, Method::GET, "/v1/openapi.json", &[], None).await;
    assert_eq!(res.status, 200);
    assert!(
        res.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1: {}",
        res.body["openapi"]
    );
    let paths = res.body["paths"].as_object().expect("paths");
    for p in [
        "/v1/keyspaces",
        "/v1/keyspaces/{id}",
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/keys/{id}/revoke",
        "/v1/keys/revoke",
        "/v1/keys/{id}/rotate",
        "/v1/verify",
        "/v1/forward-auth",
        "/v1/audit",
        "/v1/tokens",
    ] {
        assert!(paths.contains_key(p), "the OpenAPI document lists {p}");
    }
    // A management endpoint does need one.
    let res = raw(&app, Method::GET, "/v1/keys", &[], None).await;
    assert_error(&res, 401, "UNAUTHENTICATED");
}
both!(operational_endpoints_need_no_token);

async fn metrics_count_verifications_by_code(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code("not-a-key").await, "NOT_FOUND");
    let res = raw(&app, Method::GET, "/metrics", &[], None).await;
    assert_eq!(res.status, 200);
    let ctype = res.headers["content-type"].to_str().unwrap();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = res.body.as_str().expect("plain text");
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert_eq!(value("keyward_verifications_total{code=\"VALID\"} "), 2.0);
    assert_eq!(
        value("keyward_verifications_total{code=\"NOT_FOUND\"} "),
        1.0
    );
    assert_eq!(value("keyward_verify_duration_seconds_count "), 3.0);
    assert_eq!(
        value("keyward_verify_duration_seconds_bucket{le=\"+Inf\"} "),
        3.0
    );
    assert!(text.contains("# TYPE keyward_verify_duration_seconds histogram"));
    assert!(text.contains("# TYPE keyward_verifications_total counter"));
    assert!(!text.contains(&key), "no plaintext key in metrics");
}
both!(metrics_count_verifications_by_code);

async fn times_are_rfc3339_utc_with_z_and_ids_have_type_prefixes(app: TestApp) {
    let ks = app
        .post("/v1/keyspaces", json!({"name": "shape", "prefix": "shape"}))
        .await
        .expect(201);
    assert!(ks.id().starts_with("ks_"));
    let (id, _) = app.key(&ks.id(), json!({})).await;
    assert!(id.starts_with("key_"));
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    for f in ["created_at", "updated_at", "expires_at"] {
        let t = k.body[f].as_str().unwrap();
        assert!(t.ends_with('Z'), "{f}: {t}");
        keyward_core::time::Timestamp::parse_rfc3339(t).unwrap();
    }
    let ev = app
        .get(&format!("/v1/audit?target_id={id}"))
        .await
        .expect(200);
    assert!(ev.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("evt_"));
    let tokens = app.get("/v1/tokens").await.expect(200);
    assert!(tokens.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("tok_"));
}
both!(times_are_rfc3339_utc_with_z_and_ids_have_type_prefixes);

/// Slow-client protection with a short timeout (the default is 30 s).
fn quick_header_timeout() -> crate::helpers::Options {
    let mut o = crate::helpers::Options::default();
    o.config.header_read_timeout = std::time::Duration::from_millis(300);
    o
}

async fn a_client_that_never_finishes_its_request_head_is_disconnected(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"POST /v1/verify HTTP/1.1\r\nHost: keyward\r\nContent-Type: app")
        .await
        .unwrap();
    // The server closes the connection (EOF or reset) instead of waiting for the rest.
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("the server closed the connection");
    assert!(
        matches!(read, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408"),
        "{read:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    // A request that arrives in time is served, on a new connection and on an idle one.
    let res = app.get("/healthz").await;
    assert_eq!(res.status, 200);
    let mut quick = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    quick
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n")
        .await
        .unwrap();
    let n = quick.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}
both!(
    a_client_that_never_finishes_its_request_head_is_disconnected,
    quick_header_timeout
);

async fn lists_sent_come_back_in_their_order_less_repeats(app: TestApp) {
    let a = app.keyspace(json!({})).await;
    let b = app.keyspace(json!({})).await;
    // Sent out of sorted order (b was created after a), with a repeat.
    let token = app
        .post(
            "/v1/tokens",
            json!({"name": "t", "role": "viewer", "keyspace_ids": [b, a, b]}),
        )
        .await
        .expect(201);
    assert_eq!(token.body["keyspace_ids"], json!([b, a]));
    let id = token.id();
    let listed = app.get("/v1/tokens").await.expect(200);
    let shown = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap();
    assert_eq!(shown["keyspace_ids"], json!([b, a]));

    let hook = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/h", "events": ["key.revoked", "key.created", "key.revoked"]}),
        )
        .await
        .expect(201);
    assert_eq!(hook.body["events"], json!(["key.revoked", "key.created"]));
    let listed = app.get("/v1/webhooks").await.expect(200);
    assert_eq!(
        listed.body["items"][0]["events"],
        json!(["key.revoked", "key.created"])
    );
}
both!(lists_sent_come_back_in_their_order_less_repeats);

/// A NUL character (which PostgreSQL refuses in text) never reaches the store: a query
/// parameter holding one is a 400, and an id holding one names no object (404), on both
/// backends alike. Found by the property-based API run as a 500 on PostgreSQL.
async fn a_nul_character_is_refused_before_the_store(app: TestApp) {
    for path in [
        "/v1/keys?owner=a%00b",
        "/v1/keys?q=%00",
        "/v1/audit?target_id=key_%00",
        "/v1/anomalies?key_id=%00",
    ] {
        let r = app.get(path).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "BAD_REQUEST"),
            "{path}: {}",
            r.body
        );
    }
    for (path, body) in [
        (
            "/v1/tokens",
            json!({"name": "t", "role": "viewer", "keyspace_ids": ["ks_\u{0}"]}),
        ),
        (
            "/v1/keys",
            json!({"keyspace_id": "\u{0}", "name": "k", "owner": "o"}),
        ),
        (
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/h", "events": ["key.created"], "keyspace_id": "ks_a\u{0}"}),
        ),
        (
            "/v1/keys/revoke",
            json!({"owner": "o", "keyspace_id": "\u{0}", "reason": "r"}),
        ),
    ] {
        let r = app.post(path, body).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "NOT_FOUND"),
            "{path}: {}",
            r.body
        );
    }
    assert_eq!(app.get("/v1/keys/key_%00").await.status, 404);
}
both!(a_nul_character_is_refused_before_the_store);

/// The three contract gaps property-based testing found: an integer written with a zero
/// fraction is an integer, `null` is not a value of an optional integer, and an empty
/// `cursor=` is the first page.
async fn integers_may_carry_a_zero_fraction_null_is_no_cost_and_an_empty_cursor_is_the_first_page(
    app: TestApp,
) {
    let ks = app.keyspace(json!({})).await;
    let created = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "o", "remaining": 793.0,
                   "ratelimit": {"limit": 1e2, "window_secs": 60.0}}),
        )
        .await
        .expect(201);
    assert_eq!(created.body["remaining"], 793, "{}", created.body);
    assert_eq!(created.body["ratelimit"]["limit"], 100);
    let key = created.body["key"].as_str().unwrap().to_string();
    let v = app.verify(json!({"key": key, "cost": 2.0})).await;
    assert_eq!(v["code"], "VALID", "{v}");
    assert_eq!(v["remaining"], 791, "{v}");
    // A fraction is still refused, and so is `null` for cost, scopes or ip.
    for body in [
        json!({"key": key, "cost": 1.5}),
        json!({"key": key, "cost": null}),
        json!({"key": key, "scopes": null}),
        json!({"key": key, "ip": null}),
    ] {
        let res = raw(
            &app,
            Method::POST,
            "/v1/verify",
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await;
        assert_error(&res, 400, "BAD_REQUEST");
    }
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["remaining"], 790, "the refused bodies spent nothing: {v}");
    // A body is an object: an array is not read field by field.
    let positional = raw(
        &app,
        Method::POST,
        "/v1/keys",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth(&app)),
        ],
        Some(json!([ks, "n", "o"]).to_string().into_bytes()),
    )
    .await;
    assert_error(&positional, 400, "BAD_REQUEST");
    for path in ["/v1/keys", "/v1/keyspaces", "/v1/audit", "/v1/tokens"] {
        let first = app.get(&format!("{path}?limit=1")).await.expect(200);
        let empty = app
            .get(&format!("{path}?limit=1&cursor="))
            .await
            .expect(200);
        // The same objects (by id: a usage flush may change a key's counters in between).
        let ids = |v: &Value| -> Vec<Value> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].clone())
                .collect()
        };
        assert_eq!(ids(&empty.body), ids(&first.body), "{path}");
    }
}
both!(integers_may_carry_a_zero_fraction_null_is_no_cost_and_an_empty_cursor_is_the_first_page);

fn quick_body_timeout() -> crate::helpers::Options {
    let mut o = crate::helpers::Options::default();
    o.config.body_read_timeout = std::time::Duration::from_millis(400);
    o
}

/// A body that trickles in a byte at a time gets 408 once its deadline passes, however
/// steadily the bytes come, and the connection closes; a body sent in time is served.
async fn a_body_that_trickles_in_past_its_deadline_is_408_and_the_connection_closes(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/verify HTTP/1.1\r\nHost: keyward\r\nContent-Type: application/json\r\n\
          Content-Length: 60000\r\nx-request-id: slow-1\r\n\r\n{",
    )
    .await
    .unwrap();
    let trickle = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let mut answer = Vec::new();
    tokio::select! {
        _ = trickle => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => panic!("no answer in 10 s"),
    }
    // The trickle stopped: the server closed its side. Read what it answered.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("\"REQUEST_TIMEOUT\""), "{text}");
    assert!(text.contains("slow-1"), "the request's id: {text}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(350));
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    assert_eq!(app.verify_code(&key).await, "VALID");
}
both!(
    a_body_that_trickles_in_past_its_deadline_is_408_and_the_connection_closes,
    quick_body_timeout
);

fn four_connections() -> crate::helpers::Options {
    let mut o = crate::helpers::Options::default();
    o.config.max_connections = Some(4);
    o
}

/// Past `max_connections` a new connection is accepted and closed at once (not queued), and
/// counted; once one closes, a new one is served.
async fn connections_past_the_cap_are_closed_at_once(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn healthz(conn: &mut tokio::net::TcpStream) -> bool {
        if conn
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 512];
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await,
            Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200")
        )
    }
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let mut c = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        if healthz(&mut c).await {
            open.push(c);
        } else {
            refused += 1;
        }
    }
    // The test client's own pooled connections may hold some of the four.
    assert!(open.len() <= 4, "{} served", open.len());
    assert!(refused >= 2, "{refused} refused");
    drop(open);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut again = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    assert!(healthz(&mut again).await, "served once connections closed");
    let metrics = app.http.get(format!("{}/metrics", app.url)).send().await;
    let text = metrics.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("keyward_connections_refused_total "))
        .expect("the refused-connections counter");
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= refused, "{line}");
}
both!(
    connections_past_the_cap_are_closed_at_once,
    four_connections
);

/// A keep-alive connection left idle longer than the header timeout is closed.
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = std::time::Instant::now();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("the server closed the idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(idle.elapsed() >= std::time::Duration::from_millis(250));
}
both!(
    an_idle_keep_alive_connection_is_closed_after_the_header_timeout,
    quick_header_timeout
);

/// No API answer may be kept by a cache on the way: some carry a key, token or secret shown once.
async fn api_answers_are_never_stored_by_caches(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let created = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "o"}),
        )
        .await
        .expect(201);
    assert_eq!(created.headers["cache-control"], "no-store");
    let listed = app.get("/v1/keys").await.expect(200);
    assert_eq!(listed.headers["cache-control"], "no-store");
    let token = app
        .post("/v1/tokens", json!({"name": "t", "role": "viewer"}))
        .await
        .expect(201);
    assert_eq!(token.headers["cache-control"], "no-store");
}
both!(api_answers_are_never_stored_by_caches);

/// Numbers in `meta` are kept exactly: the audit chain, which hashes each event's canonical
/// JSON when it is written and again when it is verified from the stored text, still verifies
/// for floats whose shortest form is hard to parse back.
async fn floats_in_meta_keep_the_audit_chain_verifiable(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let meta: Value = serde_json::from_str(
        r#"{"a": -2.0137184424803742e-23, "b": 8.844843339809529e-231, "c": 9.461820892659202e-57, "d": 0.1, "e": 1e300}"#,
    )
    .unwrap();
    let (id, _) = app.key(&ks, json!({"meta": meta})).await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(k.body["meta"], meta);
    let v = app.get("/v1/audit/verify").await.expect(200);
    assert_eq!(v.body["ok"], true, "{}", v.body);
}
both!(floats_in_meta_keep_the_audit_chain_verifiable);
