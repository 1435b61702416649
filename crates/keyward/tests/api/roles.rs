//! Every cell of the role matrix, keyspace limits, and failed-authentication throttling.

use keyward_server::Config;
use serde_json::json;

use crate::both;
use crate::helpers::{spawn_with, Backend, Options, TestApp};

const ROLES: [&str; 5] = ["admin", "manager", "viewer", "auditor", "verifier"];

fn allowed(row: &str, role: &str) -> bool {
    match row {
        "read" => matches!(role, "admin" | "manager" | "viewer" | "auditor"),
        "write_keys" => matches!(role, "admin" | "manager"),
        "write_keyspaces" | "tokens" => role == "admin",
        "audit" => matches!(role, "admin" | "auditor"),
        _ => unreachable!(),
    }
}

#[track_caller]
fn check(row: &str, role: &str, status: u16, ok: u16, what: &str) {
    let want = if allowed(row, role) { ok } else { 403 };
    assert_eq!(status, want, "{role} / {what}");
}

async fn every_cell_of_the_role_matrix_is_enforced(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    for role in ROLES {
        let t = app.token(role, None).await;
        let (id, _) = app.key(&ks, json!({})).await;

        check(
            "read",
            role,
            app.get_as(&t, "/v1/keyspaces").await.status,
            200,
            "list keyspaces",
        );
        check(
            "read",
            role,
            app.get_as(&t, &format!("/v1/keyspaces/{ks}")).await.status,
            200,
            "get keyspace",
        );
        check(
            "read",
            role,
            app.get_as(&t, "/v1/keys").await.status,
            200,
            "list keys",
        );
        check(
            "read",
            role,
            app.get_as(&t, &format!("/v1/keys/{id}")).await.status,
            200,
            "get key",
        );

        let r = app
            .post_as(
                &t,
                "/v1/keys",
                json!({"keyspace_id": ks, "name": "x", "owner": "o"}),
            )
            .await;
        check("write_keys", role, r.status, 201, "create key");
        check(
            "write_keys",
            role,
            app.patch_as(&t, &format!("/v1/keys/{id}"), json!({"name": "y"}))
                .await
                .status,
            200,
            "patch key",
        );
        check(
            "write_keys",
            role,
            app.post_as(&t, &format!("/v1/keys/{id}/rotate"), json!({}))
                .await
                .status,
            201,
            "rotate key",
        );
        check(
            "write_keys",
            role,
            app.post_as(&t, &format!("/v1/keys/{id}/revoke"), json!({"reason": "r"}))
                .await
                .status,
            200,
            "revoke key",
        );
        check(
            "write_keys",
            role,
            app.post_as(
                &t,
                "/v1/keys/revoke",
                json!({"owner": "nobody", "reason": "r"}),
            )
            .await
            .status,
            200,
            "bulk revoke",
        );

        let prefix = format!("r{}", role);
        check(
            "write_keyspaces",
            role,
            app.post_as(&t, "/v1/keyspaces", json!({"name": "n", "prefix": prefix}))
                .await
                .status,
            201,
            "create keyspace",
        );
        check(
            "write_keyspaces",
            role,
            app.patch_as(&t, &format!("/v1/keyspaces/{ks}"), json!({"name": "n2"}))
                .await
                .status,
            200,
            "patch keyspace",
        );

        check(
            "audit",
            role,
            app.get_as(&t, "/v1/audit").await.status,
            200,
            "list audit",
        );
        check(
            "audit",
            role,
            app.get_as(&t, "/v1/audit/verify").await.status,
            200,
            "verify audit",
        );
        check(
            "audit",
            role,
            app.get_as(&t, "/v1/audit/export").await.status,
            200,
            "export audit",
        );

        check(
            "tokens",
            role,
            app.get_as(&t, "/v1/tokens").await.status,
            200,
            "list tokens",
        );
        check(
            "tokens",
            role,
            app.post_as(&t, "/v1/tokens", json!({"name": "n", "role": "viewer"}))
                .await
                .status,
            201,
            "create token",
        );
        let victim = app
            .post("/v1/tokens", json!({"name": "victim", "role": "viewer"}))
            .await
            .expect(201)
            .id();
        check(
            "tokens",
            role,
            app.post_as(
                &t,
                &format!("/v1/tokens/{victim}/revoke"),
                json!({"reason": "r"}),
            )
            .await
            .status,
            200,
            "revoke token",
        );
    }
}
both!(every_cell_of_the_role_matrix_is_enforced);

async fn verification_needs_a_verifier_or_admin_token_when_configured(backend: Backend) {
    let opts = Options {
        config: Config {
            verify_requires_token: true,
            usage_flush: std::time::Duration::from_millis(50),
            ..crate::helpers::Options::default().config
        },
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, opts).await else {
        return;
    };
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    let none = app
        .send(
            reqwest::Method::POST,
            "/v1/verify",
            None,
            Some(json!({"key": key})),
        )
        .await;
    assert_eq!((none.status, none.code()), (401, "UNAUTHENTICATED"));
    for role in ROLES {
        let t = app.token(role, None).await;
        let r = app.post_as(&t, "/v1/verify", json!({"key": key})).await;
        let want = if matches!(role, "admin" | "verifier") {
            200
        } else {
            403
        };
        assert_eq!(r.status, want, "{role}");
        if want == 200 {
            assert_eq!(r.body["code"], "VALID");
        }
        let fa = app
            .http
            .get(format!("{}/v1/forward-auth", app.url))
            .header("x-api-key", &key)
            .header("x-keyward-token", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(fa.status().as_u16(), want, "forward-auth as {role}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_needs_a_verifier_or_admin_token_when_configured_on_sqlite() {
    verification_needs_a_verifier_or_admin_token_when_configured(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_needs_a_verifier_or_admin_token_when_configured_on_postgres() {
    verification_needs_a_verifier_or_admin_token_when_configured(Backend::Postgres).await;
}

async fn a_token_limited_to_keyspaces_sees_nothing_outside_them(app: TestApp) {
    let a = app.keyspace(json!({})).await;
    let b = app.keyspace(json!({})).await;
    let (ka, _) = app.key(&a, json!({})).await;
    let (kb, _) = app.key(&b, json!({"owner": "shared"})).await;
    let t = app.token("admin", Some(vec![&a])).await;

    assert_eq!(app.get_as(&t, &format!("/v1/keys/{ka}")).await.status, 200);
    let r = app.get_as(&t, &format!("/v1/keys/{kb}")).await;
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
    assert_eq!(
        app.get_as(&t, &format!("/v1/keyspaces/{b}")).await.status,
        404
    );
    assert_eq!(
        app.post_as(&t, &format!("/v1/keys/{kb}/revoke"), json!({"reason": "x"}))
            .await
            .status,
        404
    );
    assert_eq!(
        app.post_as(
            &t,
            "/v1/keys",
            json!({"keyspace_id": b, "name": "x", "owner": "o"})
        )
        .await
        .status,
        404
    );
    let listed = app.get_as(&t, "/v1/keys").await.expect(200);
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![ka.as_str()]);
    assert_eq!(
        app.get_as(&t, &format!("/v1/keys?keyspace_id={b}"))
            .await
            .expect(200)
            .body["items"],
        json!([])
    );
    let ks_list = app.get_as(&t, "/v1/keyspaces").await.expect(200);
    assert_eq!(ks_list.body["items"].as_array().unwrap().len(), 1);
    // Bulk revoke stays inside the token's keyspaces.
    let r = app
        .post_as(
            &t,
            "/v1/keys/revoke",
            json!({"owner": "shared", "reason": "x"}),
        )
        .await
        .expect(200);
    assert_eq!(r.body["revoked"], 0);
    // What needs an unlimited token.
    assert_eq!(
        app.post_as(
            &t,
            "/v1/keyspaces",
            json!({"name": "n", "prefix": "limited"})
        )
        .await
        .status,
        403
    );
    assert_eq!(
        app.post_as(&t, "/v1/tokens", json!({"name": "n", "role": "viewer"}))
            .await
            .status,
        403
    );
    assert_eq!(app.get_as(&t, "/v1/tokens").await.status, 403);
    assert_eq!(app.get_as(&t, "/v1/audit").await.status, 403);
    // Creating a token for a keyspace that does not exist.
    let r = app
        .post(
            "/v1/tokens",
            json!({"name": "n", "role": "viewer", "keyspace_ids": ["ks_nope"]}),
        )
        .await;
    assert_eq!(r.status, 404);
}
both!(a_token_limited_to_keyspaces_sees_nothing_outside_them);

async fn bad_tokens_are_401_and_repeated_failures_429_while_good_tokens_work(backend: Backend) {
    let Some(app) = spawn_with(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let short = app
        .post(
            "/v1/tokens",
            json!({"name": "short", "role": "viewer", "ttl_secs": 5}),
        )
        .await
        .expect(201);
    let short_token = short.body["token"].as_str().unwrap().to_string();
    let revoked = app
        .post("/v1/tokens", json!({"name": "gone", "role": "viewer"}))
        .await
        .expect(201);
    let revoked_token = revoked.body["token"].as_str().unwrap().to_string();
    app.post(
        &format!("/v1/tokens/{}/revoke", revoked.id()),
        json!({"reason": "rotated"}),
    )
    .await
    .expect(200);
    // Idempotent revoke keeps the first reason.
    let again = app
        .post(
            &format!("/v1/tokens/{}/revoke", revoked.id()),
            json!({"reason": "other"}),
        )
        .await
        .expect(200);
    assert_eq!(again.body["revoked_reason"], "rotated");
    assert_eq!(app.get_as(&short_token, "/v1/keys").await.status, 200);
    app.advance(6);

    let unknown = keyward_core::keyformat::generate("kwt");
    let attempts: Vec<Option<String>> = vec![
        None,
        Some("not-a-token".into()),
        Some(unknown.expose().to_string()),
        Some(revoked_token.clone()),
        Some(short_token.clone()),
    ];
    let mut n = 0;
    while n < 20 {
        let t = &attempts[n % attempts.len()];
        let r = app
            .send(reqwest::Method::GET, "/v1/keys", t.as_deref(), None)
            .await;
        assert_eq!(
            (r.status, r.code()),
            (401, "UNAUTHENTICATED"),
            "attempt {n} with {t:?}"
        );
        n += 1;
    }
    let r = app
        .send(reqwest::Method::GET, "/v1/keys", Some("kwt_nope"), None)
        .await;
    assert_eq!((r.status, r.code()), (429, "RATE_LIMITED"));
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(
        app.get("/v1/keys").await.status,
        200,
        "a valid token keeps working"
    );
    app.advance(61);
    let r = app
        .send(reqwest::Method::GET, "/v1/keys", Some("kwt_nope"), None)
        .await;
    assert_eq!(r.status, 401, "the window has passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_and_repeated_failures_429_on_sqlite() {
    bad_tokens_are_401_and_repeated_failures_429_while_good_tokens_work(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_and_repeated_failures_429_on_postgres() {
    bad_tokens_are_401_and_repeated_failures_429_while_good_tokens_work(Backend::Postgres).await;
}

async fn a_verifier_limited_to_keyspaces_finds_no_key_outside_them(backend: Backend) {
    let opts = Options {
        config: Config {
            verify_requires_token: true,
            usage_flush: std::time::Duration::from_millis(50),
            ..crate::helpers::Options::default().config
        },
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, opts).await else {
        return;
    };
    let a = app.keyspace(json!({})).await;
    let b = app.keyspace(json!({})).await;
    let (_, ka) = app.key(&a, json!({})).await;
    let (kb_id, kb) = app.key(&b, json!({"remaining": 5})).await;
    let t = app.token("verifier", Some(vec![&a])).await;
    assert_eq!(
        app.post_as(&t, "/v1/verify", json!({"key": ka})).await.body["code"],
        "VALID"
    );
    let r = app
        .post_as(&t, "/v1/verify", json!({"key": kb}))
        .await
        .expect(200);
    assert_eq!(
        r.body,
        json!({"valid": false, "code": "NOT_FOUND"}),
        "nothing about the key is disclosed"
    );
    let fa = app
        .http
        .get(format!("{}/v1/forward-auth", app.url))
        .header("x-api-key", &kb)
        .header("x-keyward-token", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(fa.status().as_u16(), 401);
    app.flush().await;
    let k = app.get(&format!("/v1/keys/{kb_id}")).await.expect(200);
    assert_eq!(
        (
            k.body["call_count"].as_i64(),
            k.body["denied_count"].as_i64(),
            k.body["remaining"].as_i64()
        ),
        (Some(0), Some(0), Some(5)),
        "nothing counted or consumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_limited_to_keyspaces_finds_no_key_outside_them_on_sqlite() {
    a_verifier_limited_to_keyspaces_finds_no_key_outside_them(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_limited_to_keyspaces_finds_no_key_outside_them_on_postgres() {
    a_verifier_limited_to_keyspaces_finds_no_key_outside_them(Backend::Postgres).await;
}
