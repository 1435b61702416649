//! The whole life of a key, the audit chain, and counts that survive a graceful stop.

use serde_json::json;

use crate::both;
use crate::helpers::{spawn_with, Backend, Options, TestApp};

async fn a_key_lives_from_creation_through_rotation_to_revocation(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let manager = app.token("manager", None).await;
    let r = app
        .post_as(&manager, "/v1/keys", json!({"keyspace_id": ks, "name": "billing prod", "owner": "team-billing", "scopes": ["orders:read"]}))
        .await
        .expect(201);
    let (old_id, old_key) = (r.id(), r.body["key"].as_str().unwrap().to_string());
    assert_eq!(r.body["status"], "active");
    assert_eq!(app.verify_code(&old_key).await, "VALID");

    // Rotate with a grace period: both keys are valid until it ends.
    let r = app
        .post_as(
            &manager,
            &format!("/v1/keys/{old_id}/rotate"),
            json!({"grace_secs": 60}),
        )
        .await
        .expect(201);
    let (new_id, new_key) = (r.id(), r.body["key"].as_str().unwrap().to_string());
    assert_eq!(r.body["rotated_from"], old_id);
    assert_eq!(app.verify_code(&old_key).await, "VALID");
    assert_eq!(app.verify_code(&new_key).await, "VALID");
    let old = app.get(&format!("/v1/keys/{old_id}")).await.expect(200);
    assert_eq!(old.body["status"], "rotating");
    assert_eq!(old.body["rotated_to"], new_id);

    app.advance(61);
    assert_eq!(app.verify_code(&old_key).await, "EXPIRED");
    assert_eq!(app.verify_code(&new_key).await, "VALID");
    assert_eq!(
        app.get(&format!("/v1/keys/{old_id}")).await.body["status"],
        "expired"
    );

    // Revoke: the very next verification sees it.
    let r = app
        .post_as(
            &manager,
            &format!("/v1/keys/{new_id}/revoke"),
            json!({"reason": "leaked in a log"}),
        )
        .await
        .expect(200);
    assert_eq!(r.body["status"], "revoked");
    assert_eq!(r.body["revoked_by"]["type"], "token");
    assert_eq!(app.verify_code(&new_key).await, "REVOKED");

    // Bulk revoke when someone leaves: every live key of the owner, across keyspaces.
    let ks2 = app.keyspace(json!({})).await;
    let (a, ka) = app.key(&ks, json!({"owner": "leaver"})).await;
    let (b, kb) = app.key(&ks2, json!({"owner": "leaver"})).await;
    let (_, kc) = app.key(&ks, json!({"owner": "stays"})).await;
    let r = app
        .post_as(
            &manager,
            "/v1/keys/revoke",
            json!({"owner": "leaver", "reason": "left the company"}),
        )
        .await
        .expect(200);
    assert_eq!(r.body["revoked"], 2);
    let mut ids: Vec<String> = r.body["key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(app.verify_code(&ka).await, "REVOKED");
    assert_eq!(app.verify_code(&kb).await, "REVOKED");
    assert_eq!(app.verify_code(&kc).await, "VALID");

    let chain = app.get("/v1/audit/verify").await.expect(200);
    assert_eq!(chain.body["ok"], true, "{}", chain.body);
}

async fn lifecycle_on_manual_clock(backend: Backend) {
    if let Some(app) = spawn_with(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await
    {
        a_key_lives_from_creation_through_rotation_to_revocation(app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lives_from_creation_through_rotation_to_revocation_on_sqlite() {
    lifecycle_on_manual_clock(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lives_from_creation_through_rotation_to_revocation_on_postgres() {
    lifecycle_on_manual_clock(Backend::Postgres).await;
}

async fn editing_an_audit_row_in_the_database_is_reported_at_its_seq(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    for _ in 0..3 {
        app.key(&ks, json!({})).await;
    }
    let ok = app.get("/v1/audit/verify").await.expect(200);
    // token.create (bootstrap), keyspace.create, 3 x key.create
    assert_eq!(
        ok.body,
        json!({"ok": true, "events": 5, "head": ok.body["head"]})
    );
    let events = app.get("/v1/audit?limit=500").await.expect(200);
    let seqs: Vec<i64> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![5, 4, 3, 2, 1], "newest first, no gaps");

    app.run_sql("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = 3")
        .await;
    let bad = app.get("/v1/audit/verify").await.expect(200);
    assert_eq!(
        bad.body,
        json!({"ok": false, "events": 5, "first_bad_seq": 3})
    );
}
both!(editing_an_audit_row_in_the_database_is_reported_at_its_seq);

async fn deleting_an_audit_row_is_reported_too(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    app.key(&ks, json!({})).await;
    app.run_sql("DELETE FROM audit_events WHERE seq = 2").await;
    let bad = app.get("/v1/audit/verify").await.expect(200);
    assert_eq!(bad.body["ok"], false);
    assert_eq!(bad.body["first_bad_seq"], 2);
}
both!(deleting_an_audit_row_is_reported_too);

async fn the_hash_chain_can_be_rechecked_from_an_export(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app
        .key(&ks, json!({"meta": {"n": 1.5, "big": 1e21, "s": "é\u{1}"}}))
        .await;
    app.post(&format!("/v1/keys/{id}/revoke"), json!({"reason": "test"}))
        .await
        .expect(200);
    let text = app.audit_export("jsonl").await;
    let mut v = keyward_core::audit::ChainVerifier::default();
    let mut n = 0;
    for line in text.lines() {
        let e: keyward_core::model::AuditEvent = serde_json::from_str(line).unwrap();
        v.push(&e);
        n += 1;
    }
    assert_eq!(n, 4);
    assert!(matches!(
        v.finish(),
        keyward_core::audit::ChainCheck::Ok { events: 4, .. }
    ));
    let csv = app.audit_export("csv").await;
    let header = csv.lines().next().unwrap();
    for col in [
        "id",
        "seq",
        "at",
        "action",
        "target_type",
        "target_id",
        "reason",
        "prev_hash",
        "hash",
    ] {
        assert!(
            header.split(',').any(|c| c == col),
            "csv header lacks {col}: {header}"
        );
    }
    assert_eq!(csv.lines().count(), 5);
}
both!(the_hash_chain_can_be_rechecked_from_an_export);

async fn counts_survive_a_graceful_stop_whatever_the_flush_interval(backend: Backend) {
    let mut opts = Options::default();
    opts.config.usage_flush = std::time::Duration::from_millis(3_600_000);
    let Some(app) = spawn_with(backend, opts).await else {
        return;
    };
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"remaining": 100})).await;
    for _ in 0..25 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    app.post(&format!("/v1/keys/{id}/revoke"), json!({"reason": "done"}))
        .await
        .expect(200);
    for _ in 0..5 {
        assert_eq!(app.verify_code(&key).await, "REVOKED");
    }
    let db = app.db_url.clone();
    let _dir = app.stop().await;
    let store = keyward_store::open(&db).await.unwrap();
    let k = store.key(&id).await.unwrap().unwrap();
    assert_eq!(
        (k.call_count, k.denied_count, k.remaining),
        (25, 5, Some(75))
    );
    assert!(k.last_used_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_graceful_stop_on_sqlite() {
    counts_survive_a_graceful_stop_whatever_the_flush_interval(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_graceful_stop_on_postgres() {
    counts_survive_a_graceful_stop_whatever_the_flush_interval(Backend::Postgres).await;
}

async fn many_concurrent_verifications_are_counted_exactly(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"remaining": 3000})).await;
    let mut tasks = Vec::new();
    // 25 clients, 2000 verifications in all, each with its own connection pool.
    for _ in 0..25 {
        let (http, url, key) = (reqwest::Client::new(), app.url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut valid = 0;
            for _ in 0..80 {
                let r =
                    crate::helpers::post_verify(&http, &url, &json!({"key": key, "cost": 2})).await;
                if r["code"] == "VALID" {
                    valid += 1;
                }
            }
            valid
        }));
    }
    let mut valid = 0;
    for t in tasks {
        valid += t.await.unwrap();
    }
    assert_eq!(valid, 1500, "a quota of 3000 at cost 2 grants exactly 1500");
    app.flush().await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(k.body["call_count"], 1500);
    assert_eq!(k.body["denied_count"], 500);
    assert_eq!(k.body["remaining"], 0);
    let u = app
        .get(&format!("/v1/keys/{id}/usage?granularity=minute"))
        .await
        .expect(200);
    assert_eq!(
        u.body["totals"],
        json!({"valid": 1500, "denied": {"USAGE_EXCEEDED": 500}}),
        "buckets agree"
    );
}
both!(many_concurrent_verifications_are_counted_exactly);
