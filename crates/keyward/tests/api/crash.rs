//! `kill -9` under load: clients create, patch, revoke, rotate and verify keys concurrently
//! against a real `keyward serve`, which is killed at a random moment and restarted. After
//! every restart each acknowledged change is there, the audit chain verifies, and usage lost is
//! at most what was counted in the last flush interval before the kill.
//!
//! `cargo test` runs 2 cycles per backend; `scripts/crash-test.sh` (or
//! `KEYWARD_CRASH_CYCLES=20 cargo test -p keyward --test api crash -- --nocapture`) runs the
//! long version and prints its figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{fresh_db, Backend};
use crate::secrets::{admin_token, kill9, start_with};

const FLUSH_MS: u64 = 100;
const CLIENTS: usize = 4;

/// What one client knows the server acknowledged, per key it owns.
#[derive(Default, Clone)]
struct Known {
    /// The last acknowledged name, and a name sent whose answer never came.
    name: String,
    pending_name: Option<String>,
    revoked: bool,
    pending_revoke: bool,
    /// The successor of an acknowledged rotation.
    rotated_to: Option<String>,
    /// Acknowledged VALID verifications, with when they were answered.
    verified: Vec<Instant>,
    /// The plaintext, for verifications.
    plain: Option<String>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Figures {
    cycles: usize,
    acknowledged: usize,
    verified: usize,
    lost_uses: u64,
    lost_bound: u64,
}

async fn client(
    base: String,
    token: String,
    keyspace: String,
    seed: u64,
    known: Arc<Mutex<HashMap<String, (Known, String)>>>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = Rng(seed | 1);
    let ack = || acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    loop {
        let mine: Vec<(String, Known, String)> = {
            let k = known.lock().unwrap();
            k.iter()
                .filter(|(_, (_, owner))| owner.as_str() == format!("c{seed}"))
                .map(|(id, (kn, _))| (id.clone(), kn.clone(), String::new()))
                .collect()
        };
        let live: Vec<&(String, Known, String)> = mine
            .iter()
            .filter(|(_, k, _)| !k.revoked && !k.pending_revoke && k.rotated_to.is_none())
            .collect();
        let op = if live.is_empty() { 0 } else { rng.next(10) };
        let res = match op {
            0..=2 => {
                let name = format!("n{}", rng.next(1_000_000));
                let r = http
                    .post(format!("{base}/v1/keys"))
                    .bearer_auth(&token)
                    .json(&json!({"keyspace_id": keyspace, "name": name, "owner": format!("c{seed}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        let id = v["id"].as_str().unwrap().to_string();
                        let plain = v["key"].as_str().unwrap().to_string();
                        known.lock().unwrap().insert(
                            id,
                            (
                                Known {
                                    name,
                                    plain: Some(plain),
                                    ..Known::default()
                                },
                                format!("c{seed}"),
                            ),
                        );
                        ack();
                        Ok(())
                    }
                    Ok(r) => panic!("create answered {}", r.status()),
                    Err(_) => Err(()),
                }
            }
            3..=4 => {
                let (id, _, _) = live[rng.next(live.len() as u64) as usize];
                let name = format!("p{}", rng.next(1_000_000));
                known.lock().unwrap().get_mut(id).unwrap().0.pending_name = Some(name.clone());
                let r = http
                    .patch(format!("{base}/v1/keys/{id}"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let mut k = known.lock().unwrap();
                        let e = &mut k.get_mut(id).unwrap().0;
                        e.name = name;
                        e.pending_name = None;
                        ack();
                        Ok(())
                    }
                    Ok(r) => panic!("patch answered {}", r.status()),
                    Err(_) => Err(()),
                }
            }
            5 => {
                let (id, _, _) = live[rng.next(live.len() as u64) as usize];
                known.lock().unwrap().get_mut(id).unwrap().0.pending_revoke = true;
                let r = http
                    .post(format!("{base}/v1/keys/{id}/revoke"))
                    .bearer_auth(&token)
                    .json(&json!({"reason": "crash test"}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        known.lock().unwrap().get_mut(id).unwrap().0.revoked = true;
                        ack();
                        Ok(())
                    }
                    Ok(r) => panic!("revoke answered {}", r.status()),
                    Err(_) => Err(()),
                }
            }
            6 => {
                let (id, _, _) = live[rng.next(live.len() as u64) as usize];
                let r = http
                    .post(format!("{base}/v1/keys/{id}/rotate"))
                    .bearer_auth(&token)
                    .json(&json!({"grace_secs": 3600}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        let new_id = v["id"].as_str().unwrap().to_string();
                        let mut k = known.lock().unwrap();
                        k.get_mut(id).unwrap().0.rotated_to = Some(new_id.clone());
                        k.insert(
                            new_id,
                            (
                                Known {
                                    name: v["name"].as_str().unwrap_or("").to_string(),
                                    plain: v["key"].as_str().map(str::to_string),
                                    ..Known::default()
                                },
                                format!("c{seed}"),
                            ),
                        );
                        ack();
                        Ok(())
                    }
                    Ok(r) => panic!("rotate answered {}", r.status()),
                    Err(_) => Err(()),
                }
            }
            _ => {
                // Verify one of this client's live keys (usage counting).
                let (_, k, _) = live[rng.next(live.len() as u64) as usize];
                let Some(plain) = k.plain.clone() else {
                    continue;
                };
                let r = http
                    .post(format!("{base}/v1/verify"))
                    .json(&json!({"key": plain}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        if v["code"] == "VALID" {
                            let id = v["key_id"].as_str().unwrap().to_string();
                            if let Some(e) = known.lock().unwrap().get_mut(&id) {
                                e.0.verified.push(Instant::now());
                            }
                        }
                        Ok(())
                    }
                    Ok(r) => panic!("verify answered {}", r.status()),
                    Err(_) => Err(()),
                }
            }
        };
        if res.is_err() {
            // The server is gone: whatever was in flight may or may not have happened.
            return;
        }
    }
}

/// Checks every acknowledged change after a restart, then makes what the server holds the new
/// baseline (a change in flight at the kill may or may not have happened).
async fn check(
    base: &str,
    token: &str,
    known: &mut HashMap<String, (Known, String)>,
    killed_at: Instant,
    figures: &mut Figures,
) {
    let http = reqwest::Client::new();
    for (id, (k, _)) in known.iter_mut() {
        let r = http
            .get(format!("{base}/v1/keys/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged key {id} is missing");
        let v: Value = r.json().await.unwrap();
        let name = v["name"].as_str().unwrap();
        assert!(
            name == k.name || Some(name) == k.pending_name.as_deref(),
            "{id}: name {name}, acknowledged {}",
            k.name
        );
        if k.revoked {
            assert_eq!(v["status"], "revoked", "{id}");
        } else if !k.pending_revoke {
            assert_ne!(v["status"], "revoked", "{id} was never revoked");
        }
        if let Some(next) = &k.rotated_to {
            assert_eq!(v["rotated_to"], next.as_str(), "{id}");
        }
        // Usage: everything acknowledged more than a flush interval (and a margin) before the
        // kill was written.
        let counted = v["call_count"].as_u64().unwrap_or(0);
        let acked = k.verified.len() as u64;
        let settled = k
            .verified
            .iter()
            .filter(|t| killed_at.duration_since(**t) > Duration::from_millis(FLUSH_MS + 150))
            .count() as u64;
        assert!(
            counted >= settled,
            "{id}: {counted} uses counted, {settled} acknowledged before the last flush interval"
        );
        figures.lost_uses += acked.saturating_sub(counted);
        figures.lost_bound += acked - settled;
        figures.verified += k.verified.len();
        k.name = name.to_string();
        k.pending_name = None;
        k.revoked = v["status"] == "revoked";
        k.pending_revoke = false;
        k.rotated_to = v["rotated_to"].as_str().map(str::to_string);
        k.verified.clear();
    }
    let chain: Value = http
        .get(format!("{base}/v1/audit/verify"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chain["ok"], true, "{chain}");
}

async fn crash_cycles(backend: Backend) {
    let Some((url, _dir)) = fresh_db(backend).await else {
        return;
    };
    let cycles: usize = std::env::var("KEYWARD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let token = admin_token(&url);
    let env = [("KEYWARD_USAGE_FLUSH_MS", "100"), ("KEYWARD_LOG", "info")];
    let known: Arc<Mutex<HashMap<String, (Known, String)>>> = Arc::default();
    let mut figures = Figures::default();
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64);
    let server = start_with(&url, &env);
    let ks: Value = reqwest::Client::new()
        .post(format!("{}/v1/keyspaces", server.url))
        .bearer_auth(&token)
        .json(&json!({"name": "crash", "prefix": format!("crash{}", rng.next(1_000_000))}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keyspace = ks["id"].as_str().unwrap().to_string();
    let mut server = Some(server);
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for cycle in 0..cycles {
        let proc = server.take().unwrap_or_else(|| start_with(&url, &env));
        let base = proc.url.clone();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client(
                    base.clone(),
                    token.clone(),
                    keyspace.clone(),
                    rng.next(u64::MAX) ^ (i as u64) << 32 | i as u64,
                    known.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.next(900))).await;
        let killed_at = Instant::now();
        kill9(proc);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let proc = start_with(&url, &env);
        let mut snapshot = known.lock().unwrap().clone();
        check(&proc.url, &token, &mut snapshot, killed_at, &mut figures).await;
        *known.lock().unwrap() = snapshot;
        figures.cycles = cycle + 1;
        server = Some(proc);
    }
    if let Some(p) = server {
        kill9(p);
    }
    figures.acknowledged = acked.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "crash test ({backend:?}): {} kill -9 cycles, {} acknowledged changes all present, {} keys, \
         audit chain intact after each; {} acknowledged verifications, {} not counted \
         (at most {} were in the last flush interval before a kill)",
        figures.cycles,
        figures.acknowledged,
        known.lock().unwrap().len(),
        figures.verified,
        figures.lost_uses,
        figures.lost_bound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9_on_sqlite() {
    crash_cycles(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9_on_postgres() {
    crash_cycles(Backend::Postgres).await;
}
