//! The tower layer's cost per request over a bare axum handler in the same process: a real
//! `keyward` server state (SQLite in a temporary directory) serves `POST /v1/verify` on
//! loopback, and one router is called in-process (`oneshot`) with and without the layer.
//!
//! `cargo bench -p keyward --bench middleware`
//!
//! - `bare`: the handler alone (what the service costs without keyward);
//! - `layer`: every request verified through keyward over HTTP (one loopback round trip);
//! - `layer_cached`: with `cache_valid_answers` (the opt-in bounded staleness);
//! - `verify_call`: `Client::verify` alone, the round trip the layer adds.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use keyward_client::layer::{KeywardLayer, VerifiedKey};
use keyward_client::{Client, CreateKey, CreateKeyspace, VerifyRequest};
use tower::ServiceExt;

async fn handler() -> &'static str {
    "ok"
}

async fn guarded(key: VerifiedKey) -> String {
    key.key_id().to_string()
}

struct Setup {
    url: String,
    key: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A temporary directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let d = std::env::temp_dir().join(format!("keyward-bench-mw-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("temporary directory");
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start() -> Setup {
    let dir = tempdir::Dir::new();
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let (url, admin, _state) = common::serve(&db).await;
    let kw = Client::builder(url.clone())
        .token(admin.expose())
        .build()
        .expect("client");
    let ks = kw
        .create_keyspace(&CreateKeyspace {
            name: "bench".into(),
            prefix: "acme".into(),
            ..CreateKeyspace::default()
        })
        .await
        .expect("keyspace");
    let created = kw
        .create_key(&CreateKey {
            keyspace_id: ks.id,
            name: "bench".into(),
            owner: Some("acme".into()),
            ..CreateKey::default()
        })
        .await
        .expect("key");
    Setup {
        url,
        key: created.plaintext.expose().to_string(),
        _dir: dir,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let setup = rt.block_on(start());
    let kw = Client::builder(setup.url.clone()).build().expect("client");
    let bare = Router::new().route("/", get(handler));
    let layered = Router::new()
        .route("/", get(guarded))
        .route_layer(KeywardLayer::new(kw.clone()));
    let cached = Router::new().route("/", get(guarded)).route_layer(
        KeywardLayer::new(kw.clone()).cache_valid_answers(Duration::from_secs(60), 10_000),
    );
    let request = || {
        Request::builder()
            .uri("/")
            .header("x-api-key", setup.key.as_str())
            .body(Body::empty())
            .expect("request")
    };
    // Sanity: the guarded routes answer 200.
    for app in [&layered, &cached] {
        let res = rt.block_on(app.clone().oneshot(request())).expect("call");
        assert_eq!(res.status(), 200);
    }

    let mut g = c.benchmark_group("middleware");
    g.measurement_time(Duration::from_secs(5));
    for (name, app) in [
        ("bare", &bare),
        ("layer", &layered),
        ("layer_cached", &cached),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let res = app.clone().oneshot(request()).await.expect("call");
                        assert_eq!(res.status(), 200);
                    }
                    started.elapsed()
                })
            })
        });
    }
    let req = VerifyRequest::new(setup.key.clone());
    g.bench_function("verify_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let a = kw.verify(&req).await.expect("verify");
                    assert!(a.valid);
                }
                started.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
