//! The service is the only door: every route the server answers (the API's and the dashboard's
//! pages and forms, enumerated from the tables the router is built from) reaches the service's
//! authorization for exactly the right its table names, is refused without that right, and the
//! API's table matches the OpenAPI document path for path and method.
//!
//! The server reports which right a request was granted in `x-keyward-granted` (feature
//! `test-hooks`, which only the workspace's tests enable).

use keyward_core::model::{Permission, Role};
use keyward_server::route_table as routes;
use keyward_server::routes::{Access, RouteSpec};
use serde_json::{json, Value};

use crate::both;
use crate::dashboard::{add_user, sign_in};
use crate::helpers::{Options, TestApp};

/// Many unauthenticated calls from one address: the failure throttle must not answer them.
fn lenient() -> Options {
    let mut o = Options::default();
    o.config.auth_failure_limit = 10_000;
    o
}

const GRANTED: &str = "x-keyward-granted";

/// Ids of one object of each kind, to fill path templates.
struct Objects {
    keyspace: String,
    key: String,
    token: String,
    webhook: String,
    identity: String,
}

impl Objects {
    async fn make(app: &TestApp) -> Objects {
        let keyspace = app.keyspace(json!({})).await;
        let (key, _) = app.key(&keyspace, json!({})).await;
        let token = app
            .post("/v1/tokens", json!({"name": "door", "role": "viewer"}))
            .await
            .expect(201)
            .id();
        let webhook = app
            .post(
                "/v1/webhooks",
                json!({"url": "http://127.0.0.1:9/hook", "events": ["key.created"]}),
            )
            .await
            .expect(201)
            .id();
        let identity = "team-door".to_string();
        app.post("/v1/identities", json!({"id": identity}))
            .await
            .expect(201);
        Objects {
            keyspace,
            key,
            token,
            webhook,
            identity,
        }
    }

    /// The path of a route with its `{...}` filled by an object of the kind the path names.
    fn fill(&self, path: &str) -> String {
        let mut out = Vec::new();
        let mut prev = "";
        for seg in path.split('/') {
            let filled = match seg {
                "{id}" => match prev {
                    "keyspaces" => self.keyspace.clone(),
                    "keys" => self.key.clone(),
                    "tokens" => self.token.clone(),
                    "webhooks" => self.webhook.clone(),
                    "identities" => self.identity.clone(),
                    other => panic!("no object for `{{id}}` after `{other}` in {path}"),
                },
                "{file}" => "style.css".to_string(),
                "{*path}" => "orders/1".to_string(),
                s if s.starts_with('{') => panic!("no value for {s} in {path}"),
                s => s.to_string(),
            };
            out.push(filled);
            prev = seg;
        }
        out.join("/")
    }
}

fn is_api(r: &RouteSpec) -> bool {
    r.path.starts_with("/v1/") || matches!(r.path, "/healthz" | "/readyz" | "/metrics")
}

fn method(r: &RouteSpec) -> reqwest::Method {
    match r.method {
        "ANY" => reqwest::Method::GET,
        m => m.parse().unwrap(),
    }
}

/// Sends a route's request with a management token (or none); a body `{}` where one may go.
async fn call_api(
    app: &TestApp,
    r: &RouteSpec,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>) {
    let m = method(r);
    // A leak report needs its key; every other body is refused or read as empty.
    let body = matches!(m, reqwest::Method::POST | reqwest::Method::PATCH).then(|| {
        if path == "/v1/leaks" {
            json!({"key": "acme_door"})
        } else {
            json!({})
        }
    });
    let res = app.send(m, path, token, body).await;
    let granted = res
        .headers
        .get(GRANTED)
        .map(|v| v.to_str().unwrap().to_string());
    (res.status, granted)
}

async fn every_api_route_reaches_the_door_for_its_right_and_no_other(app: TestApp) {
    let objects = Objects::make(&app).await;
    // A token of each role; the verifier holds no right but `Verify`.
    let mut tokens = Vec::new();
    for role in ["manager", "viewer", "auditor", "verifier"] {
        tokens.push((Role::parse(role).unwrap(), app.token(role, None).await));
    }
    let table: Vec<RouteSpec> = routes().into_iter().filter(is_api).collect();
    assert!(
        table.len() >= 30,
        "the API's route table has {} routes",
        table.len()
    );
    // Destructive routes last, so the objects exist for every other route.
    let (mut later, mut first): (Vec<RouteSpec>, Vec<RouteSpec>) = table
        .into_iter()
        .partition(|r| r.method == "DELETE" || r.path.ends_with("/rotate"));
    first.append(&mut later);
    for r in &first {
        let path = objects.fill(r.path);
        let what = format!("{} {}", r.method, r.path);
        match r.access {
            Access::Right(p) => {
                for (role, token) in &tokens {
                    let (status, granted) = call_api(&app, r, &path, Some(token)).await;
                    if role.may(p) {
                        assert_eq!(
                            granted.as_deref(),
                            Some(format!("{p:?}").as_str()),
                            "{what} as {role:?}"
                        );
                        assert!(
                            status != 401 && status != 403,
                            "{what} as {role:?}: {status}"
                        );
                    } else {
                        assert_eq!(status, 403, "{what} as {role:?}");
                        assert_eq!(granted, None, "{what} as {role:?}");
                    }
                }
                let (status, granted) = call_api(&app, r, &path, Some(&app.admin.clone())).await;
                assert_eq!(
                    granted.as_deref(),
                    Some(format!("{p:?}").as_str()),
                    "{what} as admin"
                );
                assert!(status != 401 && status != 403, "{what} as admin: {status}");
                let (status, granted) = call_api(&app, r, &path, None).await;
                assert_eq!((status, granted), (401, None), "{what} without a token");
            }
            Access::Public | Access::Verify => {
                let (status, granted) = call_api(&app, r, &path, None).await;
                assert_eq!(granted, None, "{what} is public: no right is granted");
                if r.access == Access::Public && r.path.contains("/github/") {
                    // Public, and authenticated by GitHub's signature instead of a token.
                    assert_eq!(status, 401, "{what}: unsigned");
                } else if r.access == Access::Public {
                    assert!(status < 400, "{what}: {status}");
                }
            }
            Access::SignIn => panic!("{what}: the API has no sign-in routes"),
        }
    }
}
both!(
    every_api_route_reaches_the_door_for_its_right_and_no_other,
    lenient
);

async fn every_dashboard_page_and_form_reaches_the_door_for_its_right(app: TestApp) {
    let objects = Objects::make(&app).await;
    add_user(&app, "admin@example.com", Role::Admin).await;
    add_user(&app, "viewer@example.com", Role::Viewer).await;
    let admin = sign_in(&app, "admin@example.com").await;
    let viewer = sign_in(&app, "viewer@example.com").await;
    let table: Vec<RouteSpec> = routes().into_iter().filter(|r| !is_api(r)).collect();
    assert!(
        table.len() >= 25,
        "the dashboard's route table has {} routes",
        table.len()
    );
    let (mut later, mut first): (Vec<RouteSpec>, Vec<RouteSpec>) =
        table.into_iter().partition(|r| {
            r.path.ends_with("/delete") || r.path.ends_with("/rotate") || r.path == "/logout"
        });
    // Signing out ends both sessions: last of all.
    later.sort_by_key(|r| r.path == "/logout");
    first.append(&mut later);
    for r in &first {
        let path = objects.fill(r.path);
        let what = format!("{} {}", r.method, r.path);
        for (who, browser, role) in [
            ("admin", &admin, Role::Admin),
            ("viewer", &viewer, Role::Viewer),
        ] {
            let res = match r.method {
                "GET" => browser.get(&path).await,
                "POST" => {
                    browser
                        .post(&path, &[("csrf", browser.csrf.as_str())])
                        .await
                }
                m => panic!("{what}: the dashboard has no {m} routes"),
            };
            let status = res.status().as_u16();
            let granted = res
                .headers()
                .get(GRANTED)
                .map(|v| v.to_str().unwrap().to_string());
            match r.access {
                Access::Right(p) if role.may(p) => {
                    assert_eq!(
                        granted.as_deref(),
                        Some(format!("{p:?}").as_str()),
                        "{what} as {who}: {status} {:?}",
                        res.headers().get("location")
                    );
                    assert!(status != 401 && status != 403, "{what} as {who}: {status}");
                }
                Access::Right(_) => {
                    assert_eq!(status, 403, "{what} as {who}");
                    assert_eq!(granted, None, "{what} as {who}");
                }
                Access::Public | Access::SignIn | Access::Verify => {
                    assert_eq!(granted, None, "{what} as {who}: grants nothing");
                }
            }
        }
    }
    // Without a session, every page that needs a right sends the browser to sign in.
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for r in routes().iter().filter(|r| !is_api(r) && r.method == "GET") {
        if let Access::Right(_) = r.access {
            let res = anonymous
                .get(format!("{}{}", app.url, objects.fill(r.path)))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 303, "GET {} without a session", r.path);
            assert!(res.headers().get(GRANTED).is_none());
        }
    }
}
both!(every_dashboard_page_and_form_reaches_the_door_for_its_right);

/// The OpenAPI document describes exactly the API's routes: every path and method the router
/// answers, and nothing it does not (forward-auth answers every method; the document lists the
/// ones proxies use).
#[test]
fn the_openapi_document_lists_exactly_the_routes_the_server_answers() {
    let doc: Value = serde_json::from_str(keyward_server::http::OPENAPI).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "put", "delete", "head", "options"].contains(&m.as_str()) {
                documented.insert((path.clone(), m.to_uppercase()));
            }
        }
    }
    let mut served = std::collections::BTreeSet::new();
    for r in routes().iter().filter(|r| is_api(r)) {
        if r.method == "ANY" {
            // A catch-all segment (`{*path}`) is written `{path}` in OpenAPI.
            let path = r.path.replace("{*", "{");
            let listed: Vec<_> = documented
                .iter()
                .filter(|(p, _)| *p == path)
                .cloned()
                .collect();
            assert!(
                listed.iter().any(|(_, m)| m == "GET"),
                "{} must document GET",
                r.path
            );
            served.extend(listed);
        } else {
            served.insert((r.path.to_string(), r.method.to_string()));
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in the OpenAPI document but not served: {unserved:?}"
    );
}

/// Every right of the role matrix is named by some route (a right nothing checks is a row of
/// the matrix that protects nothing).
#[test]
fn every_right_of_the_matrix_guards_some_route() {
    let rs = routes();
    for p in [
        Permission::ReadKeys,
        Permission::WriteKeys,
        Permission::WriteKeyspaces,
        Permission::ReadAudit,
        Permission::ManageTokens,
    ] {
        assert!(rs.iter().any(|r| r.access == Access::Right(p)), "{p:?}");
    }
    assert!(rs.iter().any(|r| r.access == Access::Verify));
}
