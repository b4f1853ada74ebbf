//! `rekord-viewer`: see the crate docs and `rekord-viewer --help`.

use std::io::Write as _;
use std::sync::Mutex;

use clap::Parser as _;
use rekord_viewer::cli::{Cli, run};

/// The message of a panic, kept by the hook for the error printed instead.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A damaged file can make the storage engine panic deep inside a read: the person at
    // the terminal gets a message, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let where_ = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        *PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what}{where_}"));
    }));
    let stdout = std::io::stdout();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut out = stdout.lock();
        run(&cli, &mut out)
    }));
    let message = match outcome {
        Ok(Ok(())) => return std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => match e.hint() {
            Some(hint) => format!("{e}\n({hint})"),
            None => e.to_string(),
        },
        Err(_) => {
            let what = PANIC
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_default();
            format!(
                "the database could not be read: it looks damaged (the storage engine stopped \
                 on: {what}). Keep a copy of the file; an export of what still reads \
                 (rekord-viewer export) may save the rest"
            )
        }
    };
    if cli.json {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", serde_json::json!({ "error": message }));
    }
    eprintln!("rekord-viewer: {message}");
    std::process::ExitCode::FAILURE
}
