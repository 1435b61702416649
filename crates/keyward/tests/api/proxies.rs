//! Real proxies in front of keyward: nginx (`auth_request`) and Caddy (`forward_auth`), each
//! started on loopback with the configuration printed in `docs/proxies.md`, verbatim but for the
//! addresses (the test reads the code block out of the document), in front of a small upstream
//! that echoes what reached it. Without nginx or Caddy installed the test prints SKIPPED (and
//! fails under `CI=true`, where `.ci/run` installs both).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both;
use crate::helpers::{manual, TempDir, TestApp};

/// The code block of `lang` in `docs/proxies.md` that follows `heading`.
fn doc_block(heading: &str, lang: &str) -> String {
    let doc = include_str!("../../../../docs/proxies.md");
    let from = doc.find(heading).expect("the section");
    let open = format!("```{lang}\n");
    let start = doc[from..].find(&open).expect("the code block") + from + open.len();
    let end = doc[start..].find("```").expect("its end") + start;
    doc[start..end].to_string()
}

/// `text` with `from` replaced by `to`, which must occur in it.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the documented configuration no longer holds {from:?}"
    );
    text.replace(from, to)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Where `program` runs from (the `PATH`, or `/usr/sbin` for a user whose `PATH` lacks it);
/// otherwise SKIPPED (or a failure under CI).
fn installed(program: &str, test: &str) -> Option<String> {
    for candidate in [program.to_string(), format!("/usr/sbin/{program}")] {
        let runs = Command::new(&candidate)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if runs {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {program} is not installed"
    );
    keyward_store::testing::announce_skip(&format!(
        "SKIPPED {test}: {program} is not installed (apt-get install {program})"
    ));
    None
}

/// An upstream that answers 200 with what reached it: path, and the headers it should or should
/// not see.
async fn upstream() -> String {
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        axum::Json(json!({
            "path": req.uri().to_string(),
            "key_id": h("x-keyward-key-id"),
            "keyspace_id": h("x-keyward-keyspace-id"),
            "owner": h("x-keyward-owner"),
            "scopes": h("x-keyward-scopes"),
            "name": h("x-keyward-name"),
            "token": h("x-keyward-token"),
        }))
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// A proxy process, stopped when dropped.
struct Proxy {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_up(p: &mut Proxy, log: &std::path::Path) {
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(p.url.trim_start_matches("http://"))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "the proxy exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx with the documented server block; keyward at `keyward`, the upstream at `up`.
async fn nginx(program: &str, keyward: &str, up: &str) -> Proxy {
    let dir = TempDir::new();
    let port = free_port();
    let mut server = doc_block("## nginx", "nginx");
    server = replaced(
        &server,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port};"),
    );
    server = replaced(
        &server,
        "server 127.0.0.1:8080;",
        &format!("server {keyward};"),
    );
    server = replaced(&server, "http://127.0.0.1:9000;", &format!("http://{up};"));
    let d = dir.0.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n{server}\n}}\n"
    );
    std::fs::write(dir.0.join("nginx.conf"), conf).unwrap();
    let log = dir.0.join("error.log");
    let child = Command::new(program)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-e"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proxy {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    wait_until_up(&mut p, &log).await;
    p
}

/// Caddy with the documented site block; keyward at `keyward`, the upstream at `up`.
async fn caddy(program: &str, keyward: &str, up: &str) -> Proxy {
    let dir = TempDir::new();
    let port = free_port();
    let mut site = doc_block("## Caddy", "caddyfile");
    site = replaced(
        &site,
        "api.example.com {",
        &format!("http://127.0.0.1:{port} {{"),
    );
    site = replaced(
        &site,
        "forward_auth 127.0.0.1:8080 {",
        &format!("forward_auth {keyward} {{"),
    );
    site = replaced(
        &site,
        "reverse_proxy 127.0.0.1:9000",
        &format!("reverse_proxy {up}"),
    );
    // Global options: no admin endpoint (tests run side by side), no certificates.
    let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
    let file = dir.0.join("Caddyfile");
    std::fs::write(&file, conf).unwrap();
    let log = dir.0.join("caddy.log");
    let child = Command::new(program)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", &dir.0)
        .env("XDG_DATA_HOME", &dir.0)
        .env("XDG_CONFIG_HOME", &dir.0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proxy {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    wait_until_up(&mut p, &log).await;
    p
}

/// GET `path` through the proxy with `headers`: status, Retry-After, body.
async fn get(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let client = reqwest::Client::new();
    let mut r = client.get(format!("{}{path}", p.url));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = res.text().await.unwrap();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// What both documented configurations must do, whatever the proxy.
async fn holds_the_contract(app: &TestApp, p: &Proxy, proxy: &str) {
    // The snippets require `orders:read`; the keyspace also says `/admin/**` needs `admin`.
    let prefix = format!(
        "p{}",
        keyward_core::keyformat::base62_random(8).to_lowercase()
    );
    let ks = app
        .post(
            "/v1/keyspaces",
            json!({"name": "proxied", "prefix": prefix, "routes": [{"path": "/admin/**", "scopes": ["admin"]}]}),
        )
        .await
        .expect(201)
        .id();
    let (id, key) = app
        .key(
            &ks,
            json!({"scopes": ["orders:read"], "owner": "team-a", "name": "proxied key"}),
        )
        .await;
    let bearer = format!("Bearer {key}");

    // A valid key reaches the upstream with its identity; forged identity headers are replaced.
    let (status, _, body) = get(
        p,
        "/orders/1?x=1",
        &[
            ("authorization", &bearer),
            ("x-keyward-owner", "forged"),
            ("x-keyward-token", "kwt_forged"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{proxy}: {body}");
    assert_eq!(body["key_id"], id.as_str(), "{proxy}: {body}");
    assert_eq!(body["keyspace_id"], ks.as_str(), "{proxy}");
    assert_eq!(body["owner"], "team-a", "{proxy}");
    assert_eq!(body["scopes"], "orders:read", "{proxy}");
    assert_eq!(body["name"], "proxied key", "{proxy}");
    assert!(
        body["token"].is_null() || body["token"] == "",
        "{proxy}: {body}"
    );
    assert_eq!(body["path"], "/orders/1?x=1", "{proxy}");
    // X-API-Key works too.
    assert_eq!(
        get(p, "/orders/1", &[("x-api-key", &key)]).await.0,
        200,
        "{proxy}"
    );

    // No key, or a key in the query string (never read from there): 401.
    assert_eq!(get(p, "/orders/1", &[]).await.0, 401, "{proxy}");
    for q in ["key", "api_key", "apikey", "access_token"] {
        let (status, _, _) = get(p, &format!("/orders/1?{q}={key}"), &[]).await;
        assert_eq!(status, 401, "{proxy}: ?{q}=");
    }

    // A route rule's scope is enforced: 403.
    let (status, _, _) = get(p, "/admin/users", &[("authorization", &bearer)]).await;
    assert_eq!(status, 403, "{proxy}");

    // A key without the snippet's scope: 403.
    let (_, other) = app.key(&ks, json!({"scopes": ["billing:read"]})).await;
    let (status, _, _) = get(
        p,
        "/orders/1",
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert_eq!(status, 403, "{proxy}");

    // Over its rate limit: 429 with Retry-After passed through.
    let (_, limited) = app
        .key(
            &ks,
            json!({"scopes": ["orders:read"], "ratelimit": {"limit": 1, "window_secs": 60}}),
        )
        .await;
    let auth = format!("Bearer {limited}");
    assert_eq!(
        get(p, "/orders/1", &[("authorization", &auth)]).await.0,
        200,
        "{proxy}"
    );
    let (status, retry, _) = get(p, "/orders/1", &[("authorization", &auth)]).await;
    assert_eq!(status, 429, "{proxy}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "{proxy}: Retry-After {retry}");

    // Disabled, revoked, expired: 401, as documented.
    let (dis_id, disabled) = app.key(&ks, json!({"scopes": ["orders:read"]})).await;
    app.patch(&format!("/v1/keys/{dis_id}"), json!({"enabled": false}))
        .await
        .expect(200);
    let (status, _, _) = get(
        p,
        "/orders/1",
        &[("authorization", &format!("Bearer {disabled}"))],
    )
    .await;
    assert_eq!(status, 401, "{proxy}: disabled");
    app.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "proxy test"}),
    )
    .await
    .expect(200);
    assert_eq!(
        get(p, "/orders/1", &[("authorization", &bearer)]).await.0,
        401,
        "{proxy}: revoked"
    );
    let (_, expiring) = app
        .key(&ks, json!({"scopes": ["orders:read"], "ttl_secs": 60}))
        .await;
    let auth = format!("Bearer {expiring}");
    assert_eq!(
        get(p, "/orders/1", &[("authorization", &auth)]).await.0,
        200,
        "{proxy}"
    );
    app.advance(61);
    assert_eq!(
        get(p, "/orders/1", &[("authorization", &auth)]).await.0,
        401,
        "{proxy}: expired"
    );
}

async fn nginx_with_the_documented_configuration(app: TestApp) {
    let Some(program) = installed("nginx", "nginx_with_the_documented_configuration") else {
        return;
    };
    let up = upstream().await;
    let p = nginx(&program, &app.addr.to_string(), &up).await;
    holds_the_contract(&app, &p, "nginx").await;
}
both!(nginx_with_the_documented_configuration, manual);

async fn caddy_with_the_documented_configuration(app: TestApp) {
    let Some(program) = installed("caddy", "caddy_with_the_documented_configuration") else {
        return;
    };
    let up = upstream().await;
    let p = caddy(&program, &app.addr.to_string(), &up).await;
    holds_the_contract(&app, &p, "caddy").await;
    // Caddy passes keyward's JSON answer through.
    let (status, _, body) = get(&p, "/orders/1", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
}
both!(caddy_with_the_documented_configuration, manual);
