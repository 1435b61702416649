//! The `keyward` binary: `keyward serve` runs the server; the other commands are the command
//! line. `token create` works on the database directly (bootstrap); the commands of
//! [`remote`] (`keys`, `keyspaces`, `tokens`, `webhooks`, `usage`, `anomalies`, `reports`,
//! `audit verify`) talk to a server through `keyward-client` only; `backup` and `restore` work on the
//! SQLite file ([`backup`]).

mod backup;
mod cli;
mod exit;
mod import;
mod master_key;
mod offline;
mod output;
mod remote;
mod scan;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, KeysCmd, MasterKeyCmd, TokenCmd, UserCmd};

/// mimalloc instead of the system allocator: a verification allocates a few small buffers
/// (request, body, answer) and glibc's malloc spent about 14 % of the server's CPU on them
/// under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(args))
}

/// Runs one command.
async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            offline::serve(&args.listen, &args.db.database_url, &args.key, args.config).await
        }
        Command::Token(TokenCmd::Create {
            name,
            role,
            keyspaces,
            ttl,
            db,
        }) => offline::token_create(&db.database_url, name, &role, keyspaces, ttl).await,
        Command::User(UserCmd::Create {
            email,
            role,
            password_stdin,
            db,
        }) => offline::user_create(&db.database_url, &email, &role, password_stdin).await,
        Command::User(UserCmd::Disable { email, db }) => {
            offline::user_disable(&db.database_url, &email).await
        }
        Command::MasterKey(MasterKeyCmd::Rotate {
            new_key_file,
            db,
            key,
        }) => master_key::rotate(&db.database_url, &key, new_key_file.as_deref()).await,
        Command::Backup { to, db } => backup::backup(&db.database_url, &to).await,
        Command::Restore { from, db } => backup::restore(&db.database_url, &from).await,
        Command::Keys(KeysCmd::Import(args)) => import::run(*args).await,
        Command::Keys(cmd) => remote::keys(cmd).await,
        Command::Keyspaces(cmd) => remote::keyspaces(cmd).await,
        Command::Audit(cmd) => remote::audit(cmd).await,
        Command::Tokens(cmd) => remote::tokens(cmd).await,
        Command::Identities(cmd) => remote::identities(cmd).await,
        Command::Webhooks(cmd) => remote::webhooks(cmd).await,
        Command::Usage(cmd) => remote::usage(cmd).await,
        Command::Anomalies(cmd) => remote::anomalies(cmd).await,
        Command::Reports(cmd) => remote::reports(cmd).await,
        Command::Scan(args) => scan::run(*args).await,
    }
}
