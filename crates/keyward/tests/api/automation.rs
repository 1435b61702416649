//! Lifecycle automation: sweeps (expiry, warning, inactivity), webhooks from the outbox,
//! reports, and cluster safety of sweeps.

use std::time::{Duration, Instant};

use keyward_server::Config;
use serde_json::json;

use crate::both;
use crate::helpers::{spawn_node, spawn_with, Backend, Options, Receiver, TestApp};

fn manual() -> Options {
    let mut o = crate::helpers::manual();
    o.config.webhook_retry_base = std::time::Duration::from_millis(1000);
    // No delivery worker (`helpers::manual`): tests that count attempts drive delivery.
    o
}

async fn an_expired_key_is_marked_once_audited_by_the_system_and_announced(app: TestApp) {
    let rx = Receiver::start(0).await;
    app.webhook(&rx, &["key.expired", "key.expiring"]).await;
    let ks = app.keyspace(json!({"expiry_warning_secs": 10})).await;
    let (id, key) = app.key(&ks, json!({"ttl_secs": 30})).await;
    let (rot, _) = app.key(&ks, json!({"ttl_secs": 3600})).await;
    app.post(&format!("/v1/keys/{rot}/rotate"), json!({"grace_secs": 5}))
        .await
        .expect(201);

    assert_eq!(app.sweep().await.expired, 0);
    app.advance(21);
    let r = app.sweep().await;
    assert_eq!(
        (r.expired, r.warned),
        (1, 1),
        "the rotated key's grace ended; the other is in its warning window"
    );
    app.advance(10);
    let r = app.sweep().await;
    assert_eq!((r.expired, r.warned), (1, 0));
    assert_eq!(app.verify_code(&key).await, "EXPIRED");
    assert_eq!(app.sweep().await.expired, 0, "marked once");

    let events = app.audit_actions("key.expire").await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["actor"]["type"] == "system"));
    assert!(events.iter().any(|e| e["target_id"] == id));
    assert!(
        events.iter().any(|e| e["target_id"] == rot),
        "an old key at the end of its grace expires too"
    );

    app.deliver().await;
    assert_eq!(rx.wait_for("key.expired", 2).await.len(), 2);
    let warned = rx.received("key.expiring");
    assert_eq!(
        warned.len(),
        1,
        "a key already rotated away is not warned about"
    );
    assert_eq!(warned[0]["data"]["key"]["id"], id);
    assert!(rx.all_signatures_valid());
    // Revoking an expired key still works and is its own event.
    app.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "cleanup"}),
    )
    .await
    .expect(200);
}
both!(
    an_expired_key_is_marked_once_audited_by_the_system_and_announced,
    manual
);

async fn an_unused_key_is_revoked_for_inactivity_and_a_recent_use_saves_it(app: TestApp) {
    let rx = Receiver::start(0).await;
    app.webhook(&rx, &["key.inactive_revoked", "key.revoked"])
        .await;
    let ks = app.keyspace(json!({"inactivity_revoke_secs": 100})).await;
    let (never, never_key) = app.key(&ks, json!({})).await;
    let (_, used_key) = app.key(&ks, json!({})).await;
    app.advance(50);
    assert_eq!(app.verify_code(&used_key).await, "VALID");
    app.advance(49);
    assert_eq!(
        app.sweep().await.inactive_revoked,
        0,
        "99 s without use is within the limit"
    );
    app.advance(1);
    assert_eq!(
        app.sweep().await.inactive_revoked,
        1,
        "never used: counted from creation"
    );
    assert_eq!(app.verify_code(&never_key).await, "REVOKED");
    let k = app.get(&format!("/v1/keys/{never}")).await.expect(200);
    assert_eq!(k.body["revoked_reason"], "inactive");
    assert_eq!(k.body["revoked_by"]["type"], "system");
    // The key used 50 s in survives until 100 s after that use.
    app.advance(49);
    assert_eq!(app.sweep().await.inactive_revoked, 0);
    assert_eq!(
        app.verify_code(&used_key).await,
        "VALID",
        "used one second before the limit"
    );
    app.advance(99);
    assert_eq!(app.sweep().await.inactive_revoked, 0);
    app.advance(1);
    assert_eq!(app.sweep().await.inactive_revoked, 1);
    let revokes = app.audit_actions("key.revoke").await;
    assert_eq!(revokes.len(), 2);
    assert!(revokes
        .iter()
        .all(|e| e["reason"] == "inactive" && e["actor"]["type"] == "system"));
    app.deliver().await;
    assert_eq!(rx.wait_for("key.inactive_revoked", 2).await.len(), 2);
    assert!(
        rx.received("key.revoked").is_empty(),
        "an inactivity revocation emits only key.inactive_revoked"
    );
}
both!(
    an_unused_key_is_revoked_for_inactivity_and_a_recent_use_saves_it,
    manual
);

async fn a_policy_change_applies_to_the_next_sweep_and_flags_instead_of_revoking(app: TestApp) {
    let ks = app.keyspace(json!({"max_lifetime_secs": null, "inactivity_revoke_secs": null, "require_owner": false})).await;
    let (id, _) = app.key(&ks, json!({"owner": null, "ttl_secs": 1000})).await;
    let (forever, _) = app.key(&ks, json!({})).await;
    app.advance(40);
    assert_eq!(app.sweep().await.inactive_revoked, 0);
    let policy = json!({"policy": {"max_lifetime_secs": 500, "inactivity_revoke_secs": 60, "expiry_warning_secs": 2000}});
    app.patch(&format!("/v1/keyspaces/{ks}"), policy)
        .await
        .expect(200);
    let report = app
        .get(&format!("/v1/reports/inventory?keyspace_id={ks}"))
        .await
        .expect(200);
    let rows = report.body["items"].as_array().unwrap();
    let findings = |i: &str| -> Vec<String> {
        let row = rows.iter().find(|r| r["id"] == i).unwrap();
        row["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        findings(&forever),
        vec!["no_expiry", "exceeds_max_lifetime", "inactive"]
    );
    assert_eq!(
        findings(&id),
        vec![
            "exceeds_max_lifetime",
            "expiring_soon",
            "inactive",
            "no_owner"
        ]
    );
    let listed = app
        .get(&format!("/v1/keys?keyspace_id={ks}&status=active"))
        .await
        .expect(200);
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        2,
        "flagged, not revoked"
    );
    app.advance(21);
    assert_eq!(
        app.sweep().await.inactive_revoked,
        2,
        "the new inactivity limit applies at once"
    );
}
both!(
    a_policy_change_applies_to_the_next_sweep_and_flags_instead_of_revoking,
    manual
);

async fn webhooks_are_signed_retried_with_backoff_and_listed(app: TestApp) {
    let rx = Receiver::start(2).await;
    let hook = app
        .webhook(&rx, &["key.created", "key.rotated", "key.revoked"])
        .await;
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({})).await;
    assert_eq!(app.deliver().await, 1);
    assert_eq!(app.deliver().await, 0, "the retry waits for its backoff");
    app.advance(1);
    assert_eq!(app.deliver().await, 1, "second attempt after 1 s");
    app.advance(1);
    assert_eq!(app.deliver().await, 0, "third attempt waits 2 s");
    app.advance(1);
    assert_eq!(app.deliver().await, 1);
    let got = rx.received("key.created");
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|b| b["id"] == got[0]["id"]),
        "a retry carries the same event id"
    );
    assert_eq!(got[2]["data"]["key"]["id"], id);
    assert!(
        got[2]["data"]["key"].get("key").is_none(),
        "no plaintext in events"
    );
    assert!(rx.all_signatures_valid());

    let d = app
        .get(&format!("/v1/webhooks/{hook}/deliveries"))
        .await
        .expect(200);
    let items = d.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["attempt"], 3, "newest first");
    assert_eq!(items[0]["status_code"], 200);
    assert_eq!(items[2]["status_code"], 503);
    assert_eq!(items[2]["error"], "HTTP 503");
    assert_eq!(items[0]["type"], "key.created");

    let r = app
        .post(&format!("/v1/keys/{id}/rotate"), json!({"grace_secs": 0}))
        .await
        .expect(201);
    app.deliver().await;
    let rotated = rx.received("key.rotated");
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["data"]["successor"]["id"], r.id());
    assert_eq!(rotated[0]["data"]["key"]["id"], id);

    let list = app.get("/v1/webhooks").await.expect(200);
    assert_eq!(list.body["items"][0]["id"], hook);
    assert!(
        list.body["items"][0].get("secret").is_none(),
        "the secret is shown once"
    );
    let del = app.delete(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(del.status, 204);
    assert_eq!(
        app.delete(&format!("/v1/webhooks/{hook}")).await.status,
        404
    );
    assert_eq!(app.audit_actions("webhook.delete").await.len(), 1);
    // Bad input.
    for bad in [
        json!({"url": "ftp://x", "events": ["key.created"]}),
        json!({"url": "http://x", "events": []}),
        json!({"url": "http://x", "events": ["key.nope"]}),
    ] {
        assert_eq!(app.post("/v1/webhooks", bad).await.status, 400);
    }
    assert_eq!(
        app.post(
            "/v1/webhooks",
            json!({"url": "http://x", "events": ["key.created"], "keyspace_id": "ks_missing"})
        )
        .await
        .status,
        404
    );
}
both!(webhooks_are_signed_retried_with_backoff_and_listed, manual);

async fn deliveries_survive_a_restart_of_the_server(backend: Backend) {
    let Some(app) = spawn_with(backend, manual()).await else {
        return;
    };
    let mut rx = Receiver::start(1000).await;
    app.webhook(&rx, &["key.revoked"]).await;
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({})).await;
    app.post(&format!("/v1/keys/{id}/revoke"), json!({"reason": "x"}))
        .await
        .expect(200);
    assert_eq!(app.deliver().await, 1);
    let secret = rx.secret.lock().unwrap().clone();
    rx.stop();
    let db = app.db_url.clone();
    let clock = app.clock.clone().unwrap();
    let _dir = app.stop().await;

    // A new process on the same database delivers what is still pending.
    let rx2 = Receiver::start(0).await;
    *rx2.secret.lock().unwrap() = secret;
    {
        use sqlx::Connection;
        let sql = "UPDATE webhooks SET url = $1";
        match backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&db).await.unwrap();
                sqlx::query(sql)
                    .bind(&rx2.url)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
                sqlx::query(sql)
                    .bind(&rx2.url)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
    let store = keyward_store::open(&db).await.unwrap();
    let state =
        keyward_server::AppState::new(store, std::sync::Arc::new(clock.clone()), manual().config);
    clock.advance_secs(2);
    let n = keyward_server::jobs::webhooks::deliver_due(
        &state.control,
        &keyward_server::jobs::webhooks::Deliverer::from_config(&state.config),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let got = rx2.received("key.revoked");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"]["key"]["id"], id);
    assert!(rx2.all_signatures_valid());
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_a_restart_on_sqlite() {
    deliveries_survive_a_restart_of_the_server(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_a_restart_on_postgres() {
    deliveries_survive_a_restart_of_the_server(Backend::Postgres).await;
}

async fn two_nodes_sweeping_together_write_each_event_once(a: TestApp) {
    let b = spawn_node(&a).await;
    let rx = Receiver::start(0).await;
    a.webhook(&rx, &["key.expired", "key.inactive_revoked"])
        .await;
    let ks = a
        .keyspace(json!({"inactivity_revoke_secs": 60, "expiry_warning_secs": null}))
        .await;
    for i in 0..12 {
        a.key(&ks, json!({"ttl_secs": if i % 2 == 0 { 30 } else { 3600 }}))
            .await;
    }
    a.advance(61);
    let (ra, rb) = tokio::join!(a.sweep(), b.sweep());
    assert_eq!(ra.expired + rb.expired, 6);
    assert_eq!(ra.inactive_revoked + rb.inactive_revoked, 6);
    assert_eq!(a.audit_actions("key.expire").await.len(), 6);
    assert_eq!(a.audit_actions("key.revoke").await.len(), 6);
    // Both nodes' delivery workers run too; each event still arrives exactly once.
    let _ = tokio::join!(a.deliver(), b.deliver());
    assert_eq!(rx.wait_for("key.expired", 6).await.len(), 6);
    assert_eq!(rx.wait_for("key.inactive_revoked", 6).await.len(), 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = tokio::join!(a.deliver(), b.deliver());
    assert_eq!(
        rx.received("key.expired").len() + rx.received("key.inactive_revoked").len(),
        12
    );
    assert_eq!(a.get("/v1/audit/verify").await.body["ok"], true);
    b.stop().await;
}
both!(two_nodes_sweeping_together_write_each_event_once, manual);

/// More keys due at once than a sweep writes in one transaction (`BATCH`, 200): every one is
/// warned, expired or revoked once, with its own audit event (chained) and webhook, and a key
/// revoked for inactivity stops verifying at once on the node that swept.
async fn a_sweep_acts_on_more_keys_than_one_transaction_holds(app: TestApp) {
    const N: usize = 420;
    let rx = Receiver::start(0).await;
    app.webhook(
        &rx,
        &["key.expired", "key.expiring", "key.inactive_revoked"],
    )
    .await;
    let expiring = app
        .keyspace(json!({"expiry_warning_secs": 10, "inactivity_revoke_secs": null}))
        .await;
    let idle = app
        .keyspace(json!({"inactivity_revoke_secs": 60, "expiry_warning_secs": null}))
        .await;
    for _ in 0..N {
        app.key(&expiring, json!({"ttl_secs": 30})).await;
    }
    let mut idle_keys = Vec::new();
    for _ in 0..N {
        idle_keys.push(app.key(&idle, json!({})).await.1);
    }
    assert_eq!(app.verify_code(&idle_keys[0]).await, "VALID");

    app.advance(21);
    let r = app.sweep().await;
    assert_eq!((r.warned, r.expired, r.inactive_revoked), (N, 0, 0));
    app.advance(10);
    let r = app.sweep().await;
    assert_eq!((r.warned, r.expired, r.inactive_revoked), (0, N, 0));
    app.advance(30);
    let r = app.sweep().await;
    assert_eq!((r.warned, r.expired, r.inactive_revoked), (0, 0, N));
    let r = app.sweep().await;
    assert_eq!(
        (r.warned, r.expired, r.inactive_revoked),
        (0, 0, 0),
        "each once"
    );

    assert_eq!(app.verify_code(&idle_keys[0]).await, "REVOKED");
    assert_eq!(app.verify_code(&idle_keys[N - 1]).await, "REVOKED");
    assert_eq!(app.audit_actions("key.expire").await.len(), N);
    let revokes = app.audit_actions("key.revoke").await;
    assert_eq!(revokes.len(), N);
    assert!(revokes.iter().all(|e| e["reason"] == "inactive"));
    let check = app.get("/v1/audit/verify").await;
    assert_eq!(check.body["ok"], true, "{}", check.body);
    app.deliver().await;
    for event in ["key.expiring", "key.expired", "key.inactive_revoked"] {
        let got = rx.wait_for(event, N).await;
        let mut ids: Vec<_> = got.iter().map(|e| e["data"]["key"]["id"].clone()).collect();
        ids.sort_by_key(|v| v.to_string());
        ids.dedup();
        assert_eq!(
            (event, got.len(), ids.len()),
            (event, N, N),
            "one webhook a key"
        );
    }
}
both!(a_sweep_acts_on_more_keys_than_one_transaction_holds, manual);

/// A key whose step cannot be written (here: its audit event is refused) fails the sweep and
/// holds back only itself: the keys of its page before it are still marked, each once.
async fn a_key_the_sweep_cannot_write_holds_back_only_itself(app: TestApp) {
    const N: usize = 5;
    let ks = app.keyspace(json!({"expiry_warning_secs": null})).await;
    for _ in 0..N {
        app.key(&ks, json!({"ttl_secs": 30})).await;
    }
    app.advance(31);
    let now = keyward_core::time::Clock::now(app.clock.as_ref().expect("a manual clock"));
    let page = app.state.store().expired_unmarked(now, 200).await.unwrap();
    assert_eq!(page.len(), N);
    let last = &page[N - 1].id;
    // The last key of the page is the one whose event the database refuses.
    match app.backend {
        Backend::Sqlite => {
            app.run_sql(
                &format!(
                    "CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.target_id = '{last}' \
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                ),
            )
            .await
        }
        Backend::Postgres => {
            app.run_sql(
                &format!(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                     IF NEW.target_id = '{last}' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                     RETURN NEW; END $$; \
                     CREATE TRIGGER refuse BEFORE INSERT ON audit_events \
                     FOR EACH ROW EXECUTE FUNCTION refuse()"
                ),
            )
            .await
        }
    }
    let swept = keyward_server::jobs::sweep::sweep_once(
        &app.state.control,
        app.state.config.retention(),
        &mut None,
    )
    .await;
    assert!(swept.is_err(), "the refused key fails the sweep");
    let marked = app.audit_actions("key.expire").await;
    assert_eq!(marked.len(), N - 1, "the keys before it are marked");
    assert!(marked.iter().all(|e| e["target_id"] != last.as_str()));

    let drop = match app.backend {
        Backend::Sqlite => "DROP TRIGGER refuse",
        Backend::Postgres => "DROP TRIGGER refuse ON audit_events",
    };
    app.run_sql(drop).await;
    let r = app.sweep().await;
    assert_eq!(r.expired, 1, "only the refused key was left");
    assert_eq!(app.audit_actions("key.expire").await.len(), N);
    assert_eq!(app.get("/v1/audit/verify").await.body["ok"], true);
}
both!(a_key_the_sweep_cannot_write_holds_back_only_itself, manual);

async fn the_inventory_report_comes_as_json_and_csv(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({"name": "csv, \"quoted\""})).await;
    let (gone, _) = app.key(&ks, json!({})).await;
    app.post(&format!("/v1/keys/{gone}/revoke"), json!({"reason": "x"}))
        .await
        .expect(200);
    let r = app.get("/v1/reports/inventory").await.expect(200);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let row = items.iter().find(|r| r["id"] == id).unwrap();
    for f in [
        "id",
        "name",
        "owner",
        "keyspace_id",
        "status",
        "created_at",
        "age_days",
        "expires_at",
        "last_used_at",
        "days_since_use",
        "call_count",
        "findings",
    ] {
        assert!(row.get(f).is_some(), "row lacks {f}");
    }
    assert_eq!(row["findings"], json!([]));
    let res = app
        .http
        .get(format!(
            "{}/v1/reports/inventory?format=csv&keyspace_id={ks}",
            app.url
        ))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = res.text().await.unwrap();
    assert!(csv.lines().next().unwrap().contains("findings"));
    assert!(csv.contains("\"csv, \"\"quoted\"\"\""));
    assert_eq!(
        app.get("/v1/reports/inventory?format=xml").await.status,
        400
    );
    let viewer = app.token("viewer", None).await;
    assert_eq!(
        app.get_as(&viewer, "/v1/reports/inventory").await.status,
        403
    );
    let auditor = app.token("auditor", None).await;
    assert_eq!(
        app.get_as(&auditor, "/v1/reports/inventory").await.status,
        200
    );
}
both!(the_inventory_report_comes_as_json_and_csv);

/// Real time, as a user would run it: policies of a few seconds and a sweep every second.
async fn with_a_one_second_sweep_policies_act_by_themselves(backend: Backend) {
    let o = Options {
        config: Config {
            sweep_interval: std::time::Duration::from_secs(1),
            usage_flush: std::time::Duration::from_millis(100),
            webhook_poll: std::time::Duration::from_millis(100),
            webhook_retry_base: std::time::Duration::from_millis(100),
            ..crate::helpers::Options::default().config
        },
        ..Options::default()
    };
    let Some(app) = spawn_with(backend, o).await else {
        return;
    };
    let rx = Receiver::start(1).await;
    app.webhook(
        &rx,
        &["key.expired", "key.expiring", "key.inactive_revoked"],
    )
    .await;
    let ks = app
        .keyspace(json!({"inactivity_revoke_secs": 2, "expiry_warning_secs": 2}))
        .await;
    let (_, expiring) = app.key(&ks, json!({"ttl_secs": 3})).await;
    let (_, idle) = app.key(&ks, json!({"ttl_secs": 3600})).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if !rx.received("key.expired").is_empty()
            && !rx.received("key.inactive_revoked").is_empty()
            && !rx.received("key.expiring").is_empty()
        {
            break;
        }
        // Keep one key in use so that it expires rather than being revoked for inactivity.
        app.verify(json!({"key": expiring})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!rx.received("key.expiring").is_empty(), "warned");
    assert!(!rx.received("key.expired").is_empty(), "expired");
    assert!(
        !rx.received("key.inactive_revoked").is_empty(),
        "revoked for inactivity"
    );
    assert_eq!(app.verify_code(&expiring).await, "EXPIRED");
    assert_eq!(app.verify_code(&idle).await, "REVOKED");
    assert!(rx.all_signatures_valid());
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_one_second_sweep_policies_act_by_themselves_on_sqlite() {
    with_a_one_second_sweep_policies_act_by_themselves(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_one_second_sweep_policies_act_by_themselves_on_postgres() {
    with_a_one_second_sweep_policies_act_by_themselves(Backend::Postgres).await;
}
