//! Command-line arguments and dispatch.

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Management tokens, through a running server (`token create` makes the first one on the
    /// database directly).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Identities (an owner's keys governed together), through a running server.
    #[command(subcommand)]
    Identities(IdentitiesCmd),
    /// Webhook subscriptions and their deliveries, through a running server.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// Usage of a key or a keyspace, through a running server.
    #[command(subcommand)]
    Usage(UsageCmd),
    /// Anomalies found in keys' usage, through a running server.
    #[command(subcommand)]
    Anomalies(AnomaliesCmd),
    /// Reports, through a running server.
    #[command(subcommand)]
    Reports(ReportsCmd),
    /// Find keyward keys in files, directories and git history (exit 0 none, 1 live keys,
    /// 5 only dead or unchecked keys).
    Scan(Box<ScanArgs>),
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
        /// The next page (the cursor the previous page printed).
        #[arg(long)]
        cursor: Option<String>,
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
    /// Import keys issued by another system from a JSON Lines or CSV file (any size, sent in
    /// batches; records with an external_id already imported are skipped, so a run can be
    /// repeated). docs/import.md describes the records.
    Import(Box<ImportArgs>),
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

#[derive(Args)]
pub struct ImportArgs {
    #[arg(long)]
    pub keyspace: String,
    /// The file (`-`: standard input).
    pub file: std::path::PathBuf,
    /// jsonl or csv (default: from the file name, else from its first character).
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Records per request (1..1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Import keys the keyspace policy would refuse (the inventory report flags them).
    #[arg(long)]
    pub allow_policy_violations: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    Jsonl,
    Csv,
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
        /// The next page (the cursor the previous page printed).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one keyspace with its policy and route rules.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the regular expression that finds this keyspace's keys (for GitHub secret scanning
    /// and other scanners).
    Pattern {
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

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    Manager,
    Viewer,
    Auditor,
    Verifier,
}

#[derive(Subcommand)]
pub enum IdentitiesCmd {
    /// Make an owner string an identity (its keys belong to it at once).
    Create {
        /// The owner string of its keys.
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// A rate limit shared by all its keys, `NAME=LIMIT/WINDOW_SECS` (repeatable), e.g.
        /// `per-minute=1000/60`.
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Vec<keyward_core::limits::NamedLimit>,
        #[command(flatten)]
        quota: QuotaArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set an identity's shared quota anew (none given: unlimited).
    Quota {
        id: String,
        #[command(flatten)]
        quota: QuotaArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set an identity's rate limits (the whole list; none given clears them).
    Limits {
        id: String,
        /// `NAME=LIMIT/WINDOW_SECS` (repeatable).
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Vec<keyward_core::limits::NamedLimit>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List identities, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one identity.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Disable an identity: every key of it verifies DISABLED (the keys are not changed).
    Disable {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Enable an identity again.
    Enable {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete an identity (its keys keep their owner and verify as their own state says).
    Delete {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// The summed usage of an identity's keys.
    Usage {
        id: String,
        #[command(flatten)]
        range: UsageRange,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create a management token; prints the token once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Limit the token to this keyspace (repeatable).
        #[arg(long = "keyspace")]
        keyspaces: Vec<String>,
        /// Lifetime, e.g. 90d, 12h, 3600.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List management tokens (never their plaintext).
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a management token.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum WebhooksCmd {
    /// Subscribe a URL to events; prints the signing secret once.
    Create {
        /// The receiver's URL (https://...).
        #[arg(value_name = "URL")]
        endpoint: String,
        /// An event type, e.g. key.revoked (repeatable).
        #[arg(long = "event", required = true)]
        events: Vec<String>,
        /// Only this keyspace's events.
        #[arg(long)]
        keyspace: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List webhooks.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a webhook.
    Delete {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// A webhook's delivery attempts, newest first.
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args)]
pub struct UsageRange {
    /// Start (RFC 3339; default: a day before --to).
    #[arg(long)]
    pub from: Option<String>,
    /// End (RFC 3339; default: now).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum)]
    pub granularity: Option<GranularityArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GranularityArg {
    Minute,
    Hour,
    Day,
}

#[derive(Subcommand)]
pub enum UsageCmd {
    /// One key's valid and denied calls per bucket.
    Key {
        id: String,
        #[command(flatten)]
        range: UsageRange,
        #[command(flatten)]
        remote: Remote,
    },
    /// A keyspace's calls per bucket.
    Keyspace {
        id: String,
        #[command(flatten)]
        range: UsageRange,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum AnomaliesCmd {
    /// List anomalies, newest first.
    List {
        #[arg(long)]
        keyspace: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// Only those detected since (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
pub enum ReportsCmd {
    /// Every key with its age, last use and findings (no_expiry, inactive, ...).
    Inventory {
        #[arg(long)]
        keyspace: Option<String>,
        /// `csv` streams the server's CSV unchanged.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        #[command(flatten)]
        remote: Remote,
    },
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

#[derive(Clone, Copy, ValueEnum)]
pub enum ScanFormat {
    Text,
    Json,
    Sarif,
}

#[derive(Args)]
pub struct ScanArgs {
    /// Files and directories to scan (default: the current directory). `.git` directories
    /// are skipped; use --git for the history.
    pub paths: Vec<std::path::PathBuf>,
    /// Also scan every commit of the history of the repository each path is in.
    #[arg(long)]
    pub git: bool,
    /// Also report words with this prefix (keys of an imported format; repeatable).
    #[arg(long = "prefix")]
    pub prefixes: Vec<String>,
    /// Ask the server which keys are live (sends SHA-256 hashes only; admin or auditor token).
    #[arg(long)]
    pub check: bool,
    /// Report every live key found as a leak (`POST /v1/leaks`; implies --check).
    #[arg(long)]
    pub revoke: bool,
    #[arg(long, value_enum, default_value_t = ScanFormat::Text)]
    pub format: ScanFormat,
    #[command(flatten)]
    pub remote: Remote,
}

/// A quota shared by all of an identity's keys.
#[derive(Args, Debug, Default)]
pub struct QuotaArgs {
    /// Verifications (of `cost` 1) all its keys may make together.
    #[arg(long)]
    pub quota: Option<i64>,
    /// Refill the quota to `--quota` each period: `daily`, `monthly` or a number of seconds.
    #[arg(long, requires = "quota", value_parser = parse_interval)]
    pub refill: Option<keyward_core::limits::Interval>,
}

impl QuotaArgs {
    /// `remaining` and `refill` as the API takes them.
    pub fn to_api(&self) -> (Option<i64>, Option<keyward_core::limits::Refill>) {
        let refill = self
            .refill
            .zip(self.quota)
            .map(|(interval, amount)| keyward_core::limits::Refill { amount, interval });
        (self.quota, refill)
    }
}

fn parse_interval(s: &str) -> Result<keyward_core::limits::Interval, String> {
    serde_json::from_value(match s.parse::<i64>() {
        Ok(n) => serde_json::json!(n),
        Err(_) => serde_json::json!(s),
    })
    .map_err(|e| e.to_string())
}

/// `NAME=LIMIT/WINDOW_SECS`, e.g. `burst=10/1` (the server checks the ranges).
fn parse_limit(s: &str) -> Result<keyward_core::limits::NamedLimit, String> {
    let bad = || format!("'{s}' is not NAME=LIMIT/WINDOW_SECS (e.g. burst=10/1)");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (limit, window) = rest.split_once('/').ok_or_else(bad)?;
    Ok(keyward_core::limits::NamedLimit {
        name: name.to_string(),
        limit: limit.parse().map_err(|_| bad())?,
        window_secs: window.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
