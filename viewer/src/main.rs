//! `rekord-viewer`: see the crate docs and `rekord-viewer --help`.

use clap::Parser as _;
use rekord_viewer::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(&cli, &mut out) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekord-viewer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
