//! Importing keys issued by another system (`POST /v1/keyspaces/{id}/keys/import`): plaintext,
//! SHA-256 and salted hashes (Argon2id, bcrypt, Django's PBKDF2) verify like native keys; a
//! salted hash is computed once, at the key's first verification, then replaced by the key's
//! SHA-256; imports are idempotent by `external_id` and taken whole or refused whole.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{manual, spawn_node, spawn_on, Options, TempDir, TestApp};

/// A key of another system's format: `sk_live_` and 24 random characters.
fn foreign_key(i: usize) -> String {
    let mut b = [0u8; 18];
    getrandom(&mut b);
    format!(
        "sk_live_{}{i}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

fn getrandom(b: &mut [u8]) {
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), b).unwrap();
}

fn sha256_hex(s: &str) -> String {
    keyward_core::keyformat::KeyHash::of(s).to_hex()
}

fn sha256_b64(s: &str) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()))
}

fn argon2id(key: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom(&mut salt);
    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(key.as_bytes(), &SaltString::encode_b64(&salt).unwrap())
        .unwrap()
        .to_string()
}

fn django_pbkdf2(key: &str) -> String {
    let mut salt = [0u8; 9];
    getrandom(&mut salt);
    let salt = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(salt);
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(1000).unwrap(),
        salt.as_bytes(),
        key.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2_sha256$1000${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

/// A djangorestframework-api-key style key: `prefix.secret`; its lookup is `prefix.`.
fn drf_key(i: usize) -> (String, String) {
    let mut b = [0u8; 24];
    getrandom(&mut b);
    let prefix = format!("Pf{i:06}");
    let key = format!(
        "{prefix}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    );
    (key, format!("{prefix}."))
}

/// A keyspace for keys from elsewhere: no lifetime limit, no owner required, no auto-revocation.
async fn legacy_keyspace(app: &TestApp) -> String {
    let prefix = format!(
        "l{}",
        keyward_core::keyformat::base62_random(8).to_lowercase()
    );
    app.post(
        "/v1/keyspaces",
        json!({"name": "legacy", "prefix": prefix, "preset": "relaxed",
               "policy": {"require_owner": false, "inactivity_revoke_secs": null}}),
    )
    .await
    .expect(201)
    .id()
}

async fn import(app: &TestApp, ks: &str, body: Value) -> crate::helpers::Res {
    app.post(&format!("/v1/keyspaces/{ks}/keys/import"), body)
        .await
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap()
}

/// One kind of imported key, for checking: the plaintext and how it was imported.
struct Imported {
    key: String,
    salted: bool,
}

/// 10,000 records: 4,000 plaintext keys of another format, 1,000 keyward keys as plaintext,
/// 4,700 SHA-256 (hex and base64), 100 each of Argon2id, bcrypt and PBKDF2.
fn ten_thousand(keyspace_prefix: &str) -> (Vec<Value>, Vec<Imported>) {
    let mut records = Vec::new();
    let mut keys = Vec::new();
    for i in 0..10_000 {
        let (record, key, salted) = match i {
            0..4000 => {
                let k = foreign_key(i);
                (json!({"plaintext": k}), k, false)
            }
            4000..5000 => {
                let k = keyward_core::keyformat::generate(keyspace_prefix)
                    .expose()
                    .to_string();
                (json!({"plaintext": k}), k, false)
            }
            5000..9700 => {
                let k = foreign_key(i);
                let h = if i % 2 == 0 {
                    sha256_hex(&k)
                } else {
                    sha256_b64(&k)
                };
                (json!({"hash": h, "algorithm": "sha256"}), k, false)
            }
            9700..9800 => {
                let (k, lookup) = drf_key(i);
                (
                    json!({"hash": argon2id(&k), "algorithm": "argon2id", "lookup": lookup}),
                    k,
                    true,
                )
            }
            9800..9900 => {
                let (k, lookup) = drf_key(i);
                (
                    json!({"hash": bcrypt::hash(&k, 4).unwrap(), "algorithm": "bcrypt", "lookup": lookup}),
                    k,
                    true,
                )
            }
            _ => {
                let (k, lookup) = drf_key(i);
                (
                    json!({"hash": django_pbkdf2(&k), "algorithm": "pbkdf2-sha256", "lookup": lookup}),
                    k,
                    true,
                )
            }
        };
        let mut record = record;
        record["external_id"] = json!(format!("legacy-{i}"));
        record["name"] = json!(format!("legacy key {i}"));
        record["owner"] = json!(format!("customer-{}", i % 97));
        record["created_at"] = json!("2026-01-01T00:00:00Z");
        records.push(record);
        keys.push(Imported { key, salted });
    }
    (records, keys)
}

/// Every salted key, and every 25th of the others.
fn sample(keys: &[Imported]) -> impl Iterator<Item = &Imported> {
    keys.iter()
        .enumerate()
        .filter(|(i, k)| k.salted || i % 25 == 0)
        .map(|(_, k)| k)
}

async fn ten_thousand_keys_of_every_kind_verify_before_and_after_a_restart(app: TestApp) {
    let ks = legacy_keyspace(&app).await;
    let prefix = app.get(&format!("/v1/keyspaces/{ks}")).await.body["prefix"]
        .as_str()
        .unwrap()
        .to_string();
    let (records, keys) = ten_thousand(&prefix);
    let mut ids = HashSet::new();
    for batch in records.chunks(1000) {
        let r = import(&app, &ks, json!({"keys": batch})).await.expect(201);
        assert_eq!(r.body["created"], 1000);
        for id in r.body["keys"].as_array().unwrap() {
            assert!(id.as_str().unwrap().starts_with("key_"));
            ids.insert(id.as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 10_000);
    // One audit event per batch, naming the external ids and no secret.
    let events = app.audit_actions("keys.import").await;
    assert_eq!(events.len(), 10);
    assert_eq!(events[0]["changes"]["count"][1], 1000);
    assert_eq!(events[0]["changes"]["external_ids"][1][0], "legacy-0");

    // Before any verification: every kind verifies; the salted ones once through their hash.
    for k in sample(&keys) {
        assert_eq!(
            app.verify_code(&k.key).await,
            "VALID",
            "salted: {}",
            k.salted
        );
    }
    let salted = keys.iter().filter(|k| k.salted).count() as u64;
    assert_eq!(metric(&app, "keyward_slow_hash_checks_total").await, salted);
    assert_eq!(app.audit_actions("key.rehash").await.len() as u64, salted);
    let rehash = &app.audit_actions("key.rehash").await[0];
    assert_eq!(rehash["actor"]["type"], "system");
    assert!(["argon2id", "bcrypt", "pbkdf2-sha256"]
        .contains(&rehash["changes"]["hash"][0].as_str().unwrap()));
    // Later checks never compute the salted hash again.
    for k in keys.iter().filter(|k| k.salted) {
        assert_eq!(app.verify_code(&k.key).await, "VALID");
    }
    assert_eq!(metric(&app, "keyward_slow_hash_checks_total").await, salted);
    // A wrong key with a known lookup prefix is NOT_FOUND, and cached as such.
    let wrong = format!("{}.wrongwrongwrongwrongwrongwrong", &keys[9850].key[..8]);
    assert_eq!(app.verify_code(&wrong).await, "NOT_FOUND");
    // (That key was upgraded: its lookup is gone, so no slow hash is tried for it.)
    assert_eq!(metric(&app, "keyward_slow_hash_checks_total").await, salted);

    // After a restart (a new process on the same database): the same answers, no slow hash.
    let backend = app.backend;
    let db_url = app.db_url.clone();
    let dir = app.stop().await;
    let app = spawn_on(backend, &db_url, Options::default()).await;
    for k in sample(&keys) {
        assert_eq!(app.verify_code(&k.key).await, "VALID", "after restart");
    }
    assert_eq!(metric(&app, "keyward_slow_hash_checks_total").await, 0);
    assert_eq!(
        app.verify_code(&format!("{}x", keys[0].key)).await,
        "NOT_FOUND"
    );
    app.stop().await;
    drop(dir);
}
both!(ten_thousand_keys_of_every_kind_verify_before_and_after_a_restart);

async fn a_salted_key_is_checked_once_and_a_wrong_one_costs_one_check(app: TestApp) {
    let ks = legacy_keyspace(&app).await;
    let (key, lookup) = drf_key(1);
    let r = import(
        &app,
        &ks,
        json!({"keys": [{"hash": bcrypt::hash(&key, 4).unwrap(), "algorithm": "bcrypt", "lookup": lookup, "name": "drf"}]}),
    )
    .await
    .expect(201);
    let id = r.body["keys"][0].as_str().unwrap().to_string();
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200).body;
    assert_eq!(
        k["start"], lookup,
        "the lookup prefix is what the key shows"
    );
    // A wrong secret with the right prefix: NOT_FOUND, one check; asked again, cached.
    let wrong = format!("{lookup}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(app.verify_code(&wrong).await, "NOT_FOUND");
    assert_eq!(app.verify_code(&wrong).await, "NOT_FOUND");
    assert_eq!(metric(&app, "keyward_slow_hash_checks_total").await, 1);
    // Guesses are bounded per prefix: past the bound, no hash is computed.
    for i in 0..15 {
        let guess = format!("{lookup}guess{i:027}");
        assert_eq!(app.verify_code(&guess).await, "NOT_FOUND");
    }
    let checks = metric(&app, "keyward_slow_hash_checks_total").await;
    assert_eq!(checks, 10, "at most 10 checks per prefix per 10 s");
    // The right key is refused, not cached, while the bound holds; it passes once it allows.
    assert_eq!(app.verify_code(&key).await, "NOT_FOUND");
    app.advance(11);
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(metric(&app, "keyward_slow_hash_checks_total").await, 11);
    assert_eq!(app.audit_actions("key.rehash").await.len(), 1);
    // Forward-auth finds it too (the same verifier).
    let fa = app
        .http
        .get(format!("{}/v1/forward-auth", app.url))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(fa.status(), 200);
}
both!(
    a_salted_key_is_checked_once_and_a_wrong_one_costs_one_check,
    manual
);

async fn an_import_is_idempotent_by_external_id(app: TestApp) {
    let ks = legacy_keyspace(&app).await;
    let keys: Vec<String> = (0..5).map(foreign_key).collect();
    let records: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"plaintext": k, "external_id": format!("ext-{i}"), "name": "k"}))
        .collect();
    let first = import(&app, &ks, json!({"keys": records}))
        .await
        .expect(201);
    assert_eq!(
        (first.body["created"].clone(), first.body["skipped"].clone()),
        (json!(5), json!(0))
    );
    // The same records again: nothing created, nothing audited.
    let again = import(&app, &ks, json!({"keys": records}))
        .await
        .expect(200);
    assert_eq!(again.body["keys"], json!(vec!["skipped"; 5]));
    assert_eq!(
        (again.body["created"].clone(), again.body["skipped"].clone()),
        (json!(0), json!(5))
    );
    assert_eq!(app.audit_actions("keys.import").await.len(), 1);
    // One new record among old ones: only it is created.
    let mut more = records.clone();
    more.push(json!({"plaintext": foreign_key(9), "external_id": "ext-9"}));
    let r = import(&app, &ks, json!({"keys": more})).await.expect(201);
    assert_eq!(r.body["keys"][0], "skipped");
    assert!(r.body["keys"][5].as_str().unwrap().starts_with("key_"));
    // An external id already imported with another key: 409 naming the record, nothing done.
    let before = app
        .get(&format!("/v1/keys?keyspace_id={ks}&limit=100"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .len();
    let clash = json!({"keys": [
        {"plaintext": foreign_key(20), "external_id": "ext-20"},
        {"plaintext": foreign_key(21), "external_id": "ext-1"},
    ]});
    let r = import(&app, &ks, clash).await.expect(409);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("keys[1]"),
        "{}",
        r.body
    );
    let after = app
        .get(&format!("/v1/keys?keyspace_id={ks}&limit=100"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "the batch is refused whole");
    // A key another key already holds: 409.
    let r = import(&app, &ks, json!({"keys": [{"plaintext": keys[0]}]}))
        .await
        .expect(409);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("keys[0]"));
    // Lookup prefixes are kept prefix-free across keyspaces: one that starts another is 409.
    let (drf, lookup) = drf_key(77);
    let salted = |l: &str| json!({"keys": [{"hash": bcrypt::hash(&drf, 4).unwrap(), "algorithm": "bcrypt", "lookup": l}]});
    import(&app, &ks, salted(&lookup)).await.expect(201);
    let other = legacy_keyspace(&app).await;
    for l in [
        lookup.clone(),
        lookup[..8].to_string(),
        format!("{lookup}x"),
    ] {
        let r = import(&app, &other, salted(&l)).await.expect(409);
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("keys[0].lookup"));
    }
    // The imported key shows its external id.
    let id = first.body["keys"][2].as_str().unwrap();
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200).body;
    assert_eq!(k["external_id"], "ext-2");
}
both!(an_import_is_idempotent_by_external_id);

async fn a_bad_record_refuses_the_batch_and_names_it(app: TestApp) {
    let ks = legacy_keyspace(&app).await;
    let good = json!({"plaintext": foreign_key(0)});
    let (drf, lookup) = drf_key(0);
    let bcrypt_hash = bcrypt::hash(&drf, 4).unwrap();
    let token = app.admin.clone();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "keys[1].plaintext"),
        (json!({"plaintext": "short"}), "keys[1].plaintext"),
        (
            json!({"plaintext": "has a space in it"}),
            "keys[1].plaintext",
        ),
        (json!({"plaintext": token}), "keys[1].plaintext"),
        (
            json!({"plaintext": foreign_key(1), "hash": sha256_hex("x"), "algorithm": "sha256"}),
            "keys[1].plaintext",
        ),
        (json!({"hash": sha256_hex("x")}), "keys[1].algorithm"),
        (
            json!({"hash": "abcd", "algorithm": "sha256"}),
            "keys[1].hash",
        ),
        (
            json!({"hash": bcrypt_hash, "algorithm": "bcrypt"}),
            "keys[1].lookup",
        ),
        (
            json!({"hash": bcrypt_hash, "algorithm": "argon2id", "lookup": lookup}),
            "keys[1].hash",
        ),
        (
            json!({"hash": bcrypt_hash.replace("$04$", "$31$"), "algorithm": "bcrypt", "lookup": lookup}),
            "keys[1].hash",
        ),
        (
            json!({"hash": "pbkdf2_sha256$0$salt$aGFzaA==", "algorithm": "pbkdf2-sha256", "lookup": lookup}),
            "keys[1].hash",
        ),
        (
            json!({"hash": bcrypt_hash, "algorithm": "bcrypt", "lookup": "ab"}),
            "keys[1].lookup",
        ),
        (
            json!({"plaintext": foreign_key(2), "created_at": "2099-01-01T00:00:00Z"}),
            "keys[1].created_at",
        ),
        (
            json!({"plaintext": foreign_key(3), "created_at": "2026-01-02T00:00:00Z", "last_used_at": "2026-01-01T00:00:00Z"}),
            "keys[1].last_used_at",
        ),
        (
            json!({"plaintext": foreign_key(4), "expires_at": "2020-01-01T00:00:00Z"}),
            "keys[1].expires_at",
        ),
        (
            json!({"plaintext": foreign_key(5), "remaining": -1}),
            "keys[1].remaining",
        ),
        (
            json!({"plaintext": foreign_key(6), "external_id": keyward_core::keyformat::generate("acme").expose()}),
            "keys[1].external_id",
        ),
    ];
    for (bad, field) in cases {
        let r = import(&app, &ks, json!({"keys": [good, bad]})).await;
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        let m = r.body["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field), "{field}: {m}");
        assert!(!m.contains(&drf) && !m.contains(&token), "no secret in {m}");
    }
    // Shapes the JSON parser refuses: unknown fields and algorithms, too many records.
    for body in [
        json!({"keys": [{"plaintext": foreign_key(7), "colour": "red"}]}),
        json!({"keys": [{"hash": sha256_hex("x"), "algorithm": "md5"}]}),
        json!({"keys": []}),
        json!({"keys": vec![good.clone(); 1001]}),
    ] {
        assert_eq!(import(&app, &ks, body).await.status, 400);
    }
    let n = app.get(&format!("/v1/keys?keyspace_id={ks}")).await.body["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 0, "no refused batch left a key behind");
    // No such keyspace; a token without the right.
    import(&app, "ks_0000000000000000000000", json!({"keys": [good]}))
        .await
        .expect(404);
    let viewer = app.token("viewer", None).await;
    let r = app
        .post_as(
            &viewer,
            &format!("/v1/keyspaces/{ks}/keys/import"),
            json!({"keys": [good]}),
        )
        .await;
    assert_eq!(r.status, 403);
}
both!(a_bad_record_refuses_the_batch_and_names_it);

async fn keyspace_policy_applies_unless_violations_are_allowed(app: TestApp) {
    let ks = app
        .keyspace(json!({"max_lifetime_secs": 86400 * 90, "require_owner": true}))
        .await;
    let k = foreign_key(0);
    // Created a day ago: never expiring exceeds the 90-day lifetime, while the default 180-day
    // inactivity revocation leaves it alone (created in January, the sweep could revoke it
    // before its verification below was flushed, and a revoked key has no findings).
    use keyward_core::time::Clock;
    let created_at = keyward_core::time::SystemClock
        .now()
        .plus_secs(-86_400)
        .to_rfc3339();
    let record = json!({"plaintext": k, "owner": "acme", "created_at": created_at});
    let r = import(&app, &ks, json!({"keys": [record]})).await;
    assert_eq!(
        (r.status, r.code()),
        (422, "POLICY_VIOLATION"),
        "{}",
        r.body
    );
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("keys[0]"));
    let no_owner = json!({"plaintext": foreign_key(1), "expires_at": "2099-01-01T00:00:00Z"});
    assert_eq!(
        import(&app, &ks, json!({"keys": [no_owner]})).await.status,
        422
    );
    let r = import(
        &app,
        &ks,
        json!({"keys": [record], "allow_policy_violations": true}),
    )
    .await
    .expect(201);
    let id = r.body["keys"][0].as_str().unwrap().to_string();
    assert_eq!(app.verify_code(&k).await, "VALID");
    let ev = &app.audit_actions("keys.import").await[0];
    assert_eq!(ev["changes"]["allow_policy_violations"][1], true);
    // An exemption from the policy is an admin's call: a manager may import, not exempt.
    let manager = app.token("manager", None).await;
    let r = app
        .post_as(
            &manager,
            &format!("/v1/keyspaces/{ks}/keys/import"),
            json!({"keys": [{"plaintext": foreign_key(5), "owner": "acme"}], "allow_policy_violations": true}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let report = app.get("/v1/reports/inventory").await.expect(200).body;
    let row = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(row["findings"]
        .as_array()
        .unwrap()
        .contains(&json!("exceeds_max_lifetime")));
}
both!(keyspace_policy_applies_unless_violations_are_allowed);

async fn an_imported_key_is_revoked_when_reported_leaked(app: TestApp) {
    let ks = legacy_keyspace(&app).await;
    let k = foreign_key(0);
    import(
        &app,
        &ks,
        json!({"keys": [{"hash": sha256_hex(&k), "algorithm": "sha256"}]}),
    )
    .await
    .expect(201);
    let r = app
        .http
        .post(format!("{}/v1/leaks", app.url))
        .json(&json!({"key": k, "source": "https://example.com/paste"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started = std::time::Instant::now();
    while app.verify_code(&k).await != "REVOKED" {
        assert!(started.elapsed() < Duration::from_secs(10), "never revoked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
both!(an_imported_key_is_revoked_when_reported_leaked);

/// A key imported on one node verifies on another at once, and a key tried on a node before it
/// was imported (cached there as missing) verifies once the import reaches it.
async fn an_imported_key_verifies_on_every_node(a: TestApp) {
    let b = spawn_node(&a).await;
    let ks = legacy_keyspace(&a).await;
    let first = foreign_key(0);
    import(&a, &ks, json!({"keys": [{"plaintext": first}]}))
        .await
        .expect(201);
    assert_eq!(
        b.verify_code(&first).await,
        "VALID",
        "the very next request"
    );
    // Tried on b before it exists: cached there as missing; imported on a.
    let later = foreign_key(1);
    assert_eq!(b.verify_code(&later).await, "NOT_FOUND");
    let (salted, lookup) = drf_key(2);
    assert_eq!(b.verify_code(&salted).await, "NOT_FOUND");
    import(
        &a,
        &ks,
        json!({"keys": [
            {"plaintext": later},
            {"hash": argon2id(&salted), "algorithm": "argon2id", "lookup": lookup},
        ]}),
    )
    .await
    .expect(201);
    let started = std::time::Instant::now();
    for key in [&later, &salted] {
        while b.verify_code(key).await != "VALID" {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never valid on b"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(a.verify_code(&salted).await, "VALID");
    b.stop().await;
}
both!(an_imported_key_verifies_on_every_node);

async fn keyward(app: &TestApp, args: &[&str]) -> std::process::Output {
    crate::cli::run(&app.url, &app.admin, args).await
}

async fn the_cli_imports_json_lines_and_csv_in_batches_and_can_run_again(app: TestApp) {
    let ks = legacy_keyspace(&app).await;
    let dir = TempDir::new();
    // 2,500 JSON Lines records (three batches), blank lines allowed.
    let keys: Vec<String> = (0..2500).map(foreign_key).collect();
    let mut jsonl = String::new();
    for (i, k) in keys.iter().enumerate() {
        let rec = if i % 2 == 0 {
            json!({"plaintext": k, "external_id": format!("j{i}"), "scopes": ["read"]})
        } else {
            json!({"hash": sha256_hex(k), "algorithm": "sha256", "external_id": format!("j{i}")})
        };
        jsonl.push_str(&format!("{rec}\n"));
        if i == 7 {
            jsonl.push('\n');
        }
    }
    let path = dir.0.join("keys.jsonl");
    std::fs::write(&path, &jsonl).unwrap();
    let p = path.to_str().unwrap();
    let o = keyward(&app, &["keys", "import", "--keyspace", &ks, p]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("2500 records, 2500 created, 0 skipped"),
        "{out}"
    );
    assert!(out.contains("in 3 requests"), "{out}");
    assert_eq!(app.verify_code(&keys[0]).await, "VALID");
    assert_eq!(app.verify_code(&keys[2499]).await, "VALID");
    // Again: everything skipped, as JSON.
    let o = keyward(
        &app,
        &[
            "keys",
            "import",
            "--keyspace",
            &ks,
            p,
            "--json",
            "--batch-size",
            "500",
        ],
    )
    .await;
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            v["created"].clone(),
            v["skipped"].clone(),
            v["requests"].clone()
        ),
        (json!(0), json!(2500), json!(5))
    );

    // CSV with quoting, lists and labels; the format is read from the file name.
    let (drf, lookup) = drf_key(1);
    let csv_keys = [foreign_key(1), foreign_key(2)];
    let csv = format!(
        "name,owner,scopes,labels,plaintext,hash,algorithm,lookup,external_id,created_at\n\
         \"billing, prod\",acme,orders:read orders:write,env=prod;team=a,{},,,,c1,2026-01-01T00:00:00Z\n\
         second,acme,,,{},,,,c2,1767225600000\n\
         drf,,,,,{},bcrypt,{lookup},c3,\n",
        csv_keys[0],
        csv_keys[1],
        bcrypt::hash(&drf, 4).unwrap()
    );
    let cpath = dir.0.join("keys.csv");
    std::fs::write(&cpath, csv).unwrap();
    let o = keyward(
        &app,
        &["keys", "import", "--keyspace", &ks, cpath.to_str().unwrap()],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for k in csv_keys.iter().chain([&drf]) {
        assert_eq!(app.verify_code(k).await, "VALID");
    }
    let listed = app
        .get(&format!("/v1/keys?keyspace_id={ks}&owner=acme"))
        .await
        .body;
    let billing = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["external_id"] == "c1")
        .unwrap()
        .clone();
    assert_eq!(billing["name"], "billing, prod");
    assert_eq!(billing["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(billing["labels"]["team"], "a");
    assert_eq!(billing["created_at"], "2026-01-01T00:00:00Z");

    // A bad record names its line; the batch is refused, no key shows in any output.
    let bad = format!(
        "{}\n{}\n",
        json!({"plaintext": foreign_key(5), "external_id": "b1"}),
        json!({"plaintext": foreign_key(6), "algorithm": "bcrypt"})
    );
    let bpath = dir.0.join("bad.jsonl");
    std::fs::write(&bpath, &bad).unwrap();
    let o = keyward(
        &app,
        &["keys", "import", "--keyspace", &ks, bpath.to_str().unwrap()],
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.jsonl:2: keys[1].algorithm"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    // A record the CLI cannot read: its line, and none of its values.
    let unreadable = format!(
        "{{\"plaintext\": \"{}\", \"remaining\": \"{}\"}}\n",
        foreign_key(7),
        foreign_key(8)
    );
    std::fs::write(&bpath, &unreadable).unwrap();
    let o = keyward(
        &app,
        &["keys", "import", "--keyspace", &ks, bpath.to_str().unwrap()],
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.jsonl:1"), "{err}");
    assert!(!err.contains("sk_live_"), "no key in {err}");
}
both!(the_cli_imports_json_lines_and_csv_in_batches_and_can_run_again);

async fn the_dashboard_imports_pasted_records_and_names_a_refused_line(app: TestApp) {
    use crate::dashboard::{add_user, sign_in};
    use keyward_core::model::Role;
    add_user(&app, "ops@example.com", Role::Admin).await;
    let b = sign_in(&app, "ops@example.com").await;
    let ks = legacy_keyspace(&app).await;
    let page = b
        .get(&format!("/keyspaces/{ks}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Import keys") && page.contains(r#"action="/keyspaces/"#));
    let (k1, k2) = (foreign_key(1), foreign_key(2));
    let records = format!(
        "{}\n\n{}\n",
        json!({"plaintext": k1, "external_id": "d1", "owner": "acme"}),
        json!({"hash": sha256_hex(&k2), "algorithm": "sha256", "external_id": "d2"})
    );
    let path = format!("/keyspaces/{ks}/import");
    let r = b
        .post(
            &path,
            &[("csrf", b.csrf.as_str()), ("records", records.as_str())],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("done=import"));
    assert_eq!(app.verify_code(&k1).await, "VALID");
    assert_eq!(app.verify_code(&k2).await, "VALID");
    // A refused record: its line is named, nothing is imported, the records are not echoed.
    let k3 = foreign_key(3);
    let bad = format!(
        "{}\n{}\n",
        json!({"plaintext": k3}),
        json!({"plaintext": foreign_key(4), "created_at": "2099-01-01T00:00:00Z"})
    );
    let r = b
        .post(
            &path,
            &[("csrf", b.csrf.as_str()), ("records", bad.as_str())],
        )
        .await;
    assert_eq!(r.status(), 400);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Nothing was imported: line 2, created_at"),
        "{html}"
    );
    assert!(!html.contains(&k3), "the pasted keys are not shown again");
    assert_eq!(app.verify_code(&k3).await, "NOT_FOUND");
    // The key page shows where a key came from.
    let id = app
        .get(&format!("/v1/keys?keyspace_id={ks}&owner=acme"))
        .await
        .body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let detail = b.get(&format!("/keys/{id}")).await.text().await.unwrap();
    assert!(detail.contains("external id") && detail.contains("d1"));
    // Without the form's token: refused.
    let r = b.post(&path, &[("records", records.as_str())]).await;
    assert_eq!(r.status(), 403);
}
both!(the_dashboard_imports_pasted_records_and_names_a_refused_line);
