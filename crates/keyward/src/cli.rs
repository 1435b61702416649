//! Command-line arguments and dispatch.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::output::{print_key, print_keys, Format};

pub use crate::exit::{EXIT_CHAIN_BROKEN, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE};

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Self-hosted API key lifecycle manager"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (API and dashboard) on the embedded SQLite database or PostgreSQL.
    Serve(Box<ServeArgs>),
    /// Management tokens (created on the database directly).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Dashboard users (created and disabled on the database directly).
    #[command(subcommand)]
    User(UserCmd),
    /// API keys, through a running server (KEYWARD_URL, KEYWARD_TOKEN).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Keyspaces (prefix, policy, route rules), through a running server.
    #[command(subcommand)]
    Keyspaces(KeyspacesCmd),
    /// The audit trail, through a running server.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Write a consistent copy of the SQLite database to a new file while it serves.
    Backup {
        /// The backup file to create.
        #[arg(long)]
        to: std::path::PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// The master key that seals webhook signing secrets at rest.
    #[command(subcommand, name = "master-key")]
    MasterKey(MasterKeyCmd),
    /// Replace the SQLite database with a backup, once its audit chain verifies (refused while
    /// a server uses the database).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: std::path::PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum MasterKeyCmd {
    /// Re-seal every webhook secret under a new master key (servers stopped). The new key is
    /// read from --new-key-file, or generated there when the file does not exist; for SQLite
    /// with the key beside the database, generated and put in its place.
    Rotate {
        #[arg(long)]
        new_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        key: crate::master_key::KeyArgs,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub key: crate::master_key::KeyArgs,
    #[command(flatten)]
    pub config: keyward_server::Config,
}

#[derive(Args)]
pub struct DbArgs {
    /// sqlite://PATH (default) or postgres://...
    #[arg(
        long,
        env = "KEYWARD_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://keyward.db"
    )]
    pub database_url: String,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a management token on the database directly; prints only the token.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["admin", "manager", "viewer", "auditor", "verifier"])]
        role: String,
        /// Limit the token to this keyspace (repeatable).
        #[arg(long = "keyspace")]
        keyspaces: Vec<String>,
        /// Lifetime, e.g. 90d, 12h, 3600.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<i64>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a dashboard user; asks for the password (or reads one line with --password-stdin).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["admin", "manager", "viewer", "auditor", "verifier"])]
        role: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Disable a dashboard user and end its sessions.
    Disable {
        #[arg(long)]
        email: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "KEYWARD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// A management token.
    #[arg(long, env = "KEYWARD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key; prints the plaintext once.
    Create {
        #[arg(long)]
        keyspace: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// name=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Lifetime, e.g. 90d, 12h, 3600.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List keys.
    List {
        #[arg(long)]
        keyspace: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// name:value
        #[arg(long)]
        label: Option<String>,
        /// Substring of the name.
        #[arg(long)]
        q: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one key.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Rotate a key; prints only the new key.
    Rotate {
        id: String,
        /// Grace period of the old key, e.g. 24h, 0.
        #[arg(long, value_parser = parse_duration)]
        grace: Option<i64>,
        #[arg(long)]
        reason: Option<String>,
        /// How to print the new key.
        #[arg(long, value_enum, default_value_t = RotateFormat::Plain)]
        format: RotateFormat,
        /// Variable name for --format env.
        #[arg(long, default_value = "KEYWARD_API_KEY")]
        env_name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke one key, or with --owner every key of an owner.
    Revoke {
        id: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        keyspace: Option<String>,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum KeyspacesCmd {
    /// Create a keyspace.
    Create {
        #[arg(long)]
        name: String,
        /// The keys' prefix, e.g. acme_live.
        #[arg(long)]
        prefix: String,
        #[arg(long, value_enum)]
        preset: Option<PresetArg>,
        /// Route rules for forward-auth: a file holding the JSON list (`-` reads standard input).
        #[arg(long)]
        routes_file: Option<std::path::PathBuf>,
        /// What a forward-auth request no route rule matches gets.
        #[arg(long, value_enum)]
        unmatched: Option<UnmatchedArg>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List keyspaces.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one keyspace with its policy and route rules.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change a keyspace's name or route rules (the file replaces every rule).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// The new route rules: a file holding the JSON list (`-` reads standard input; `[]`
        /// removes every rule).
        #[arg(long)]
        routes_file: Option<std::path::PathBuf>,
        #[arg(long, value_enum)]
        unmatched: Option<UnmatchedArg>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PresetArg {
    Strict,
    Standard,
    Relaxed,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum UnmatchedArg {
    Allow,
    Deny,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RotateFormat {
    Plain,
    Env,
    Json,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain of the whole audit trail.
    Verify {
        #[command(flatten)]
        remote: Remote,
    },
}

/// `90d`, `12h`, `30m`, `45s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('d') => (&s[..s.len() - 1], 86_400),
        Some('h') => (&s[..s.len() - 1], 3_600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a duration such as 90d, 12h, 30m, 45s or 3600"))
}

fn fail(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ClientError::Unreachable(_) => ExitCode::from(EXIT_UNREACHABLE),
        ClientError::Usage(_) => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::from(EXIT_FAILED),
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            crate::offline::serve(&args.listen, &args.db.database_url, &args.key, args.config).await
        }
        Command::Token(TokenCmd::Create {
            name,
            role,
            keyspaces,
            ttl,
            db,
        }) => crate::offline::token_create(&db.database_url, name, &role, keyspaces, ttl).await,
        Command::User(UserCmd::Create {
            email,
            role,
            password_stdin,
            db,
        }) => crate::offline::user_create(&db.database_url, &email, &role, password_stdin).await,
        Command::User(UserCmd::Disable { email, db }) => {
            crate::offline::user_disable(&db.database_url, &email).await
        }
        Command::MasterKey(MasterKeyCmd::Rotate {
            new_key_file,
            db,
            key,
        }) => crate::master_key::rotate(&db.database_url, &key, new_key_file.as_deref()).await,
        Command::Backup { to, db } => crate::backup::backup(&db.database_url, &to).await,
        Command::Restore { from, db } => crate::backup::restore(&db.database_url, &from).await,
        Command::Keys(cmd) => match keys(cmd).await {
            Ok(code) => code,
            Err(e) => fail(e),
        },
        Command::Keyspaces(cmd) => match keyspaces(cmd).await {
            Ok(code) => code,
            Err(e) => fail(e),
        },
        Command::Audit(AuditCmd::Verify { remote }) => {
            let client = match Client::new(&remote.url, remote.token.as_deref()) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            match client.get("/v1/audit/verify").await {
                Ok(v) => {
                    let ok = v["ok"].as_bool() == Some(true);
                    if remote.json {
                        println!("{v}");
                    } else if ok {
                        println!(
                            "audit chain OK: {} events, head {}",
                            v["events"],
                            v["head"].as_str().unwrap_or("")
                        );
                    } else {
                        println!(
                            "audit chain BROKEN: {} events, first bad seq {}",
                            v["events"], v["first_bad_seq"]
                        );
                    }
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_CHAIN_BROKEN)
                    }
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// A route-rules file: the JSON list the API takes.
fn read_routes(path: &std::path::Path) -> Result<Value, ClientError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("{} is not JSON: {e}", path.display())))?;
    if !v.is_array() {
        return Err(ClientError::Usage(format!(
            "{} must hold a JSON list of rules, e.g. [{{\"method\": \"GET\", \"path\": \"/orders/**\", \"scopes\": [\"orders:read\"]}}]",
            path.display()
        )));
    }
    Ok(v)
}

/// An argument's value as the command line spells it (`--preset strict` -> `"strict"`), which is
/// also how the API spells it.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

async fn keyspaces(cmd: KeyspacesCmd) -> Result<ExitCode, ClientError> {
    let (remote, v) = match cmd {
        KeyspacesCmd::Create {
            name,
            prefix,
            preset,
            routes_file,
            unmatched,
            remote,
        } => {
            let mut body = json!({"name": name, "prefix": prefix});
            if let Some(p) = preset {
                body["preset"] = json!(value_name(p));
            }
            if let Some(f) = routes_file {
                body["routes"] = read_routes(&f)?;
            }
            if let Some(u) = unmatched {
                body["unmatched"] = json!(value_name(u));
            }
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let v = client.post("/v1/keyspaces", &body).await?;
            (remote, v)
        }
        KeyspacesCmd::List { limit, remote } => {
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let v = client
                .get_query("/v1/keyspaces", &[("limit", limit.to_string())])
                .await?;
            if remote.json {
                println!("{v}");
            } else {
                crate::output::print_keyspaces(
                    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                );
                if let Some(c) = v["next_cursor"].as_str() {
                    eprintln!("(more keyspaces: the next page starts at cursor {c})");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyspacesCmd::Show { id, remote } => {
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let v = client
                .get(&format!("/v1/keyspaces/{}", encode_segment(&id)))
                .await?;
            (remote, v)
        }
        KeyspacesCmd::Update {
            id,
            name,
            routes_file,
            unmatched,
            remote,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(f) = routes_file {
                body["routes"] = read_routes(&f)?;
            }
            if let Some(u) = unmatched {
                body["unmatched"] = json!(value_name(u));
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(ClientError::Usage(
                    "nothing to change: give --name, --routes-file or --unmatched".into(),
                ));
            }
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let v = client
                .patch(&format!("/v1/keyspaces/{}", encode_segment(&id)), &body)
                .await?;
            (remote, v)
        }
    };
    if remote.json {
        println!("{v}");
    } else {
        crate::output::print_keyspace(&v);
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys(cmd: KeysCmd) -> Result<ExitCode, ClientError> {
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
            let mut label_map = serde_json::Map::new();
            for l in labels {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    ClientError::Usage(format!("--label '{l}' must be name=value"))
                })?;
                label_map.insert(k.to_string(), json!(v));
            }
            let mut body = json!({"keyspace_id": keyspace, "name": name, "scopes": scopes, "labels": label_map});
            if let Some(o) = owner {
                body["owner"] = json!(o);
            }
            if let Some(t) = ttl {
                body["ttl_secs"] = json!(t);
            }
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let v = client.post("/v1/keys", &body).await?;
            if remote.json {
                println!("{v}");
            } else {
                print_key(&v, Format::Table);
                println!();
                println!("key: {}", v["key"].as_str().unwrap_or(""));
                eprintln!(
                    "This is the only time the key is shown. Store it in a secret manager now."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::List {
            keyspace,
            owner,
            status,
            label,
            q,
            limit,
            remote,
        } => {
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("keyspace_id", keyspace),
                ("owner", owner),
                ("status", status),
                ("label", label),
                ("q", q),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let v = client.get_query("/v1/keys", &query).await?;
            if remote.json {
                println!("{v}");
            } else {
                print_keys(v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]));
                if let Some(c) = v["next_cursor"].as_str() {
                    eprintln!("(more keys: the next page starts at cursor {c})");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Show { id, remote } => {
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let v = client
                .get(&format!("/v1/keys/{}", encode_segment(&id)))
                .await?;
            print_key(
                &v,
                if remote.json {
                    Format::Json
                } else {
                    Format::Table
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Rotate {
            id,
            grace,
            reason,
            format,
            env_name,
            remote,
        } => {
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            let mut body = json!({});
            if let Some(g) = grace {
                body["grace_secs"] = json!(g);
            }
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            let v = client
                .post(&format!("/v1/keys/{}/rotate", encode_segment(&id)), &body)
                .await?;
            let key = v["key"].as_str().unwrap_or("");
            match (format, remote.json) {
                (RotateFormat::Json, _) | (_, true) => println!(
                    "{}",
                    json!({"key": key, "id": v["id"], "rotated_from": v["rotated_from"], "expires_at": v["expires_at"]})
                ),
                (RotateFormat::Env, _) => println!("{env_name}={key}"),
                (RotateFormat::Plain, _) => println!("{key}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Revoke {
            id,
            owner,
            keyspace,
            reason,
            remote,
        } => {
            let client = Client::new(&remote.url, remote.token.as_deref())?;
            match (id, owner) {
                (Some(id), None) => {
                    let v = client
                        .post(
                            &format!("/v1/keys/{}/revoke", encode_segment(&id)),
                            &json!({"reason": reason}),
                        )
                        .await?;
                    if remote.json {
                        println!("{v}");
                    } else {
                        println!(
                            "revoked {} ({})",
                            v["id"].as_str().unwrap_or(""),
                            v["name"].as_str().unwrap_or("")
                        );
                    }
                }
                (None, Some(owner)) => {
                    let mut body = json!({"owner": owner, "reason": reason});
                    if let Some(ks) = keyspace {
                        body["keyspace_id"] = json!(ks);
                    }
                    let v: Value = client.post("/v1/keys/revoke", &body).await?;
                    if remote.json {
                        println!("{v}");
                    } else {
                        println!("revoked {} keys", v["revoked"]);
                        for id in v["key_ids"].as_array().into_iter().flatten() {
                            println!("  {}", id.as_str().unwrap_or(""));
                        }
                    }
                }
                _ => {
                    return Err(ClientError::Usage(
                        "give a key id, or --owner for every key of an owner (not both)".into(),
                    ))
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Percent-encodes a path segment (ids are plain, but a typo must not change the path).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
