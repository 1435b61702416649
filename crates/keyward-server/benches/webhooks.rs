//! Webhook delivery throughput with dead receivers: 20 endpoints on this machine, 3 of which
//! accept connections and never answer, each subscribed to `key.created`; `KEYS` keys are
//! created (so 20 x `KEYS` deliveries wait in the outbox), then a real `keyward serve` state
//! delivers them. Prints the rate at which the 17 healthy receivers got theirs.
//!
//! `cargo bench -p keyward-server --bench webhooks` (SQLite in a temporary directory; the
//! attempt timeout is the default 10 s, so the dead endpoints' circuits open only after 50 s,
//! well after the healthy deliveries are done).

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::model::Actor;
use keyward_server::authz::Ctx;
use keyward_server::service;

const HEALTHY: usize = 17;
const DEAD: usize = 3;
const KEYS: usize = 300;

async fn healthy_receiver(count: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn dead_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    url
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = common::TempDir::new("webhooks");
    let state = common::state(&rt, &dir);
    let count = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let ctx = Ctx::operator(Actor::cli("bench"));
        let mut urls = Vec::new();
        for _ in 0..HEALTHY {
            urls.push(healthy_receiver(count.clone()).await);
        }
        for _ in 0..DEAD {
            urls.push(dead_receiver().await);
        }
        for url in urls {
            service::create_webhook(
                &state.control,
                &ctx.allow().expect("admin"),
                service::CreateWebhook {
                    url,
                    events: vec!["key.created".into()],
                    keyspace_id: None,
                },
            )
            .await
            .expect("webhook");
        }
        let ks = service::create_keyspace(
            &state.control,
            &ctx.allow().expect("admin"),
            serde_json::from_value(serde_json::json!({"name": "bench", "prefix": "bench"}))
                .expect("keyspace input"),
        )
        .await
        .expect("keyspace");
        for i in 0..KEYS {
            service::create_key(
                &state.control,
                &ctx.allow().expect("admin"),
                serde_json::from_value(serde_json::json!({
                    "keyspace_id": ks.id, "name": format!("k{i}"), "owner": "o"
                }))
                .expect("key input"),
            )
            .await
            .expect("key");
        }
        let want = HEALTHY * KEYS;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(keyward_server::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        while count.load(Ordering::Relaxed) < want && started.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        let got = count.load(Ordering::Relaxed);
        println!(
            "webhooks: {got} of {want} deliveries to {HEALTHY} healthy receivers ({DEAD} dead \
             beside them) in {:.2} s: {:.0} deliveries/s",
            elapsed.as_secs_f64(),
            got as f64 / elapsed.as_secs_f64()
        );
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    });
}
