//! What the HTTP benchmarks share: a real keyward server on loopback (port 0) over a store URL,
//! with an admin token.

use std::sync::Arc;

use keyward_core::model::{Actor, Role};
use keyward_core::secret::Secret;
use keyward_core::time::SystemClock;
use keyward_server::authz::Ctx;
use keyward_server::{service, AppState, Config};

/// A server on `db` (a store URL): its base URL, an admin token and its state.
#[allow(dead_code)] // not every benchmark that shares this module uses both
pub async fn serve(db: &str) -> (String, Secret, AppState) {
    serve_with(db, Config::default()).await
}

/// [`serve`] with `config`.
pub async fn serve_with(db: &str, config: Config) -> (String, Secret, AppState) {
    let store = keyward_store::open(db).await.expect("store");
    let state = AppState::new(store, Arc::new(SystemClock), config);
    let ctx = Ctx::operator(Actor::cli("bench"));
    let (_, admin) = service::create_token(
        state.records(),
        &ctx.allow().expect("operator"),
        service::CreateToken {
            name: "admin".into(),
            role: Role::Admin,
            keyspace_ids: None,
            ttl_secs: None,
        },
    )
    .await
    .expect("token");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let st = state.clone();
    tokio::spawn(async move {
        let _ = keyward_server::serve(listener, st, std::future::pending()).await;
    });
    (url, admin, state)
}
