//! `peerlm export`: a checkpoint's model as an inference file (no optimizer state), tables optionally bf16.

use std::error::Error;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use peerlm::checkpoint::Dtype;

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint written by `peerlm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// How to store the expert and value tables: bf16 halves them on disk (they are widened to f32 when
    /// opened, so memory is not saved; see README).
    #[arg(long, value_enum, default_value_t = Tables::F32)]
    tables: Tables,
}

#[derive(Clone, Copy, ValueEnum)]
enum Tables {
    F32,
    Bf16,
}

pub fn run(args: &ExportArgs) -> Result<(), Box<dyn Error>> {
    let dtype = match args.tables {
        Tables::F32 => Dtype::F32,
        Tables::Bf16 => Dtype::Bf16,
    };
    let bytes = peerlm::infer::export(&args.checkpoint, &args.out, dtype)?;
    println!("{}: {bytes} bytes", args.out.display());
    Ok(())
}
