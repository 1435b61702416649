//! A degraded store: PostgreSQL becomes unreachable mid-run (a real TCP proxy in front of the
//! real database is cut), and keyward keeps verifying cached keys, says it is not ready, buffers
//! usage, and writes every buffered count once the database is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_store::testing;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{spawn_on, Backend, Options};

/// A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones refused).
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (gen_tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(gen_tx);
        let up2 = up.clone();
        let gen2 = generation.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                // Subscribing marks the current generation as seen: only a later cut ends it.
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_down_cached_keys_verify_and_no_count_is_lost() {
    if !testing::postgres_available().await {
        return;
    }
    let pg = testing::pg_url();
    let target = pg
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let proxy = Proxy::start(target.clone()).await;
    let schema = testing::unique_schema();
    testing::create_schema(&schema).await.unwrap();
    let url =
        testing::pg_url_with_schema(&schema).replace(&target, &format!("127.0.0.1:{}", proxy.port));
    let mut opts = Options::default();
    opts.config.usage_flush = std::time::Duration::from_millis(100);
    let app = spawn_on(Backend::Postgres, &url, opts).await;

    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.flush().await;
    assert_eq!(app.verify_code(&key).await, "VALID");

    proxy.cut();
    // Cached keys keep verifying; the store is not ready.
    for _ in 0..20 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    let ready = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    // An uncached key cannot be looked up: a clear 503, not a guess.
    let unknown = keyward_core::keyformat::generate("zz");
    let r = app
        .send(
            reqwest::Method::POST,
            "/v1/verify",
            None,
            Some(json!({"key": unknown.expose()})),
        )
        .await;
    assert_eq!((r.status, r.code()), (503, "UNAVAILABLE"));
    tokio::time::sleep(Duration::from_millis(400)).await; // a few failed flushes

    proxy.restore();
    let started = Instant::now();
    loop {
        let ready = app
            .http
            .get(format!("{}/readyz", app.url))
            .send()
            .await
            .unwrap();
        if ready.status().as_u16() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the store came back but keyward did not notice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.flush().await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(k.body["call_count"], 22, "every buffered count was written");
}
