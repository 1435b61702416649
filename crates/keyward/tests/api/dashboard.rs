//! The web dashboard over HTTP, as a browser would drive it (cookies and forms by hand):
//! sign-in and sessions, CSRF refusals, role refusals, the first-run setup link, the identical
//! work for unknown users and wrong passwords, throttling, the security headers, and the
//! usage charts, webhooks and inventory report pages.

use keyward_core::model::{Actor, Role};
use keyward_core::secret::Secret;
use keyward_server::accounts;
use keyward_server::authz::Ctx;
use serde_json::json;
use std::sync::atomic::Ordering;

use crate::both;
use crate::helpers::{manual, spawn_with, Backend, Options, Receiver, TestApp};

pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// A client that keeps no cookies and follows no redirects: tests look at both.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn cli_ctx() -> Ctx {
    Ctx::operator(Actor::cli("test"))
}

pub(crate) async fn add_user(app: &TestApp, email: &str, role: Role) -> String {
    accounts::create_user(
        app.state.records(),
        &cli_ctx().allow().unwrap(),
        email,
        role,
        Secret::new(PASSWORD.into()),
    )
    .await
    .unwrap()
    .id
}

/// The value of `name="csrf"` in a page.
fn csrf_in(html: &str) -> String {
    let i = html.find(r#"name="csrf" value=""#).expect("a csrf field");
    let rest = &html[i + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// `name=value` of a Set-Cookie header with this name.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v.split(';').next().unwrap().to_string();
            (value, v.to_string())
        })
}

/// A signed-in browser: the session cookie and the session's CSRF token.
pub(crate) struct Browser {
    url: String,
    http: reqwest::Client,
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

impl Browser {
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }
    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

/// Fetches the sign-in form (its pre-session cookie and token) and posts the credentials.
async fn attempt(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    let http = client();
    let page = http.get(format!("{}/login", app.url)).send().await.unwrap();
    let (form_cookie, _) = set_cookie(&page, "kw_form").expect("a pre-session cookie");
    let token = csrf_in(&page.text().await.unwrap());
    http.post(format!("{}/login", app.url))
        .header("cookie", form_cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("email", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

pub(crate) async fn sign_in(app: &TestApp, email: &str) -> Browser {
    let res = attempt(app, email, PASSWORD).await;
    assert_eq!(res.status(), 303, "sign-in did not redirect");
    let (cookie, _) = set_cookie(&res, "kw_session").expect("a session cookie");
    let http = client();
    let home = http
        .get(format!("{}/", app.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), 200);
    let csrf = csrf_in(&home.text().await.unwrap());
    Browser {
        url: app.url.clone(),
        http,
        cookie,
        csrf,
    }
}

async fn signing_in_gives_a_strict_httponly_session_that_signing_out_ends(app: TestApp) {
    add_user(&app, "Alice@Example.com", Role::Admin).await;
    let res = attempt(&app, "alice@example.com", PASSWORD).await;
    assert_eq!(res.status(), 303);
    let (_, header) = set_cookie(&res, "kw_session").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(header.contains(attr), "{header} lacks {attr}");
    }
    let b = sign_in(&app, "alice@example.com").await;
    let page = b.get("/keys").await;
    assert_eq!(page.status(), 200);
    // Only the session id's hash is stored.
    let session_id = b.cookie.trim_start_matches("kw_session=").to_string();
    assert!(app
        .state
        .store()
        .users()
        .session(&session_id, app.state.clock().now())
        .await
        .unwrap()
        .is_none());

    let out = b.post("/logout", &[("csrf", b.csrf.as_str())]).await;
    assert_eq!(out.status(), 303);
    let after = b.get("/keys").await;
    assert_eq!(after.status(), 303);
    assert!(after.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login"));
}
both!(signing_in_gives_a_strict_httponly_session_that_signing_out_ends);

async fn pages_without_a_session_redirect_to_sign_in_and_carry_security_headers(app: TestApp) {
    add_user(&app, "a@example.com", Role::Admin).await;
    let res = client()
        .get(format!("{}/keys", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/login?next=/keys");
    let b = sign_in(&app, "a@example.com").await;
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({})).await;
    let detail = format!("/keys/{id}");
    for path in [
        "/",
        "/keys",
        "/keys/new",
        detail.as_str(),
        "/keyspaces",
        "/audit",
        "/tokens",
        "/webhooks",
        "/reports",
        "/login",
    ] {
        let res = b.get(path).await;
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("<script>"), "{path} has an inline script");
        assert!(!body.contains("style=\""), "{path} has an inline style");
    }
    let css = b.get("/static/style.css").await;
    assert!(css.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    // The API keeps its JSON answers.
    let api = client()
        .get(format!("{}/v1/keys", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
}
both!(pages_without_a_session_redirect_to_sign_in_and_carry_security_headers);

async fn a_form_post_without_the_sessions_csrf_token_changes_nothing(app: TestApp) {
    add_user(&app, "m@example.com", Role::Manager).await;
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    let b = sign_in(&app, "m@example.com").await;
    let path = format!("/keys/{id}/revoke");
    // No token, a wrong token, another session's token.
    let other = sign_in(&app, "m@example.com").await;
    for csrf in [None, Some("0".repeat(64)), Some(other.csrf.clone())] {
        let mut form = vec![("reason", "csrf test"), ("confirm", "yes")];
        if let Some(c) = &csrf {
            form.push(("csrf", c.as_str()));
        }
        let res = b.post(&path, &form).await;
        assert_eq!(res.status(), 403, "csrf {csrf:?}");
        assert!(res.text().await.unwrap().contains("CSRF"));
    }
    // A browser's cross-site post is refused even with the right token.
    let res = b
        .http
        .post(format!("{}{path}", app.url))
        .header("cookie", &b.cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("csrf", b.csrf.as_str()),
            ("reason", "x"),
            ("confirm", "yes"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // So is one whose Origin names another site, token or not; an opaque Origin (what Chromium
    // sends for the dashboard's own forms under `Referrer-Policy: no-referrer`) is judged by
    // Sec-Fetch-Site.
    for (origin, site) in [
        ("http://evil.example", "same-origin"),
        ("https://127.0.0.1.evil.example", "same-origin"),
        ("null", "cross-site"),
    ] {
        let res = b
            .http
            .post(format!("{}{path}", app.url))
            .header("cookie", &b.cookie)
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .form(&[
                ("csrf", b.csrf.as_str()),
                ("reason", "x"),
                ("confirm", "yes"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "Origin: {origin}");
    }
    // The sign-in form needs its pre-session token too.
    let res = client()
        .post(format!("{}/login", app.url))
        .form(&[("email", "m@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.verify_code(&key).await, "VALID");

    // With the token the same form works, and the audit event names the user.
    let res = b
        .post(
            &path,
            &[
                ("csrf", b.csrf.as_str()),
                ("reason", "rotated out"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(app.verify_code(&key).await, "REVOKED");
    // The page's own origin is fine, and so is an opaque one the browser marks same-origin.
    for origin in [app.url.as_str(), "null"] {
        let (id2, _) = app.key(&ks, json!({})).await;
        let res = b
            .http
            .post(format!("{}/keys/{id2}/revoke", app.url))
            .header("cookie", &b.cookie)
            .header("origin", origin)
            .header("sec-fetch-site", "same-origin")
            .form(&[
                ("csrf", b.csrf.as_str()),
                ("reason", "same origin"),
                ("confirm", "yes"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303, "Origin: {origin}");
    }
    let ev = app
        .get(&format!("/v1/audit?target_id={id}&action=key.revoke"))
        .await
        .expect(200);
    let actor = &ev.body["items"][0]["actor"];
    assert_eq!(actor["type"], "user");
    assert_eq!(actor["name"], "m@example.com");
    assert!(actor["id"].as_str().unwrap().starts_with("usr_"));
}
both!(a_form_post_without_the_sessions_csrf_token_changes_nothing);

async fn roles_see_only_their_buttons_and_are_refused_the_rest(app: TestApp) {
    add_user(&app, "v@example.com", Role::Viewer).await;
    add_user(&app, "au@example.com", Role::Auditor).await;
    add_user(&app, "m@example.com", Role::Manager).await;
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;

    let v = sign_in(&app, "v@example.com").await;
    let page = v.get(&format!("/keys/{id}")).await.text().await.unwrap();
    for action in ["revoke", "rotate", "disable", "new-key"] {
        assert!(
            !page.contains(&format!("data-action=\"{action}\"")),
            "viewer sees {action}"
        );
    }
    assert!(
        !page.contains("href=\"/audit\""),
        "viewer sees the audit link"
    );
    for (path, form) in [
        (
            format!("/keys/{id}/revoke"),
            vec![("reason", "x"), ("confirm", "yes")],
        ),
        (format!("/keys/{id}/rotate"), vec![]),
        (format!("/keys/{id}/enabled"), vec![("enabled", "false")]),
        (
            "/keys".to_string(),
            vec![("keyspace_id", ks.as_str()), ("name", "n"), ("owner", "o")],
        ),
        (format!("/keyspaces/{ks}"), vec![("action", "save")]),
        (
            format!("/keyspaces/{ks}/routes"),
            vec![("routes", "/x"), ("unmatched", "deny")],
        ),
        (
            "/tokens".to_string(),
            vec![("name", "t"), ("role", "admin")],
        ),
    ] {
        let mut form = form;
        form.push(("csrf", v.csrf.as_str()));
        let res = v.post(&path, &form).await;
        assert_eq!(res.status(), 403, "viewer POST {path}");
    }
    for path in [
        "/audit",
        "/reports",
        "/reports/inventory.csv",
        "/tokens",
        "/webhooks",
        "/keys/new",
        "/keyspaces/new",
    ] {
        assert_eq!(v.get(path).await.status(), 403, "viewer GET {path}");
    }
    assert_eq!(app.verify_code(&key).await, "VALID");

    let au = sign_in(&app, "au@example.com").await;
    assert_eq!(au.get("/audit").await.status(), 200);
    assert_eq!(au.get("/reports").await.status(), 200);
    assert_eq!(au.get("/tokens").await.status(), 403);
    assert_eq!(au.get("/webhooks").await.status(), 403);
    let res = au
        .post(
            &format!("/keys/{id}/revoke"),
            &[
                ("csrf", au.csrf.as_str()),
                ("reason", "x"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(res.status(), 403);

    let m = sign_in(&app, "m@example.com").await;
    let page = m.get(&format!("/keys/{id}")).await.text().await.unwrap();
    assert!(page.contains("data-action=\"revoke\""));
    assert_eq!(m.get("/keyspaces/new").await.status(), 403);
    assert_eq!(app.verify_code(&key).await, "VALID");
}
both!(roles_see_only_their_buttons_and_are_refused_the_rest);

async fn creating_a_key_shows_its_plaintext_once_with_no_store(app: TestApp) {
    add_user(&app, "m@example.com", Role::Manager).await;
    let ks = app.keyspace(json!({})).await;
    let b = sign_in(&app, "m@example.com").await;
    let res = b
        .post(
            "/keys",
            &[
                ("csrf", b.csrf.as_str()),
                ("keyspace_id", ks.as_str()),
                ("name", "ui key"),
                ("owner", "team-ui"),
                ("scopes", "a:read, b:*"),
                ("labels", "env=prod"),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    let html = res.text().await.unwrap();
    let i = html.find("id=\"plaintext\"").unwrap();
    let rest = &html[i..];
    let key = rest[rest.find('>').unwrap() + 1..rest.find("</code>").unwrap()].to_string();
    let v = app.verify(json!({"key": key, "scopes": ["b:write"]})).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["labels"], json!({"env": "prod"}));
    let id = v["key_id"].as_str().unwrap();
    let detail = b.get(&format!("/keys/{id}")).await.text().await.unwrap();
    assert!(!detail.contains(&key), "the key page shows the plaintext");
    let list = b.get("/keys?q=ui").await.text().await.unwrap();
    assert!(list.contains("ui key") && !list.contains(&key));
    // A policy violation comes back as the form with the reason.
    let res = b
        .post(
            "/keys",
            &[
                ("csrf", b.csrf.as_str()),
                ("keyspace_id", ks.as_str()),
                ("name", "no owner"),
            ],
        )
        .await;
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("requires an owner"));
}
both!(creating_a_key_shows_its_plaintext_once_with_no_store);

async fn unknown_users_and_wrong_passwords_cost_one_password_check_each(app: TestApp) {
    add_user(&app, "known@example.com", Role::Viewer).await;
    let checks = || app.state.sign_ins().password_checks.load(Ordering::SeqCst);
    for (email, password) in [
        ("known@example.com", "wrong password here"),
        ("nobody@example.com", "wrong password here"),
        ("not an email", "x"),
        ("known@example.com", &"x".repeat(5000)[..]),
    ] {
        let before = checks();
        let res = attempt(&app, email, password).await;
        assert_eq!(res.status(), 401, "{email}");
        assert!(res
            .text()
            .await
            .unwrap()
            .contains("Email or password is incorrect."));
        assert_eq!(checks(), before + 1, "{email}: one Argon2 verification");
    }
    // A disabled user is an unknown user, with the right password too.
    accounts::disable_user(
        app.state.records(),
        &cli_ctx().allow().unwrap(),
        "known@example.com",
    )
    .await
    .unwrap();
    let before = checks();
    let res = attempt(&app, "known@example.com", PASSWORD).await;
    assert_eq!(res.status(), 401);
    assert_eq!(checks(), before + 1);
}
both!(unknown_users_and_wrong_passwords_cost_one_password_check_each);

async fn failed_sign_ins_are_throttled_per_account(app: TestApp) {
    add_user(&app, "t@example.com", Role::Viewer).await;
    for _ in 0..accounts::LOGIN_FAILURES_PER_ACCOUNT {
        assert_eq!(
            attempt(&app, "t@example.com", "not the password")
                .await
                .status(),
            401
        );
    }
    let before = app.state.sign_ins().password_checks.load(Ordering::SeqCst);
    // Even the right password waits now, and costs no hashing.
    let res = attempt(&app, "T@example.com", PASSWORD).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        app.state.sign_ins().password_checks.load(Ordering::SeqCst),
        before
    );
}
both!(failed_sign_ins_are_throttled_per_account);

async fn disabling_a_user_ends_its_sessions_and_is_audited(app: TestApp) {
    let id = add_user(&app, "d@example.com", Role::Manager).await;
    let b = sign_in(&app, "d@example.com").await;
    assert_eq!(b.get("/keys").await.status(), 200);
    accounts::disable_user(
        app.state.records(),
        &cli_ctx().allow().unwrap(),
        "d@example.com",
    )
    .await
    .unwrap();
    assert_eq!(b.get("/keys").await.status(), 303);
    // A second disable writes nothing.
    accounts::disable_user(
        app.state.records(),
        &cli_ctx().allow().unwrap(),
        "d@example.com",
    )
    .await
    .unwrap();
    let ev = app
        .get(&format!("/v1/audit?target_id={id}"))
        .await
        .expect(200);
    let items = ev.body["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["user.disable", "user.create"]);
    for e in items {
        assert_eq!(e["target_type"], "user");
        assert_eq!(e["actor"]["type"], "cli");
        assert!(
            !e.to_string().contains("argon2"),
            "a password hash in the audit trail"
        );
    }
    // Emails are unique whatever their case.
    let again = accounts::create_user(
        app.state.records(),
        &cli_ctx().allow().unwrap(),
        "D@EXAMPLE.com",
        Role::Viewer,
        Secret::new(PASSWORD.into()),
    )
    .await;
    assert_eq!(again.unwrap_err().code.as_str(), "CONFLICT");
    let verify = app.get("/v1/audit/verify").await.expect(200);
    assert_eq!(verify.body["ok"], true);
}
both!(disabling_a_user_ends_its_sessions_and_is_audited);

async fn post_setup(app: &TestApp, token: &str, email: &str) -> reqwest::Response {
    let http = client();
    let page = http
        .get(format!("{}/setup?token={token}", app.url))
        .send()
        .await
        .unwrap();
    let (form_cookie, csrf) = match set_cookie(&page, "kw_form") {
        Some((c, _)) => {
            let html = page.text().await.unwrap();
            (c, csrf_in(&html))
        }
        // The link is no longer valid: post anyway, with a form cookie of our own.
        None => {
            let c = "kw_form=abcdefghijklmnopqrstuvwxyz".to_string();
            let t = accounts::csrf_token("abcdefghijklmnopqrstuvwxyz");
            (c, t)
        }
    };
    http.post(format!("{}/setup", app.url))
        .header("cookie", form_cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", token),
            ("email", email),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
}

async fn the_setup_link_works_once_and_expires_within_an_hour(app: TestApp) {
    let token = accounts::issue_setup_token(app.state.records())
        .await
        .unwrap()
        .unwrap();
    let res = post_setup(&app, token.expose(), "first@example.com").await;
    assert_eq!(res.status(), 303);
    assert!(
        set_cookie(&res, "kw_session").is_some(),
        "the admin is signed in"
    );
    let users = app.state.store().users().list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].role, Role::Admin);
    // Single use: neither the page nor the form work again, and no new link is issued.
    let again = client()
        .get(format!("{}/setup?token={}", app.url, token.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 403);
    assert_eq!(
        post_setup(&app, token.expose(), "second@example.com")
            .await
            .status(),
        403
    );
    assert!(accounts::issue_setup_token(app.state.records())
        .await
        .unwrap()
        .is_none());
    assert_eq!(app.state.store().users().count_users().await.unwrap(), 1);
    let ev = app.get("/v1/audit?action=user.create").await.expect(200);
    assert_eq!(ev.body["items"][0]["actor"]["type"], "user");
    assert_eq!(ev.body["items"][0]["target_type"], "user");
}
both!(the_setup_link_works_once_and_expires_within_an_hour, manual);

async fn an_unused_setup_link_stops_working_after_an_hour(app: TestApp) {
    let token = accounts::issue_setup_token(app.state.records())
        .await
        .unwrap()
        .unwrap();
    let page = client()
        .get(format!("{}/setup?token={}", app.url, token.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        client()
            .get(format!("{}/setup?token=guessed", app.url))
            .send()
            .await
            .unwrap()
            .status()
            == 403
    );
    app.advance(accounts::SETUP_TTL_SECS + 1);
    assert_eq!(
        post_setup(&app, token.expose(), "late@example.com")
            .await
            .status(),
        403
    );
    assert_eq!(app.state.store().users().count_users().await.unwrap(), 0);
}
both!(an_unused_setup_link_stops_working_after_an_hour, manual);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_after_their_idle_timeout() {
    let opts = Options {
        manual_clock: true,
        ..Options::default()
    };
    let app = spawn_with(Backend::Sqlite, opts).await.unwrap();
    add_user(&app, "idle@example.com", Role::Viewer).await;
    let b = sign_in(&app, "idle@example.com").await;
    app.advance(accounts::SESSION_IDLE_SECS - 60);
    assert_eq!(b.get("/keys").await.status(), 200);
    app.advance(accounts::SESSION_IDLE_SECS + 1);
    assert_eq!(b.get("/keys").await.status(), 303);
}

async fn the_cli_creates_and_disables_users_on_the_database(app: TestApp) {
    let run = |args: Vec<String>, stdin: &'static str| {
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
    };
    let db = app.db_url.clone();
    let create = |email: &str, pw: &'static str| {
        run(
            vec![
                "user",
                "create",
                "--email",
                email,
                "--role",
                "auditor",
                "--password-stdin",
                "--database-url",
                &db,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            pw,
        )
    };
    let out = create("cli@example.com", "correct horse battery staple\n")
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("usr_"));
    let short = create("short@example.com", "short\n").await.unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12"));
    let b = sign_in(&app, "cli@example.com").await;
    assert_eq!(b.get("/audit").await.status(), 200);
    let out = run(
        vec![
            "user",
            "disable",
            "--email",
            "cli@example.com",
            "--database-url",
            &db,
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "",
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.get("/audit").await.status(), 303);
    let ev = app.get("/v1/audit?action=user.disable").await.expect(200);
    assert_eq!(ev.body["items"][0]["actor"]["type"], "cli");
    assert_eq!(ev.body["items"][0]["target_type"], "user");
}
both!(the_cli_creates_and_disables_users_on_the_database);

// ---------------------------------------------------------------- usage, webhooks, reports

/// The start tag of the chart whose title and desc ids start with `id`.
fn chart_tag<'a>(html: &'a str, id: &str) -> &'a str {
    let i = html
        .find(&format!(r#"aria-labelledby="{id}-title {id}-desc""#))
        .unwrap_or_else(|| panic!("no chart {id}"));
    let start = html[..i].rfind("<svg").unwrap();
    let end = i + html[i..].find('>').unwrap();
    &html[start..=end]
}

/// The value of attribute `name` in a start tag.
fn attr(tag: &str, name: &str) -> String {
    let key = format!(" {name}=\"");
    let i = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    tag[i..i + tag[i..].find('"').unwrap()].to_string()
}

/// The markup of the chart `id` (its `<svg>` element).
fn chart_svg<'a>(html: &'a str, id: &str) -> &'a str {
    let tag = chart_tag(html, id);
    let start = html.find(tag).unwrap();
    &html[start..start + html[start..].find("</svg>").unwrap()]
}

/// The `data-n` of every bar segment of one outcome in a chart.
fn segments(svg: &str, code: &str) -> Vec<i64> {
    let key = format!(r#"data-code="{code}" data-n=""#);
    svg.match_indices(&key)
        .map(|(i, _)| {
            let rest = &svg[i + key.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

async fn the_usage_chart_shows_real_verifications_by_hour_and_outcome(app: TestApp) {
    add_user(&app, "v@example.com", Role::Viewer).await;
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"scopes": ["orders:read"]})).await;
    for _ in 0..3 {
        app.verify(json!({"key": key, "ip": "203.0.113.7"})).await;
    }
    app.flush().await;
    app.advance(2 * 3600);
    for _ in 0..2 {
        app.verify(json!({"key": key, "ip": "203.0.113.7"})).await;
        app.verify(json!({"key": key, "scopes": ["orders:write"]}))
            .await;
    }
    // A second address is a pattern change (the first one ever is not).
    app.verify(json!({"key": key, "ip": "198.51.100.9", "scopes": ["orders:write"]}))
        .await;
    app.flush().await;

    let b = sign_in(&app, "v@example.com").await;
    let html = b.get(&format!("/keys/{id}")).await.text().await.unwrap();
    let tag = chart_tag(&html, "key-usage");
    assert_eq!(attr(tag, "data-view"), "24h");
    assert_eq!(attr(tag, "data-valid"), "5");
    assert_eq!(attr(tag, "data-denied"), "3");
    assert_eq!(attr(tag, "role"), "img");
    let svg = chart_svg(&html, "key-usage");
    assert_eq!(
        segments(svg, "VALID"),
        [3, 2],
        "one bar per hour, oldest first"
    );
    assert_eq!(segments(svg, "INSUFFICIENT_SCOPE"), [3]);
    assert!(svg.contains(r#"<title id="key-usage-title">"#));
    assert!(svg.contains("5 valid, 3 denied (3 Insufficient scope)"));
    assert!(html.contains("Insufficient scope"), "the legend");
    assert!(!html.contains("style=\""), "no inline style");
    // Recent source addresses and the key's anomalies.
    let sources = &html[html.find("id=\"sources\"").unwrap()..];
    assert!(sources.contains("203.0.113.7") && sources.contains("198.51.100.9"));
    let anomalies = &html[html.find("id=\"anomalies\"").unwrap()..];
    assert!(anomalies.contains("data-kind=\"new_source\""));
    assert!(anomalies.contains("First use from 198.51.100.9"));

    // The 30-day view puts both hours in today's bar.
    let month = b
        .get(&format!("/keys/{id}?usage=30d"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(attr(chart_tag(&month, "key-usage"), "data-view"), "30d");
    assert_eq!(segments(chart_svg(&month, "key-usage"), "VALID"), [5]);

    // The overview counts every key over the last 24 hours, and lists the anomaly.
    let other = app.key(&ks, json!({})).await.1;
    app.verify(json!({"key": other})).await;
    app.flush().await;
    let home = b.get("/").await.text().await.unwrap();
    let tag = chart_tag(&home, "overview-usage");
    assert_eq!(attr(tag, "data-valid"), "6");
    assert_eq!(attr(tag, "data-denied"), "3");
    assert!(home.contains("data-kind=\"new_source\""));
    assert!(
        home.contains(&format!("href=\"/keys/{id}\"")),
        "busiest keys link to them"
    );

    // A day later the 24-hour chart is empty and says so; the 30-day one still counts.
    app.advance(25 * 3600);
    let b = sign_in(&app, "v@example.com").await;
    let html = b.get(&format!("/keys/{id}")).await.text().await.unwrap();
    assert_eq!(attr(chart_tag(&html, "key-usage"), "data-valid"), "0");
    assert!(html.contains("No verifications in the last 24 hours"));
    let month = b
        .get(&format!("/keys/{id}?usage=30d"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(attr(chart_tag(&month, "key-usage"), "data-valid"), "5");
}
both!(
    the_usage_chart_shows_real_verifications_by_hour_and_outcome,
    manual
);

async fn a_viewer_or_manager_neither_sees_nor_may_use_the_webhooks_page(app: TestApp) {
    add_user(&app, "v@example.com", Role::Viewer).await;
    add_user(&app, "m@example.com", Role::Manager).await;
    add_user(&app, "a@example.com", Role::Admin).await;
    let hook = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["key.created"]}),
        )
        .await
        .expect(201)
        .id();
    for who in ["v@example.com", "m@example.com"] {
        let b = sign_in(&app, who).await;
        let home = b.get("/").await.text().await.unwrap();
        assert!(!home.contains("href=\"/webhooks\""), "{who} sees the link");
        assert_eq!(b.get("/webhooks").await.status(), 403, "{who}");
        let res = b
            .post(
                "/webhooks",
                &[
                    ("csrf", b.csrf.as_str()),
                    ("url", "http://127.0.0.1:9/evil"),
                    ("events", "key.created"),
                ],
            )
            .await;
        assert_eq!(res.status(), 403, "{who} creates");
        let res = b
            .post(
                &format!("/webhooks/{hook}/delete"),
                &[("csrf", b.csrf.as_str()), ("confirm", "yes")],
            )
            .await;
        assert_eq!(res.status(), 403, "{who} deletes");
    }
    let list = app.get("/v1/webhooks").await.expect(200);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "nothing created");
    assert_eq!(items[0]["id"], hook, "nothing deleted");

    // An admin without the CSRF token is refused too.
    let a = sign_in(&app, "a@example.com").await;
    assert!(a
        .get("/")
        .await
        .text()
        .await
        .unwrap()
        .contains("href=\"/webhooks\""));
    let res = a
        .post(&format!("/webhooks/{hook}/delete"), &[("confirm", "yes")])
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(app.get("/v1/webhooks").await.body["items"][0]["id"], hook);
}
both!(a_viewer_or_manager_neither_sees_nor_may_use_the_webhooks_page);

async fn creating_a_webhook_shows_its_secret_once_then_its_deliveries(app: TestApp) {
    add_user(&app, "a@example.com", Role::Admin).await;
    let rx = Receiver::start(1).await;
    let b = sign_in(&app, "a@example.com").await;
    // A URL the service refuses comes back as the form, with the reason and the values.
    let res = b
        .post(
            "/webhooks",
            &[
                ("csrf", b.csrf.as_str()),
                ("url", "ftp://example.com/x"),
                ("events", "key.revoked"),
            ],
        )
        .await;
    assert_eq!(res.status(), 400);
    let html = res.text().await.unwrap();
    assert!(html.contains("absolute http://"), "the reason");
    assert!(html.contains(r#"value="ftp://example.com/x""#));
    assert!(html.contains(r#"value="key.revoked" checked"#));

    let res = b
        .post(
            "/webhooks",
            &[
                ("csrf", b.csrf.as_str()),
                ("url", rx.url.as_str()),
                ("events", "key.created"),
                ("events", "key.revoked"),
                ("keyspace_id", ""),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    let html = res.text().await.unwrap();
    let i = html.find("id=\"plaintext\"").unwrap();
    let rest = &html[i..];
    let secret = rest[rest.find('>').unwrap() + 1..rest.find("</code>").unwrap()].to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(html.contains("data-copy=\"plaintext\""), "a copy button");
    *rx.secret.lock().unwrap() = secret.clone();

    let list = app.get("/v1/webhooks").await.expect(200);
    let hook = list.body["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        list.body["items"][0]["events"],
        json!(["key.created", "key.revoked"])
    );
    let ev = app.audit_actions("webhook.create").await;
    assert_eq!(ev[0]["actor"]["type"], "user");
    assert_eq!(ev[0]["target_id"], hook);

    // A key event is delivered (the receiver answers 503 first) and listed under the webhook.
    let ks = app.keyspace(json!({})).await;
    app.key(&ks, json!({})).await;
    app.deliver().await;
    rx.wait_for("key.created", 1).await;
    let mut page = String::new();
    for _ in 0..100 {
        page = b.get("/webhooks").await.text().await.unwrap();
        if page.contains("HTTP 503") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!page.contains(&secret), "the secret is shown once");
    assert!(page.contains(&rx.url));
    assert!(page.contains(&format!("data-webhook=\"{hook}\"")));
    assert!(
        page.contains("HTTP 503") && page.contains(">503<"),
        "the failed attempt"
    );
    assert!(rx.all_signatures_valid());

    // Delete needs the confirmation box.
    let path = format!("/webhooks/{hook}/delete");
    let res = b.post(&path, &[("csrf", b.csrf.as_str())]).await;
    assert_eq!(res.status(), 400);
    let res = b
        .post(&path, &[("csrf", b.csrf.as_str()), ("confirm", "yes")])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/webhooks?done=deleted");
    let list = app.get("/v1/webhooks").await.expect(200);
    assert!(list.body["items"].as_array().unwrap().is_empty());
    assert_eq!(
        app.audit_actions("webhook.delete").await[0]["actor"]["type"],
        "user"
    );
    let page = b.get("/webhooks?done=deleted").await.text().await.unwrap();
    assert!(page.contains("The webhook was deleted.") && !page.contains(&rx.url));
}
both!(creating_a_webhook_shows_its_secret_once_then_its_deliveries);

async fn the_inventory_csv_downloads_for_auditors_and_admins_not_viewers(app: TestApp) {
    add_user(&app, "au@example.com", Role::Auditor).await;
    add_user(&app, "v@example.com", Role::Viewer).await;
    add_user(&app, "a@example.com", Role::Admin).await;
    let ks = app.keyspace(json!({"require_owner": false})).await;
    let (owned, _) = app.key(&ks, json!({"name": "owned"})).await;
    let r = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "=HYPERLINK(\"x\")"}),
        )
        .await
        .expect(201);
    let orphan = r.id();

    let v = sign_in(&app, "v@example.com").await;
    assert!(!v
        .get("/")
        .await
        .text()
        .await
        .unwrap()
        .contains("href=\"/reports\""));
    assert_eq!(v.get("/reports").await.status(), 403);
    assert_eq!(v.get("/reports/inventory.csv").await.status(), 403);

    for who in ["au@example.com", "a@example.com"] {
        let b = sign_in(&app, who).await;
        let home = b.get("/").await.text().await.unwrap();
        assert!(
            home.contains("href=\"/reports\""),
            "{who} sees the report link"
        );
        let page = b.get("/reports").await.text().await.unwrap();
        assert!(page.contains("data-action=\"download-inventory\""));
        // The tile of a finding: its first data-count.
        let no_owner = &page[page.find("data-finding=\"no_owner\"").unwrap()..];
        assert_eq!(
            attr(no_owner, "data-count"),
            "1",
            "one key without an owner"
        );
        assert!(
            page.contains(&format!("href=\"/keys/{orphan}\"")),
            "the flagged key is listed"
        );

        let res = b.get("/reports/inventory.csv").await;
        assert_eq!(res.status(), 200, "{who}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        assert!(res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment"));
        let csv = res.text().await.unwrap();
        assert!(csv.starts_with("id,name,owner,keyspace_id,"));
        assert!(csv.contains(&owned) && csv.contains(&orphan));
        assert!(
            csv.contains("\"'=HYPERLINK(\"\"x\"\")\""),
            "formulas are neutralised"
        );
        // The same bytes as the API's CSV.
        let api = app
            .get("/v1/reports/inventory?format=csv")
            .await
            .body
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(csv.lines().count(), api.lines().count());
        assert_eq!(csv.lines().next(), api.lines().next());
        // One keyspace, or a keyspace that does not exist.
        let one = b
            .get(&format!("/reports/inventory.csv?keyspace={ks}"))
            .await;
        assert_eq!(one.text().await.unwrap().lines().count(), 3);
        assert_eq!(
            b.get("/reports/inventory.csv?keyspace=ks_nope")
                .await
                .status(),
            404
        );
    }
}
both!(the_inventory_csv_downloads_for_auditors_and_admins_not_viewers);

fn behind_a_tls_proxy() -> crate::helpers::Options {
    let mut o = crate::helpers::Options::default();
    o.config.trust_proxy_headers = true;
    o
}

/// Behind a trusted proxy that terminated TLS (`X-Forwarded-Proto: https`), the cookies are
/// `Secure` and `__Host-` prefixed, and a plain `http://` Origin is another site.
async fn over_https_the_cookies_are_secure_and_host_prefixed(app: TestApp) {
    add_user(&app, "tls@example.com", Role::Admin).await;
    let http = client();
    let page = http
        .get(format!("{}/login", app.url))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let (form_cookie, raw) = set_cookie(&page, "__Host-kw_form").expect("a __Host- form cookie");
    assert!(raw.contains("; Secure") && raw.contains("Path=/"), "{raw}");
    let token = csrf_in(&page.text().await.unwrap());
    let host = app.url.trim_start_matches("http://").to_string();
    let signed = http
        .post(format!("{}/login", app.url))
        .header("x-forwarded-proto", "https")
        .header("origin", format!("https://{host}"))
        .header("cookie", &form_cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("email", "tls@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let (session, raw) = set_cookie(&signed, "__Host-kw_session").expect("a __Host- session");
    assert!(
        raw.contains("; Secure") && raw.contains("HttpOnly"),
        "{raw}"
    );
    assert!(set_cookie(&signed, "kw_session").is_none());
    let home = http
        .get(format!("{}/", app.url))
        .header("x-forwarded-proto", "https")
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), 200, "the __Host- session is read back");
    let csrf = csrf_in(&home.text().await.unwrap());
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({})).await;
    let downgraded = http
        .post(format!("{}/keys/{id}/revoke", app.url))
        .header("x-forwarded-proto", "https")
        .header("origin", format!("http://{host}"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("reason", "x"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        downgraded.status(),
        403,
        "an http:// origin is not this https site"
    );
}
both!(
    over_https_the_cookies_are_secure_and_host_prefixed,
    behind_a_tls_proxy
);

async fn the_keyspace_page_edits_route_rules_line_by_line(app: TestApp) {
    add_user(&app, "a@example.com", Role::Admin).await;
    add_user(&app, "v@example.com", Role::Viewer).await;
    let ks = app.keyspace(json!({})).await;
    let b = sign_in(&app, "a@example.com").await;
    let path = format!("/keyspaces/{ks}/routes");

    // A bad line is named, the text typed stays in the editor, nothing is saved.
    let typed = "GET /orders/** orders:read\n\n# comment\nPOST /orders/**/x orders:write";
    let res = b
        .post(
            &path,
            &[
                ("csrf", b.csrf.as_str()),
                ("routes", typed),
                ("unmatched", "deny"),
            ],
        )
        .await;
    assert_eq!(res.status(), 400);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("Line 4, path: &#39;**&#39; may only be the last segment")
            || html.contains("Line 4, path: '**' may only be the last segment"),
        "{html}"
    );
    assert!(
        html.contains("POST /orders/**/x orders:write"),
        "the typed text stays"
    );
    let r = app.get(&format!("/v1/keyspaces/{ks}")).await.expect(200);
    assert_eq!(r.body["routes"], json!([]));

    // Saved: one rule per line, `[METHOD] PATH [SCOPE ...]`, audited like an API change.
    let typed = "GET /orders/** orders:read orders:list\r\n/health\r\n";
    let res = b
        .post(
            &path,
            &[
                ("csrf", b.csrf.as_str()),
                ("routes", typed),
                ("unmatched", "deny"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let r = app.get(&format!("/v1/keyspaces/{ks}")).await.expect(200);
    assert_eq!(
        r.body["routes"],
        json!([
            {"method": "GET", "path": "/orders/**", "scopes": ["orders:read", "orders:list"]},
            {"path": "/health", "scopes": []},
        ])
    );
    assert_eq!(r.body["unmatched"], "deny");
    let events = app.audit_actions("keyspace.update").await;
    let last = events.last().unwrap();
    assert_eq!(last["actor"]["type"], "user");
    assert!(last["changes"].get("routes").is_some(), "{last}");
    // The page shows them back in the same form.
    let page = b
        .get(&format!("/keyspaces/{ks}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("GET /orders/** orders:read orders:list\n/health\n"),
        "{page}"
    );
    assert!(page.contains(r#"<option value="deny" selected>"#), "{page}");

    // A viewer sees the rules but cannot change them.
    let v = sign_in(&app, "v@example.com").await;
    let page = v
        .get(&format!("/keyspaces/{ks}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("GET /orders/** orders:read orders:list"));
    assert!(!page.contains("data-action=\"save-routes\""));
    let res = v
        .post(
            &path,
            &[
                ("csrf", v.csrf.as_str()),
                ("routes", ""),
                ("unmatched", "allow"),
            ],
        )
        .await;
    assert_eq!(res.status(), 403);
    let r = app.get(&format!("/v1/keyspaces/{ks}")).await.expect(200);
    assert_eq!(r.body["unmatched"], "deny");
}
both!(the_keyspace_page_edits_route_rules_line_by_line);

/// The number in the overview's stat box labelled `label`.
fn overview_stat(html: &str, label: &str) -> i64 {
    let at = html
        .find(&format!("<div class=\"stat-label\">{label}</div>"))
        .unwrap_or_else(|| panic!("no stat {label}"));
    let rest = &html[at..];
    let v = &rest[rest.find("<div class=\"stat-value\">").unwrap() + 24..];
    v[..v.find('<').unwrap()].replace(',', "").parse().unwrap()
}

/// The number the overview's policy findings give for `text`.
fn overview_finding(html: &str, text: &str) -> i64 {
    let at = html
        .find(&format!("<span>{text}</span>"))
        .unwrap_or_else(|| panic!("no finding {text}"));
    let rest = &html[at..];
    let v = &rest[rest.find("<strong").unwrap()..];
    let v = &v[v.find('>').unwrap() + 1..];
    v[..v.find('<').unwrap()].parse().unwrap()
}

/// The overview counts every key in the database, by status and by finding, and agrees with the
/// inventory report on each finding (the two apply the same rules: one in SQL, one per row).
async fn the_overview_counts_every_key_as_the_inventory_report_does(app: TestApp) {
    add_user(&app, "a@example.com", Role::Admin).await;
    let ks = app
        .keyspace(
            json!({"require_owner": false, "max_lifetime_secs": 2_592_000,
            "expiry_warning_secs": 1_209_600, "inactivity_revoke_secs": 7_200}),
        )
        .await;
    let loose = app
        .keyspace(json!({"require_owner": false, "max_lifetime_secs": null,
            "expiry_warning_secs": null, "inactivity_revoke_secs": null}))
        .await;
    let now = app.state.clock().now();
    let in_days = |d: i64| now.plus_secs(d * 86_400).to_rfc3339();
    // Live keys: without owner and expiry; expiring soon; beyond the max lifetime once the
    // policy is tightened; used (never inactive); disabled; rotating and its successor.
    app.key(&loose, json!({"owner": null})).await;
    app.key(&loose, json!({"owner": null})).await;
    app.key(&ks, json!({"expires_at": in_days(5)})).await;
    app.key(&ks, json!({"expires_at": in_days(20)})).await;
    let (used, used_key) = app.key(&ks, json!({"expires_at": in_days(25)})).await;
    let (disabled, _) = app.key(&ks, json!({})).await;
    app.patch(&format!("/v1/keys/{disabled}"), json!({"enabled": false}))
        .await
        .expect(200);
    let (rotated, _) = app.key(&ks, json!({})).await;
    app.rotate(&rotated, json!({"grace_secs": 86_400})).await;
    // Not live: revoked; expired.
    let (revoked, _) = app.key(&loose, json!({})).await;
    app.post(
        &format!("/v1/keys/{revoked}/revoke"),
        json!({"reason": "gone"}),
    )
    .await
    .expect(200);
    app.key(
        &ks,
        json!({"expires_at": now.plus_secs(3_600).to_rfc3339()}),
    )
    .await;
    app.advance(3 * 3_600);
    assert_eq!(app.verify(json!({"key": used_key})).await["code"], "VALID");
    app.flush().await;

    let b = sign_in(&app, "a@example.com").await;
    let home = b.get("/").await.text().await.unwrap();
    let report = app.get("/v1/reports/inventory").await.expect(200);
    let rows = report.body["items"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 10);
    let with = |finding: &str| {
        rows.iter()
            .filter(|r| {
                r["findings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == finding)
            })
            .count() as i64
    };
    let of_status = |s: &str| rows.iter().filter(|r| r["status"] == s).count() as i64;
    assert_eq!(overview_stat(&home, "Active keys"), of_status("active"));
    assert_eq!(overview_stat(&home, "Active keys"), 6);
    assert_eq!(overview_stat(&home, "Rotating"), of_status("rotating"));
    assert_eq!(overview_stat(&home, "Rotating"), 1);
    assert_eq!(overview_stat(&home, "Expiring soon"), with("expiring_soon"));
    assert!(
        overview_stat(&home, "Expiring soon") >= 1,
        "the key expiring in 5 days"
    );
    assert_eq!(overview_stat(&home, "Inactive"), with("inactive"));
    assert_eq!(
        overview_stat(&home, "Inactive"),
        5,
        "every live key of the strict keyspace but the used one"
    );
    assert_eq!(
        overview_finding(&home, "Live keys without an owner"),
        with("no_owner")
    );
    assert_eq!(overview_finding(&home, "Live keys without an owner"), 2);
    assert_eq!(
        overview_finding(&home, "Live keys that never expire"),
        with("no_expiry")
    );
    assert_eq!(
        overview_finding(&home, "Live keys beyond their keyspace's max lifetime"),
        with("exceeds_max_lifetime")
    );
    // Both flagged lists name their keys; the used key is in neither's "inactive" part.
    let inactive = &home[home.find("Inactive for long").unwrap()..];
    assert!(!inactive[..inactive.find("</section>").unwrap()].contains(&format!("/keys/{used}\"")));
    // A key created now is counted at once (a small census is taken at every view).
    app.key(&loose, json!({})).await;
    let home = b.get("/").await.text().await.unwrap();
    assert_eq!(overview_stat(&home, "Active keys"), 7);
    assert!(!home.contains("data-counted-at"), "counts are current");
}
both!(
    the_overview_counts_every_key_as_the_inventory_report_does,
    manual
);

/// The value of attribute `data-counted-at` in `html`: as of when the overview's counts are.
fn counted_at(html: &str) -> Option<&str> {
    let at = html.find("data-counted-at=\"")? + "data-counted-at=\"".len();
    Some(&html[at..at + html[at..].find('"')?])
}

/// A node counts the overview's keys as it starts: its first view shows those counts instead of
/// taking them (a pass over every key, seconds at a million), and kept counts are taken again
/// in the background once a minute old.
async fn a_node_counts_the_overview_as_it_starts(first: TestApp) {
    add_user(&first, "a@example.com", Role::Admin).await;
    let ks = first.keyspace(json!({"require_owner": false})).await;
    for _ in 0..3 {
        first.key(&ks, json!({})).await;
    }
    // A second node over the same database, keeping every count (a million keys' worth).
    let mut opts = crate::helpers::manual();
    opts.config.overview_kept_from = 0;
    let app = crate::helpers::spawn_on(first.backend, &first.db_url, opts).await;
    let started = app.state.clock().now();
    let kept = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.state.overview_counted(),
    )
    .await
    .expect("the node counts the overview's keys as it starts");
    assert_eq!(kept, 1, "the one keyspace's counts are kept");
    app.key(&ks, json!({})).await;
    app.advance(1);
    let b = sign_in(&app, "a@example.com").await;
    let home = b.get("/").await.text().await.unwrap();
    assert_eq!(
        overview_stat(&home, "Active keys"),
        3,
        "the counts taken at start, not at this view"
    );
    assert_eq!(counted_at(&home), Some(started.to_rfc3339().as_str()));
    // A minute later a view shows them once more and has them taken again.
    app.advance(60);
    let home = b.get("/").await.text().await.unwrap();
    assert_eq!(overview_stat(&home, "Active keys"), 3);
    let mut waited = 0;
    loop {
        let home = b.get("/").await.text().await.unwrap();
        if overview_stat(&home, "Active keys") == 4 {
            assert_eq!(counted_at(&home), None, "counts as of now");
            break;
        }
        assert_eq!(counted_at(&home), Some(started.to_rfc3339().as_str()));
        assert!(waited < 200, "the counts were not taken again within 10 s");
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
both!(a_node_counts_the_overview_as_it_starts, manual);
