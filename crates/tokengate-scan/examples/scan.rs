//! `tokengate scan` as a stand-alone binary, for trying the command before
//! it is wired into the `tokengate` CLI and for benchmarks:
//! `cargo run --release -p tokengate-scan --example scan -- PATH…`

use clap::Parser;
use tokengate_scan::{ScanArgs, run_cli};

#[derive(Parser, Debug)]
#[command(name = "tokengate-scan")]
struct Cli {
    #[command(flatten)]
    args: ScanArgs,
}

fn main() {
    let cli = Cli::parse();
    std::process::exit(run_cli(cli.args));
}
