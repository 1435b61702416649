//! The commands that talk to a running server, all through `keyward-client`: tables by
//! default, the API's JSON with `--json`, and the exit codes of [`crate::exit`].

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::ValueEnum;
use keyward_client::{
    AnomalyQuery, BulkRevoke, ChainCheck, Client, CreateKey, CreateKeyspace, CreateToken,
    CreateWebhook, Error, KeyQuery, PageQuery, PatchKeyspace, Role, RotateKey, RouteRule,
    UsageQuery,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::{
    AnomaliesCmd, AuditCmd, IdentitiesCmd, KeysCmd, KeyspacesCmd, Remote, ReportFormat, ReportsCmd,
    RotateFormat, TokensCmd, UsageCmd, UsageRange, WebhooksCmd,
};
use crate::exit::{EXIT_CHAIN_BROKEN, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::output::{self, print_key, print_keys, Format};

type Outcome = Result<ExitCode, Error>;

/// Runs a command and turns its error into a message and an exit code.
async fn finish(f: impl std::future::Future<Output = Outcome>) -> ExitCode {
    match f.await {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// Prints a client error and gives its exit code.
pub(crate) fn fail(e: Error) -> ExitCode {
    let hint = match e.status() {
        Some(401) => " (check KEYWARD_TOKEN)",
        _ => "",
    };
    eprintln!("error: {e}{hint}");
    ExitCode::from(match e {
        Error::Unreachable(_) | Error::Timeout(_) => EXIT_UNREACHABLE,
        Error::Usage(_) => EXIT_USAGE,
        _ => EXIT_FAILED,
    })
}

/// The client of the server `--url`/`KEYWARD_URL` names, with `KEYWARD_TOKEN`.
pub(crate) fn client(remote: &Remote) -> Result<Client, Error> {
    let mut b = Client::builder(remote.url.clone());
    if let Some(t) = &remote.token {
        b = b.token(t.clone());
    }
    b.build()
}

fn misuse(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Prints a list page: the API's JSON, or a table and, on standard error, the next cursor.
fn print_page<T: Serialize>(
    remote: &Remote,
    page: &keyward_client::Page<T>,
    what: &str,
    table: impl Fn(&[Value]),
) {
    if remote.json {
        println!("{}", to_json(page));
        return;
    }
    let items: Vec<Value> = page.items.iter().map(to_json).collect();
    table(&items);
    if let Some(c) = &page.next_cursor {
        eprintln!("(more {what}: the next page starts at --cursor {c})");
    }
}

/// An argument's value as the command line spells it (`--preset strict` -> `"strict"`), which is
/// also how the API spells it.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Parses an enum of the API from the command line's spelling of it.
fn api_value<T: serde::de::DeserializeOwned>(v: impl ValueEnum) -> Result<T, Error> {
    let name = value_name(v);
    serde_json::from_value(json!(name)).map_err(|_| misuse(format!("unknown value '{name}'")))
}

/// A route-rules file: the JSON list the API takes.
fn read_routes(path: &std::path::Path) -> Result<Vec<RouteRule>, Error> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| misuse(format!("cannot read {}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| misuse(format!("{} is not JSON: {e}", path.display())))?;
    if !v.is_array() {
        return Err(misuse(format!(
            "{} must hold a JSON list of rules, e.g. [{{\"method\": \"GET\", \"path\": \"/orders/**\", \"scopes\": [\"orders:read\"]}}]",
            path.display()
        )));
    }
    keyward_core::routes::rules_from_json(v).map_err(|e| misuse(format!("{}: {e}", path.display())))
}

// ---------------------------------------------------------------- keyspaces

pub async fn keyspaces(cmd: KeyspacesCmd) -> ExitCode {
    finish(keyspaces_(cmd)).await
}

async fn keyspaces_(cmd: KeyspacesCmd) -> Outcome {
    let (remote, ks) = match cmd {
        KeyspacesCmd::Create {
            name,
            prefix,
            preset,
            routes_file,
            unmatched,
            remote,
        } => {
            let req = CreateKeyspace {
                name,
                prefix,
                preset: preset.map(api_value).transpose()?,
                routes: routes_file
                    .map(|f| read_routes(&f))
                    .transpose()?
                    .unwrap_or_default(),
                unmatched: unmatched.map(api_value).transpose()?.unwrap_or_default(),
                ..CreateKeyspace::default()
            };
            let ks = client(&remote)?.create_keyspace(&req).await?;
            (remote, ks)
        }
        KeyspacesCmd::List {
            limit,
            cursor,
            remote,
        } => {
            let page = client(&remote)?
                .list_keyspaces(&PageQuery {
                    limit: Some(limit),
                    cursor,
                })
                .await?;
            print_page(&remote, &page, "keyspaces", output::print_keyspaces);
            return Ok(ExitCode::SUCCESS);
        }
        KeyspacesCmd::Show { id, remote } => {
            let ks = client(&remote)?.get_keyspace(&id).await?;
            (remote, ks)
        }
        KeyspacesCmd::Pattern { id, remote } => {
            let ks = client(&remote)?.get_keyspace(&id).await?;
            let pattern = keyward_core::keyformat::pattern(&ks.prefix);
            if remote.json {
                println!(
                    "{}",
                    json!({"keyspace_id": ks.id, "prefix": ks.prefix, "pattern": pattern})
                );
            } else {
                println!("{pattern}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyspacesCmd::Update {
            id,
            name,
            routes_file,
            unmatched,
            remote,
        } => {
            let req = PatchKeyspace {
                name,
                routes: routes_file.map(|f| read_routes(&f)).transpose()?,
                unmatched: unmatched.map(api_value).transpose()?,
                ..PatchKeyspace::default()
            };
            if req.name.is_none() && req.routes.is_none() && req.unmatched.is_none() {
                return Err(misuse(
                    "nothing to change: give --name, --routes-file or --unmatched",
                ));
            }
            let ks = client(&remote)?.update_keyspace(&id, &req).await?;
            (remote, ks)
        }
    };
    if remote.json {
        println!("{}", to_json(&ks));
    } else {
        output::print_keyspace(&to_json(&ks));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- keys

pub async fn keys(cmd: KeysCmd) -> ExitCode {
    finish(keys_(cmd)).await
}

async fn keys_(cmd: KeysCmd) -> Outcome {
    match cmd {
        KeysCmd::Create {
            keyspace,
            name,
            owner,
            scopes,
            labels,
            ttl,
            remote,
        } => {
            let mut label_map = BTreeMap::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| misuse(format!("--label '{l}' must be name=value")))?;
                label_map.insert(k.to_string(), v.to_string());
            }
            let req = CreateKey {
                keyspace_id: keyspace,
                name,
                owner,
                scopes,
                labels: label_map,
                ttl_secs: ttl,
                ..CreateKey::default()
            };
            let created = client(&remote)?.create_key(&req).await?;
            let mut v = to_json(&created.object);
            if remote.json {
                v["key"] = json!(created.plaintext.expose());
                println!("{v}");
            } else {
                print_key(&v, Format::Table);
                println!();
                println!("key: {}", created.plaintext.expose());
                eprintln!(
                    "This is the only time the key is shown. Store it in a secret manager now."
                );
            }
        }
        KeysCmd::List {
            keyspace,
            owner,
            status,
            label,
            q,
            limit,
            cursor,
            remote,
        } => {
            let page = client(&remote)?
                .list_keys(&KeyQuery {
                    keyspace_id: keyspace,
                    owner,
                    status,
                    label,
                    q,
                    limit: Some(limit),
                    cursor,
                    ..KeyQuery::default()
                })
                .await?;
            print_page(&remote, &page, "keys", print_keys);
        }
        KeysCmd::Show { id, remote } => {
            let k = client(&remote)?.get_key(&id).await?;
            print_key(
                &to_json(&k),
                if remote.json {
                    Format::Json
                } else {
                    Format::Table
                },
            );
        }
        KeysCmd::Rotate {
            id,
            grace,
            reason,
            format,
            env_name,
            remote,
        } => {
            let req = RotateKey {
                grace_secs: grace,
                reason,
            };
            let created = client(&remote)?.rotate_key(&id, &req).await?;
            let key = created.plaintext.expose();
            let k = &created.object.key;
            match (format, remote.json) {
                (RotateFormat::Json, _) | (_, true) => println!(
                    "{}",
                    json!({"key": key, "id": k.id, "rotated_from": k.rotated_from, "expires_at": k.expires_at})
                ),
                (RotateFormat::Env, _) => println!("{env_name}={key}"),
                (RotateFormat::Plain, _) => println!("{key}"),
            }
        }
        // Dispatched to `crate::import` by main.rs; here only for the match to be whole.
        KeysCmd::Import(_) => return Err(misuse("use `keyward keys import`")),
        KeysCmd::Revoke {
            id,
            owner,
            keyspace,
            reason,
            remote,
        } => match (id, owner) {
            (Some(id), None) => {
                let k = client(&remote)?.revoke_key(&id, &reason).await?;
                if remote.json {
                    println!("{}", to_json(&k));
                } else {
                    println!("revoked {} ({})", k.key.id, k.key.name);
                }
            }
            (None, Some(owner)) => {
                let req = BulkRevoke {
                    owner,
                    keyspace_id: keyspace,
                    reason,
                };
                let r = client(&remote)?.revoke_owner_keys(&req).await?;
                if remote.json {
                    println!("{}", to_json(&r));
                } else {
                    println!("revoked {} keys", r.revoked);
                    for id in &r.key_ids {
                        println!("  {id}");
                    }
                }
            }
            _ => {
                return Err(misuse(
                    "give a key id, or --owner for every key of an owner (not both)",
                ))
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- audit

pub async fn audit(cmd: AuditCmd) -> ExitCode {
    finish(async {
        let AuditCmd::Verify { remote } = cmd;
        let check = client(&remote)?.verify_audit().await?;
        if remote.json {
            println!("{}", to_json(&check));
        }
        match check {
            ChainCheck::Ok { events, head } => {
                if !remote.json {
                    println!("audit chain OK: {events} events, head {head}");
                }
                Ok(ExitCode::SUCCESS)
            }
            ChainCheck::Bad {
                events,
                first_bad_seq,
            } => {
                if !remote.json {
                    println!("audit chain BROKEN: {events} events, first bad seq {first_bad_seq}");
                }
                Ok(ExitCode::from(EXIT_CHAIN_BROKEN))
            }
        }
    })
    .await
}

// ---------------------------------------------------------------- tokens

pub async fn tokens(cmd: TokensCmd) -> ExitCode {
    finish(async {
        match cmd {
            TokensCmd::Create {
                name,
                role,
                keyspaces,
                ttl,
                remote,
            } => {
                let role: Role = api_value(role)?;
                let req = CreateToken {
                    name,
                    role,
                    keyspace_ids: (!keyspaces.is_empty()).then_some(keyspaces),
                    ttl_secs: ttl,
                };
                let created = client(&remote)?.create_token(&req).await?;
                if remote.json {
                    let mut v = to_json(&created.object);
                    v["token"] = json!(created.plaintext.expose());
                    println!("{v}");
                } else {
                    eprintln!(
                        "token {} ({}, role {}). This is the only time it is shown:",
                        created.object.id,
                        created.object.name,
                        role.as_str()
                    );
                    println!("{}", created.plaintext.expose());
                }
            }
            TokensCmd::List {
                limit,
                cursor,
                remote,
            } => {
                let page = client(&remote)?
                    .list_tokens(&PageQuery {
                        limit: Some(limit),
                        cursor,
                    })
                    .await?;
                print_page(&remote, &page, "tokens", |items| {
                    output::rows(
                        items,
                        &[
                            ("ID", "id"),
                            ("NAME", "name"),
                            ("ROLE", "role"),
                            ("KEYSPACES", "keyspace_ids"),
                            ("EXPIRES", "expires_at"),
                            ("LAST USED", "last_used_at"),
                            ("REVOKED", "revoked_at"),
                        ],
                    )
                });
            }
            TokensCmd::Revoke { id, reason, remote } => {
                let t = client(&remote)?.revoke_token(&id, &reason).await?;
                if remote.json {
                    println!("{}", to_json(&t));
                } else {
                    println!("revoked token {} ({})", t.id, t.name);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}

// ---------------------------------------------------------------- webhooks

pub async fn webhooks(cmd: WebhooksCmd) -> ExitCode {
    finish(async {
        match cmd {
            WebhooksCmd::Create {
                endpoint: url,
                events,
                keyspace,
                remote,
            } => {
                let req = CreateWebhook {
                    url,
                    events,
                    keyspace_id: keyspace,
                };
                let created = client(&remote)?.create_webhook(&req).await?;
                if remote.json {
                    let mut v = to_json(&created.object);
                    v["secret"] = json!(created.secret.expose());
                    println!("{v}");
                } else {
                    eprintln!(
                        "webhook {} -> {}. Its signing secret, shown only now:",
                        created.object.id, created.object.url
                    );
                    println!("{}", created.secret.expose());
                }
            }
            WebhooksCmd::List {
                limit,
                cursor,
                remote,
            } => {
                let page = client(&remote)?
                    .list_webhooks(&PageQuery {
                        limit: Some(limit),
                        cursor,
                    })
                    .await?;
                print_page(&remote, &page, "webhooks", |items| {
                    output::rows(
                        items,
                        &[
                            ("ID", "id"),
                            ("URL", "url"),
                            ("EVENTS", "events"),
                            ("KEYSPACE", "keyspace_id"),
                            ("CREATED", "created_at"),
                        ],
                    )
                });
            }
            WebhooksCmd::Delete { id, remote } => {
                client(&remote)?.delete_webhook(&id).await?;
                if remote.json {
                    println!("{}", json!({"deleted": id}));
                } else {
                    println!("deleted webhook {id}");
                }
            }
            WebhooksCmd::Deliveries {
                id,
                limit,
                cursor,
                remote,
            } => {
                let page = client(&remote)?
                    .list_deliveries(
                        &id,
                        &PageQuery {
                            limit: Some(limit),
                            cursor,
                        },
                    )
                    .await?;
                print_page(&remote, &page, "deliveries", |items| {
                    output::rows(
                        items,
                        &[
                            ("AT", "at"),
                            ("EVENT", "event_id"),
                            ("TYPE", "type"),
                            ("ATTEMPT", "attempt"),
                            ("STATUS", "status_code"),
                            ("ERROR", "error"),
                        ],
                    )
                });
            }
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}

// ---------------------------------------------------------------- usage, anomalies, reports

fn usage_query(r: UsageRange) -> UsageQuery {
    UsageQuery {
        from: r.from,
        to: r.to,
        granularity: r.granularity.map(value_name),
    }
}

/// A usage answer as a table: one row per bucket, valid and denied calls.
fn print_usage(v: &Value) {
    let buckets = v["buckets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows: Vec<Vec<String>> = buckets
        .iter()
        .map(|b| {
            let denied: i64 = b["denied"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_i64).sum())
                .unwrap_or(0);
            vec![
                output::cell(&b["start"]),
                output::cell(&b["valid"]),
                denied.to_string(),
            ]
        })
        .collect();
    output::table(&["START", "VALID", "DENIED"], &rows);
    println!();
    println!(
        "{} to {} ({}): totals {}",
        output::cell(&v["from"]),
        output::cell(&v["to"]),
        output::cell(&v["granularity"]),
        v["totals"]
    );
}

pub async fn usage(cmd: UsageCmd) -> ExitCode {
    finish(async {
        let (remote, v) = match cmd {
            UsageCmd::Key { id, range, remote } => {
                let v = client(&remote)?.key_usage(&id, &usage_query(range)).await?;
                (remote, v)
            }
            UsageCmd::Keyspace { id, range, remote } => {
                let v = client(&remote)?
                    .keyspace_usage(&id, &usage_query(range))
                    .await?;
                (remote, v)
            }
        };
        if remote.json {
            println!("{v}");
        } else {
            print_usage(&v);
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}

// ---------------------------------------------------------------- identities

pub async fn identities(cmd: IdentitiesCmd) -> ExitCode {
    finish(identities_(cmd)).await
}

fn print_identity(remote: &Remote, i: &keyward_client::Identity) {
    if remote.json {
        println!("{}", to_json(i));
    } else {
        output::rows(
            &[to_json(i)],
            &[
                ("ID", "id"),
                ("NAME", "name"),
                ("ENABLED", "enabled"),
                ("LIMITS", "ratelimits"),
                ("QUOTA", "remaining"),
                ("CREATED", "created_at"),
            ],
        );
    }
}

async fn identities_(cmd: IdentitiesCmd) -> Outcome {
    match cmd {
        IdentitiesCmd::Create {
            id,
            name,
            limits,
            quota,
            remote,
        } => {
            let (remaining, refill) = quota.to_api();
            let req = keyward_client::CreateIdentity {
                id,
                name,
                ratelimits: limits,
                remaining,
                refill,
                ..Default::default()
            };
            let i = client(&remote)?.create_identity(&req).await?;
            print_identity(&remote, &i);
        }
        IdentitiesCmd::List {
            limit,
            cursor,
            remote,
        } => {
            let page = client(&remote)?
                .list_identities(&PageQuery {
                    limit: Some(limit),
                    cursor,
                })
                .await?;
            print_page(&remote, &page, "identities", |items| {
                output::rows(
                    items,
                    &[
                        ("ID", "id"),
                        ("NAME", "name"),
                        ("ENABLED", "enabled"),
                        ("CREATED", "created_at"),
                    ],
                )
            });
        }
        IdentitiesCmd::Show { id, remote } => {
            let i = client(&remote)?.get_identity(&id).await?;
            print_identity(&remote, &i);
        }
        IdentitiesCmd::Quota { id, quota, remote } => {
            let (remaining, refill) = quota.to_api();
            let req = keyward_client::PatchIdentity {
                remaining: Some(remaining),
                refill: remaining.map(|_| refill),
                ..Default::default()
            };
            let i = client(&remote)?.update_identity(&id, &req).await?;
            print_identity(&remote, &i);
        }
        IdentitiesCmd::Limits { id, limits, remote } => {
            let req = keyward_client::PatchIdentity {
                ratelimits: Some(limits),
                ..Default::default()
            };
            let i = client(&remote)?.update_identity(&id, &req).await?;
            print_identity(&remote, &i);
        }
        IdentitiesCmd::Disable { id, remote } => {
            let req = keyward_client::PatchIdentity {
                enabled: Some(false),
                ..Default::default()
            };
            let i = client(&remote)?.update_identity(&id, &req).await?;
            print_identity(&remote, &i);
        }
        IdentitiesCmd::Enable { id, remote } => {
            let req = keyward_client::PatchIdentity {
                enabled: Some(true),
                ..Default::default()
            };
            let i = client(&remote)?.update_identity(&id, &req).await?;
            print_identity(&remote, &i);
        }
        IdentitiesCmd::Delete { id, remote } => {
            client(&remote)?.delete_identity(&id).await?;
            if !remote.json {
                println!("deleted identity {id}");
            }
        }
        IdentitiesCmd::Usage { id, range, remote } => {
            let v = client(&remote)?
                .identity_usage(&id, &usage_query(range))
                .await?;
            if remote.json {
                println!("{v}");
            } else {
                print_usage(&v);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn anomalies(cmd: AnomaliesCmd) -> ExitCode {
    finish(async {
        let AnomaliesCmd::List {
            keyspace,
            key,
            since,
            limit,
            cursor,
            remote,
        } = cmd;
        let page = client(&remote)?
            .list_anomalies(&AnomalyQuery {
                keyspace_id: keyspace,
                key_id: key,
                since,
                limit: Some(limit),
                cursor,
            })
            .await?;
        print_page(&remote, &page, "anomalies", |items| {
            output::rows(
                items,
                &[
                    ("DETECTED", "detected_at"),
                    ("KIND", "kind"),
                    ("KEY", "key_id"),
                    ("KEYSPACE", "keyspace_id"),
                    ("DETAIL", "detail"),
                ],
            )
        });
        Ok(ExitCode::SUCCESS)
    })
    .await
}

pub async fn reports(cmd: ReportsCmd) -> ExitCode {
    finish(async {
        let ReportsCmd::Inventory {
            keyspace,
            format,
            remote,
        } = cmd;
        let c = client(&remote)?;
        match (format, remote.json) {
            (ReportFormat::Csv, _) => {
                use std::io::Write;
                let mut res = c.inventory_csv(keyspace.as_deref()).await?;
                let mut out = std::io::stdout().lock();
                while let Some(chunk) = res
                    .chunk()
                    .await
                    .map_err(|_| Error::Decode("the report stopped before its end".into()))?
                {
                    out.write_all(&chunk)
                        .map_err(|e| misuse(format!("cannot write the report: {e}")))?;
                }
            }
            (ReportFormat::Json, _) | (_, true) => {
                println!("{}", c.inventory(keyspace.as_deref()).await?);
            }
            (ReportFormat::Table, false) => {
                let v = c.inventory(keyspace.as_deref()).await?;
                output::rows(
                    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                    &[
                        ("ID", "id"),
                        ("NAME", "name"),
                        ("OWNER", "owner"),
                        ("STATUS", "status"),
                        ("AGE DAYS", "age_days"),
                        ("DAYS SINCE USE", "days_since_use"),
                        ("CALLS", "call_count"),
                        ("FINDINGS", "findings"),
                    ],
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}
