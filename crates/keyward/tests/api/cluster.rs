//! Several nodes on one database: a change made on one node is honoured by the others within
//! the feed's polling bound (1 s in the contract; the test allows generous slack for CI noise).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::helpers::{spawn_node, TestApp};

async fn wait_for(node: &TestApp, key: &str, code: &str) -> Duration {
    let started = Instant::now();
    loop {
        if node.verify_code(key).await == code {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node never answered {code}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_change_on_one_node_reaches_the_other_nodes(a: TestApp) {
    let b = spawn_node(&a).await;
    let ks = a.keyspace(json!({})).await;
    let (id, key) = a.key(&ks, json!({"scopes": ["orders:read"]})).await;
    // Node B caches the key as valid first.
    assert_eq!(b.verify_code(&key).await, "VALID");

    a.patch(&format!("/v1/keys/{id}"), json!({"enabled": false}))
        .await
        .expect(200);
    wait_for(&b, &key, "DISABLED").await;
    a.patch(
        &format!("/v1/keys/{id}"),
        json!({"enabled": true, "scopes": ["billing:read"]}),
    )
    .await
    .expect(200);
    let r = b
        .verify(json!({"key": key, "scopes": ["orders:read"]}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut code = r["code"].as_str().unwrap().to_string();
    while code != "INSUFFICIENT_SCOPE" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        code = b
            .verify(json!({"key": key, "scopes": ["orders:read"]}))
            .await["code"]
            .as_str()
            .unwrap()
            .to_string();
    }
    assert_eq!(code, "INSUFFICIENT_SCOPE");

    a.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "cluster test"}),
    )
    .await
    .expect(200);
    wait_for(&b, &key, "REVOKED").await;

    // A key created on A after B cached it as unknown.
    let (_, k2) = a.key(&ks, json!({})).await;
    assert_eq!(b.verify_code(&k2).await, "VALID");
    let r = b
        .post(
            &format!(
                "/v1/keys/{}/rotate",
                a.verify(json!({"key": k2})).await["key_id"]
                    .as_str()
                    .unwrap()
            ),
            json!({"grace_secs": 0}),
        )
        .await
        .expect(201);
    wait_for(&a, &k2, "REVOKED").await;
    assert_eq!(
        a.verify_code(r.body["key"].as_str().unwrap()).await,
        "VALID"
    );
    b.stop().await;
}
both!(a_change_on_one_node_reaches_the_other_nodes);
