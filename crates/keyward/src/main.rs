//! The `keyward` binary: `keyward serve` runs the server; the other commands are the command
//! line. `token create` works on the database directly (bootstrap); `keys ...` and
//! `audit verify` talk to a server through [`client`] only; `backup` and `restore` work on the
//! SQLite file ([`backup`]).

mod backup;
mod cli;
mod client;
mod exit;
mod master_key;
mod offline;
mod output;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: a verification allocates a few small buffers
/// (request, body, answer) and glibc's malloc spent about 14 % of the server's CPU on them
/// under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
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
    runtime.block_on(cli::run(args))
}
