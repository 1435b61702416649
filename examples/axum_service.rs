//! An axum service whose routes are guarded by keyward (the `tower` feature of
//! `keyward-client`).
//!
//! Run keyward (`cargo run -- serve`), create a keyspace and a key (see the README), then:
//!
//! ```text
//! KEYWARD_URL=http://127.0.0.1:8080 cargo run --example axum_service
//! curl -H "Authorization: Bearer <key>" http://127.0.0.1:3000/whoami
//! curl -H "Authorization: Bearer <key>" http://127.0.0.1:3000/orders   # needs orders:read
//! ```
//!
//! `KEYWARD_TOKEN` is sent when set (a verifier token, for servers started with
//! `KEYWARD_VERIFY_REQUIRES_TOKEN=true`); `LISTEN` sets the address (default 127.0.0.1:3000).

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use keyward_client::layer::{KeywardLayer, VerifiedKey};
use keyward_client::Client;
use serde_json::{json, Value};

async fn whoami(key: VerifiedKey) -> Json<Value> {
    Json(json!({
        "key_id": key.key_id(),
        "keyspace_id": key.keyspace_id(),
        "owner": key.owner,
        "scopes": key.scopes,
        "meta": key.meta,
    }))
}

async fn orders(key: VerifiedKey) -> Json<Value> {
    Json(json!({"owner": key.owner, "orders": []}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KEYWARD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let mut client = Client::builder(url);
    if let Ok(t) = std::env::var("KEYWARD_TOKEN") {
        client = client.token(t);
    }
    let kw = client.build()?;
    let app = Router::new()
        .route(
            "/orders",
            get(orders).layer(KeywardLayer::new(kw.clone()).require_scopes(["orders:read"])),
        )
        .route("/whoami", get(whoami).layer(KeywardLayer::new(kw)))
        .route("/healthz", get(|| async { "ok" }));
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // ConnectInfo lets the layer send the caller's address (for keys limited to CIDRs).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
