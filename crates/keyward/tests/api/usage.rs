//! Usage analytics: buckets that agree with the counters, source addresses, pattern changes
//! (each kind triggered by real verifications, steady traffic triggering none) and metrics.

use serde_json::{json, Value};

use crate::both;
use crate::helpers::{manual, Options, Receiver, TestApp};

fn sum_valid(r: &Value) -> i64 {
    r["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["valid"].as_i64().unwrap())
        .sum()
}

async fn usage_buckets_agree_with_the_counters_at_every_granularity(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"scopes": ["a:read"]})).await;
    for i in 0..7 {
        app.verify(json!({"key": key, "ip": format!("203.0.113.{}", i % 2)}))
            .await;
    }
    app.advance(125);
    for _ in 0..3 {
        app.verify(json!({"key": key, "scopes": ["b:write"]})).await;
    }
    app.verify(json!({"key": key})).await;
    app.flush().await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(
        (
            k.body["call_count"].as_i64(),
            k.body["denied_count"].as_i64()
        ),
        (Some(8), Some(3))
    );
    for g in ["minute", "hour", "day"] {
        let u = app
            .get(&format!("/v1/keys/{id}/usage?granularity={g}"))
            .await
            .expect(200);
        assert_eq!(u.body["granularity"], g);
        assert_eq!(sum_valid(&u.body), 8, "{g}");
        assert_eq!(
            u.body["totals"],
            json!({"valid": 8, "denied": {"INSUFFICIENT_SCOPE": 3}}),
            "{g}"
        );
    }
    let minutes = app
        .get(&format!("/v1/keys/{id}/usage?granularity=minute"))
        .await
        .body;
    let b = minutes["buckets"].as_array().unwrap();
    assert_eq!(
        b.len(),
        2,
        "two minutes with traffic, empty ones omitted: {minutes}"
    );
    assert_eq!(b[0]["valid"], 7, "oldest first");
    assert_eq!(b[1]["denied"], json!({"INSUFFICIENT_SCOPE": 3}));
    // `from` inclusive, `to` exclusive.
    let second = b[1]["start"].as_str().unwrap();
    let only_second = app
        .get(&format!(
            "/v1/keys/{id}/usage?granularity=minute&from={second}"
        ))
        .await
        .body;
    assert_eq!(sum_valid(&only_second), 1);
    let before_second = app
        .get(&format!(
            "/v1/keys/{id}/usage?granularity=minute&to={second}"
        ))
        .await
        .body;
    assert_eq!(sum_valid(&before_second), 7);
    assert_eq!(
        app.get(&format!("/v1/keys/{id}/usage?granularity=week"))
            .await
            .status,
        400
    );
    let r = app
        .get(&format!(
            "/v1/keys/{id}/usage?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(r.status, 400);

    let src = app.get(&format!("/v1/keys/{id}/sources")).await.expect(200);
    let items = src.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let counts: i64 = items.iter().map(|s| s["count"].as_i64().unwrap()).sum();
    assert_eq!(counts, 7);
    assert!(items
        .iter()
        .all(|s| s["first_seen"].is_string() && s["last_seen"].is_string()));

    let ksu = app
        .get(&format!("/v1/keyspaces/{ks}/usage?granularity=hour"))
        .await
        .expect(200);
    assert_eq!(ksu.body["totals"]["valid"], 8);
    assert_eq!(ksu.body["top_by_calls"][0]["key_id"], id);
    assert_eq!(ksu.body["top_by_denials"][0]["denied"], 3);
}
both!(
    usage_buckets_agree_with_the_counters_at_every_granularity,
    manual
);

async fn anomalies(app: &TestApp, ks: &str) -> Vec<Value> {
    app.get(&format!("/v1/anomalies?keyspace_id={ks}"))
        .await
        .expect(200)
        .body["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn a_new_source_address_is_an_anomaly_but_the_first_is_not(app: TestApp) {
    let rx = Receiver::start(0).await;
    app.webhook(&rx, &["key.anomaly"]).await;
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    app.verify(json!({"key": key, "ip": "203.0.113.7"})).await;
    app.flush().await;
    assert!(
        anomalies(&app, &ks).await.is_empty(),
        "the first address is not an anomaly"
    );
    app.verify(json!({"key": key, "ip": "203.0.113.7"})).await;
    app.verify(json!({"key": key, "ip": "::ffff:198.51.100.9"}))
        .await;
    app.flush().await;
    let found = anomalies(&app, &ks).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["kind"], "new_source");
    assert_eq!(found[0]["key_id"], id);
    assert_eq!(found[0]["detail"]["ip"], "198.51.100.9");
    app.verify(json!({"key": key, "ip": "198.51.100.9"})).await;
    app.flush().await;
    assert_eq!(anomalies(&app, &ks).await.len(), 1, "once per address");
    // A successor starts with its predecessor's addresses.
    let (_, new_key) = app.rotate(&id, json!({"grace_secs": 0})).await;
    app.verify(json!({"key": new_key, "ip": "203.0.113.7"}))
        .await;
    app.flush().await;
    assert_eq!(anomalies(&app, &ks).await.len(), 1);
    app.deliver().await;
    let got = rx.wait_for("key.anomaly", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"]["anomaly"]["kind"], "new_source");
    assert_eq!(got[0]["data"]["key"]["id"], id);
}
both!(
    a_new_source_address_is_an_anomaly_but_the_first_is_not,
    manual
);

async fn a_key_used_again_after_a_long_silence_is_reported(app: TestApp) {
    let ks = app.keyspace(json!({"inactivity_revoke_secs": null})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    app.verify(json!({"key": key})).await;
    app.advance(10 * 86_400);
    app.verify(json!({"key": key})).await;
    app.flush().await;
    assert!(
        anomalies(&app, &ks).await.is_empty(),
        "ten days is not a long silence"
    );
    app.advance(31 * 86_400);
    app.verify(json!({"key": key})).await;
    app.flush().await;
    let found = anomalies(&app, &ks).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["kind"], "dormant_reactivated");
    assert_eq!(found[0]["key_id"], id);
    assert_eq!(found[0]["detail"]["silent_secs"], 31 * 86_400);
}
both!(a_key_used_again_after_a_long_silence_is_reported, manual);

async fn a_spike_and_a_denied_burst_are_reported_and_steady_traffic_is_not(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (spiky, spiky_key) = app.key(&ks, json!({})).await;
    let (_, steady_key) = app.key(&ks, json!({})).await;
    let (burst, burst_key) = app.key(&ks, json!({})).await;
    // An hour of steady traffic: two valid calls a minute, and a busy key at 35 (above the
    // spike minimum, so only its baseline tells that its pace is its usual one).
    const BUSY: usize = 35;
    for _ in 0..60 {
        for k in [&spiky_key, &burst_key] {
            app.verify(json!({"key": k})).await;
            app.verify(json!({"key": k})).await;
        }
        for _ in 0..BUSY {
            app.verify(json!({"key": steady_key})).await;
        }
        app.advance(60);
    }
    app.flush().await;
    app.sweep().await;
    assert!(
        anomalies(&app, &ks).await.is_empty(),
        "steady traffic triggers nothing"
    );
    // One minute: the spiky key jumps to 40 calls, the busy key keeps its pace, the burst key
    // is revoked and still tried.
    app.post(
        &format!("/v1/keys/{burst}/revoke"),
        json!({"reason": "leaked"}),
    )
    .await
    .expect(200);
    for _ in 0..40 {
        app.verify(json!({"key": spiky_key})).await;
    }
    for _ in 0..25 {
        assert_eq!(app.verify_code(&burst_key).await, "REVOKED");
    }
    for _ in 0..BUSY {
        app.verify(json!({"key": steady_key})).await;
    }
    app.advance(60);
    app.sweep().await;
    let found = anomalies(&app, &ks).await;
    let kinds: Vec<(String, String)> = found
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().into(),
                a["key_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 2, "{found:?}");
    assert!(kinds.contains(&("spike".into(), spiky.clone())));
    assert!(kinds.contains(&("denied_burst".into(), burst.clone())));
    let burst_detail = found.iter().find(|a| a["kind"] == "denied_burst").unwrap();
    assert_eq!(burst_detail["detail"]["by_code"]["REVOKED"], 25);
    // A node that judges the same minute again (another node, or this one after a restart)
    // reports nothing new.
    app.forget_sweeps();
    app.sweep().await;
    assert_eq!(anomalies(&app, &ks).await.len(), 2, "reported once");
    let since = app
        .get(&format!(
            "/v1/anomalies?keyspace_id={ks}&since=2100-01-01T00:00:00Z"
        ))
        .await
        .expect(200);
    assert_eq!(since.body["items"], json!([]));
}
both!(
    a_spike_and_a_denied_burst_are_reported_and_steady_traffic_is_not,
    manual
);

/// A sweep that runs after several minutes (a pause, a slow sweep) judges each of them against
/// its own preceding hour: the spike in the first is found, and a busy key's usual pace in any
/// of them is not a spike.
async fn a_sweep_that_catches_up_judges_each_minute_against_its_own_hour(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (spiky, spiky_key) = app.key(&ks, json!({})).await;
    let (_, busy_key) = app.key(&ks, json!({})).await;
    const BUSY: usize = 35;
    let minute = |spiky_calls: usize| {
        let app = &app;
        let (spiky_key, busy_key) = (&spiky_key, &busy_key);
        async move {
            for _ in 0..spiky_calls {
                app.verify(json!({"key": spiky_key})).await;
            }
            for _ in 0..BUSY {
                app.verify(json!({"key": busy_key})).await;
            }
            app.advance(60);
        }
    };
    for _ in 0..60 {
        minute(2).await;
    }
    app.flush().await;
    app.sweep().await;
    assert!(anomalies(&app, &ks).await.is_empty());
    // Three minutes before the next sweep; the spiky key jumps in the first of them.
    minute(40).await;
    minute(2).await;
    minute(2).await;
    app.sweep().await;
    let found = anomalies(&app, &ks).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["kind"], "spike");
    assert_eq!(found[0]["key_id"], spiky);
    assert_eq!(found[0]["detail"]["valid"], 40);
}
both!(
    a_sweep_that_catches_up_judges_each_minute_against_its_own_hour,
    manual
);

async fn metrics_count_verifications_cache_use_flushes_and_webhooks(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    app.verify(json!({"key": key})).await;
    app.verify(json!({"key": key})).await;
    app.verify(json!({"key": "nope"})).await;
    app.flush().await;
    let m = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(value("keyward_verifications_total{code=\"VALID\"}"), 2.0);
    assert_eq!(
        value("keyward_verifications_total{code=\"NOT_FOUND\"}"),
        1.0
    );
    assert_eq!(value("keyward_verify_duration_seconds_count"), 3.0);
    assert!(value("keyward_cache_hits_total") >= 1.0);
    assert!(value("keyward_cache_misses_total") >= 1.0);
    assert!(value("keyward_usage_flushes_total") >= 1.0);
    assert!(m.contains("keyward_webhook_deliveries_total{result=\"success\"}"));
    assert!(!m.contains(&key));
}
both!(metrics_count_verifications_cache_use_flushes_and_webhooks);

/// Verifies each key once, in process (a cached key's verification makes no HTTP round trip).
async fn verify_all(app: &TestApp, plaintexts: &[keyward_core::secret::Secret]) {
    for p in plaintexts {
        let outcome = app
            .state
            .verifier()
            .verify(&keyward_server::verifier::Request {
                key: p.expose(),
                scopes: &[],
                ip: None,
                cost: 1,
                keyspaces: None,
                route: None,
            })
            .await
            .unwrap();
        assert_eq!(outcome.code().as_str(), "VALID");
    }
}

async fn a_flush_of_more_keys_than_one_batch_writes_every_key(app: TestApp) {
    use keyward_core::keyformat;
    use keyward_server::verifier::Request;

    // Batches of 5,000 (`flush_in_batches`): the default batch is ten times that.
    const FLUSH_BATCH: usize = 5000;
    assert_eq!(app.state.config.usage_flush_batch as usize, FLUSH_BATCH);

    let ks = app.keyspace(json!({})).await;
    let prefix = app
        .get(&format!("/v1/keyspaces/{ks}"))
        .await
        .expect(200)
        .body["prefix"]
        .as_str()
        .unwrap()
        .to_string();
    // More keys than two batches, written straight to the store (the API would take minutes).
    let n = 2 * FLUSH_BATCH + 7;
    let now = app.state.clock().now();
    let mut plaintexts = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut tx = app.state.store().begin().await.unwrap();
    for _ in 0..n {
        let plaintext = keyformat::generate(&prefix);
        let mut key = keyward_core::model::Key::for_plaintext(
            plaintext.expose(),
            &ks,
            now,
            keyward_core::model::Actor::system(),
        )
        .unwrap();
        key.name = "bulk".into();
        tx.insert_key(&key).await.unwrap();
        ids.push(key.id);
        plaintexts.push(plaintext);
    }
    tx.commit().await.unwrap();
    verify_all(&app, &plaintexts).await;
    assert_eq!(app.state.verifier().pending_keys(), n);
    let before = app
        .state
        .metrics()
        .flushed_keys
        .load(std::sync::atomic::Ordering::Relaxed);
    app.flush().await;
    assert_eq!(app.state.verifier().pending_keys(), 0);
    for id in [&ids[0], &ids[FLUSH_BATCH], &ids[n - 1]] {
        let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
        assert_eq!(k.body["call_count"], 1, "{id}");
    }
    assert_eq!(
        app.state
            .metrics()
            .flushed_keys
            .load(std::sync::atomic::Ordering::Relaxed),
        before + n as u64,
        "every key written once"
    );

    // Again, with verifications going on during the flush: the keys pending when it starts
    // are written, the oldest first, however busy the others keep the queue.
    verify_all(&app, &plaintexts).await;
    let busy: Vec<String> = plaintexts[n - 300..]
        .iter()
        .map(|p| p.expose().to_string())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = app.state.clone();
    let flag = stop.clone();
    let traffic = tokio::spawn(async move {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            for k in &busy {
                let request = Request {
                    key: k,
                    scopes: &[],
                    ip: None,
                    cost: 1,
                    keyspaces: None,
                    route: None,
                };
                state.verifier().verify(&request).await.unwrap();
            }
            tokio::task::yield_now().await;
        }
    });
    app.flush().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    for id in [&ids[0], &ids[1], &ids[FLUSH_BATCH], &ids[n - 301]] {
        let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
        assert_eq!(k.body["call_count"], 2, "{id}");
    }
}
/// No background flush: the test's own flush writes everything.
fn flush_by_hand() -> Options {
    let mut o = manual();
    o.config.usage_flush = std::time::Duration::from_millis(3_600_000);
    o
}
/// [`flush_by_hand`], in batches of 5,000 keys.
fn flush_in_batches() -> Options {
    let mut o = flush_by_hand();
    o.config.usage_flush_batch = 5000;
    o
}
both!(
    a_flush_of_more_keys_than_one_batch_writes_every_key,
    flush_in_batches
);

/// The sources of key `id` as (address, count), sorted.
async fn source_counts(app: &TestApp, id: &str) -> Vec<(String, i64)> {
    let r = app.get(&format!("/v1/keys/{id}/sources")).await.expect(200);
    let mut items: Vec<(String, i64)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["ip"].as_str().unwrap().to_string(),
                s["count"].as_i64().unwrap(),
            )
        })
        .collect();
    items.sort();
    items
}

/// A new source address is written with the next flush; the count and last sighting of a known
/// one at most once a minute, and whatever is left when the server stops.
async fn known_sources_are_written_once_a_minute_and_at_shutdown(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    let from = |ip: &str| json!({"key": key, "ip": ip});
    app.verify(from("203.0.113.1")).await;
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 1)]
    );
    // Known: counted, written within the minute.
    for _ in 0..3 {
        app.verify(from("203.0.113.1")).await;
    }
    app.advance(1);
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 1)]
    );
    // A new address goes out with the next flush, and takes the known one's count along.
    app.verify(from("203.0.113.2")).await;
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 4), ("203.0.113.2".into(), 1)]
    );
    app.verify(from("203.0.113.2")).await;
    app.advance(61);
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 4), ("203.0.113.2".into(), 2)]
    );
    // Not due yet and the key not used again: a flush once it is due writes it.
    app.verify(from("203.0.113.2")).await;
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 4), ("203.0.113.2".into(), 2)]
    );
    app.advance(59);
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 4), ("203.0.113.2".into(), 2)]
    );
    app.advance(2);
    app.flush().await;
    assert_eq!(
        source_counts(&app, &id).await,
        vec![("203.0.113.1".into(), 4), ("203.0.113.2".into(), 3)]
    );
    // Not due yet, then the server stops: the last flush writes it.
    app.verify(from("203.0.113.2")).await;
    app.flush().await;
    let (state, db_url) = (app.state.clone(), app.db_url.clone());
    let dir = app.stop().await;
    let store = keyward_store::open(&db_url).await.unwrap();
    let seen = store.sources(&id).await.unwrap();
    let two = seen.iter().find(|s| s.ip == "203.0.113.2").unwrap();
    assert_eq!(two.count, 4, "{seen:?}");
    drop((state, dir));
}
both!(
    known_sources_are_written_once_a_minute_and_at_shutdown,
    manual
);
