//! The `keyward` binary: `keyward serve` runs the server; the other commands are the command
//! line. `token create` works on the database directly (bootstrap); `keys ...` and
//! `audit verify` talk to a server through [`client`] only.

mod cli;
mod client;
mod offline;
mod output;

use std::process::ExitCode;

use clap::Parser;

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
