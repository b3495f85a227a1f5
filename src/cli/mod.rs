//! The subcommands of `peerlm`, one file each; this file only parses and dispatches.

use std::error::Error;

use clap::{Parser, Subcommand};

mod prepare;

#[derive(Parser)]
#[command(name = "peerlm", version, about = "PEER (Mixture of A Million Experts) from scratch on a CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a BPE tokenizer on C4 text and write train/validation token shards.
    Prepare(prepare::PrepareArgs),
}

pub fn run() -> Result<(), Box<dyn Error>> {
    match Cli::parse().command {
        Command::Prepare(args) => prepare::run(&args)?,
    }
    Ok(())
}
