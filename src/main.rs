//! The `strongbox` binary: parse the command line, set up logging, run, exit.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use strongbox::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli::load_config(&cli) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    cli::init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&cli::CliError(format!("cannot start the runtime: {e}"))),
    };
    match runtime.block_on(cli::run(cli, config)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &cli::CliError) -> ExitCode {
    eprintln!("strongbox: error: {}", e.0);
    ExitCode::FAILURE
}
