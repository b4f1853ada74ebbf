//! `rekord-server`: runs the rekord sync server and manages its tokens, identity and backups.
//!
//! Token and backup commands open the data directory's database directly when no server
//! runs on it. While `rekord-server run` serves it (the database is locked then), they are
//! sent to the running server through its admin socket (`admin.sock` in the data
//! directory; Unix only, see `rekord_server::admin`) and executed there, with the same
//! output. On other platforms they need the server to be stopped. `identity` only reads
//! files and works either way.
//!
//! Back up while serving: `rekord-server --data DIR backup --out FILE` (a new file; the
//! running server writes it). Restore a backup: stop the server, replace `server.redb` in
//! the data directory by the backup file, start the server again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rekord::proto::handshake::Trees;
use rekord_server::{AdminReply, AdminRequest, Config, Identity, ServerError, Store};

/// The rekord sync server.
#[derive(Debug, Parser)]
#[command(name = "rekord-server", version, about)]
struct Cli {
    /// TOML configuration file (defaults apply to everything it does not set).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server until SIGINT or SIGTERM. Prints `listening on ADDR` once ready.
    #[command(after_help = limits_help())]
    Run {
        /// UDP address to listen on (overrides the configuration).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Application name clients must present (overrides the configuration).
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
        /// Sets one of the limits below (overrides the configuration's `[limits]`); may be
        /// given again for others, e.g. `--limit max_connections=4096`.
        #[arg(long, value_name = "NAME=VALUE")]
        limit: Vec<String>,
        /// Lets pages of this origin open WebTransport sessions (adds to the configuration's
        /// `web.origins`); may be given again, e.g. `--allow-origin https://app.example.com`.
        #[arg(long, value_name = "ORIGIN")]
        allow_origin: Vec<String>,
        /// A certificate chain from a public CA (PEM) to present to WebTransport connections
        /// instead of the rotating self-signed one (overrides `web.certificate`; needs
        /// `--web-key`): browsers then validate it by WebPKI, with no hashes.
        #[arg(long, value_name = "PEM", requires = "web_key")]
        web_certificate: Option<PathBuf>,
        /// The private key of `--web-certificate` (PEM; overrides `web.key`).
        #[arg(long, value_name = "PEM", requires = "web_certificate")]
        web_key: Option<PathBuf>,
    },
    /// Manages access tokens (through the running server if there is one).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manages borrows (through the running server if there is one).
    #[command(subcommand)]
    Borrow(BorrowCommand),
    /// Prints the server UUID, its certificate's SHA-256 fingerprint, and the SHA-256 of the
    /// WebTransport certificates browsers are presented (`web-hash` lines, current first;
    /// creating what does not exist yet).
    Identity,
    /// Presents a new WebTransport certificate now (a suspected key leak): the next one if
    /// there is one (replicas that connected in the last five days learned it), else a new
    /// one; through the running server if there is one. Prints the `web-hash` lines.
    RotateWebCertificate,
    /// Writes a consistent copy of server.redb to a new file, also while the server runs
    /// (it then writes the copy itself). Restore: stop the server, replace server.redb in
    /// the data directory by the copy, start the server.
    Backup {
        /// The backup file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BorrowCommand {
    /// Takes a record's borrow back from whoever holds it. The holder is told (a borrow
    /// change like any other); changes it made offline and pushes later are refused by the
    /// server and kept aside on that client (reported there, never dropped silently).
    ForceReturn {
        /// The record's tree.
        #[arg(long)]
        tree: String,
        /// The record's id.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issues a token and prints it (it is shown only once).
    Issue {
        /// A unique name for the token (who or what uses it).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        read: ReadTrees,
        #[command(flatten)]
        write: WriteTrees,
    },
    /// Revokes a token, given its name or the token itself.
    Revoke {
        /// The token's name, or the token.
        token_or_name: String,
    },
    /// Lists the tokens' names and permissions, and the holder numbers of the clients that
    /// connected with each.
    List,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
struct ReadTrees {
    /// Trees the token may read, comma-separated (none if neither option is given).
    #[arg(long, value_delimiter = ',', value_name = "TREES")]
    read: Vec<String>,
    /// The token may read every tree.
    #[arg(long)]
    read_all: bool,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
struct WriteTrees {
    /// Trees the token may write, comma-separated (none if neither option is given).
    #[arg(long, value_delimiter = ',', value_name = "TREES")]
    write: Vec<String>,
    /// The token may write every tree.
    #[arg(long)]
    write_all: bool,
}

fn trees(all: bool, names: Vec<String>) -> Trees {
    if all { Trees::All } else { Trees::Only(names) }
}

fn show(trees: &Trees) -> String {
    match trees {
        Trees::All => "all".into(),
        Trees::Only(names) if names.is_empty() => "none".into(),
        Trees::Only(names) => names.join(","),
    }
}

/// The limits and their defaults, for `run --help`.
fn limits_help() -> String {
    let mut out = String::from(
        "Limits (the `[limits]` table of the configuration, or --limit NAME=VALUE):\n",
    );
    let defaults = rekord_server::Limits::default();
    for (name, value, what) in defaults.describe() {
        out.push_str(&format!("  {name:<34} {value:>7}  {what}\n"));
    }
    let trusted: Vec<String> = defaults.trusted.iter().map(ToString::to_string).collect();
    out.push_str(&format!(
        "  {:<34} {:>7}  addresses the per-address limits skip (ADDR,ADDR; empty: none)\n",
        "trusted",
        trusted.join(",")
    ));
    out
}

/// Applies `--limit NAME=VALUE` to `limits`.
fn set_limit(limits: &mut rekord_server::Limits, setting: &str) -> Result<(), ServerError> {
    let bad = |why: String| ServerError::Config(format!("--limit {setting}: {why}"));
    let (name, value) = setting
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=VALUE".into()))?;
    if name.trim() == "trusted" {
        limits.trusted = value
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|e| bad(format!("`{a}` is not an IP address ({e})")))
            })
            .collect::<Result<_, _>>()?;
        return Ok(());
    }
    let value: u32 = value
        .trim()
        .parse()
        .map_err(|e| bad(format!("the value is not a whole number ({e})")))?;
    let mut table = toml::Table::try_from(&*limits).map_err(|e| bad(e.to_string()))?;
    if !table.contains_key(name.trim()) {
        let names: Vec<&str> = table.keys().map(String::as_str).collect();
        return Err(bad(format!(
            "no such limit; the limits are {}",
            names.join(", ")
        )));
    }
    table.insert(name.trim().to_owned(), toml::Value::Integer(value.into()));
    *limits = table.try_into().map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// The HTTP/3 library logs every malformed message of a WebTransport client at WARN (a
/// stranger could flood the log with them, before any token): only its errors are kept,
/// whatever `RUST_LOG` asks. The server logs what it refuses itself, throttled.
fn web_log_bound(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    match "web_transport_quinn=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

fn main() -> ExitCode {
    // Logs go to stderr; colour codes only when a terminal shows them (never in a file,
    // a pipe or a journal).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(web_log_bound(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match main_inner(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekord-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner(cli: Cli) -> Result<(), ServerError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(data) = cli.data {
        config.data = data;
    }
    match cli.command {
        Command::Run {
            listen,
            app,
            limit,
            allow_origin,
            web_certificate,
            web_key,
        } => {
            for setting in &limit {
                set_limit(&mut config.limits, setting)?;
            }
            config.web.origins.extend(allow_origin);
            if web_certificate.is_some() {
                config.web.certificate = web_certificate;
                config.web.key = web_key;
            }
            config.validate()?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(app) = app {
                config.app = app;
            }
            let runtime = tokio::runtime::Runtime::new().map_err(|e| ServerError::Io {
                path: PathBuf::from("<tokio runtime>"),
                source: e,
            })?;
            runtime.block_on(run(config))
        }
        Command::Token(TokenCommand::Issue { name, read, write }) => {
            let read = trees(read.read_all, read.read);
            let write = trees(write.write_all, write.write);
            let request = AdminRequest::Issue {
                name: name.clone(),
                read: read.clone(),
                write: write.clone(),
            };
            let AdminReply::Issued { token } = administer(&config.data, request)? else {
                return Err(unexpected());
            };
            eprintln!(
                "issued token `{name}` (read: {}, write: {}); it is shown only once:",
                show(&read),
                show(&write)
            );
            println!("{token}");
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { token_or_name }) => {
            let request = AdminRequest::Revoke { token_or_name };
            let AdminReply::Revoked { name } = administer(&config.data, request)? else {
                return Err(unexpected());
            };
            println!("revoked token `{name}`");
            Ok(())
        }
        Command::Token(TokenCommand::List) => {
            let AdminReply::Tokens(tokens) = administer(&config.data, AdminRequest::List)? else {
                return Err(unexpected());
            };
            for t in tokens {
                let holders = if t.holders.is_empty() {
                    "none".to_owned()
                } else {
                    let numbers: Vec<String> = t.holders.iter().map(u32::to_string).collect();
                    numbers.join(",")
                };
                println!(
                    "{}\tread: {}\twrite: {}\tholders: {holders}",
                    t.name,
                    show(&t.read),
                    show(&t.write)
                );
            }
            Ok(())
        }
        Command::Borrow(BorrowCommand::ForceReturn { tree, id }) => {
            let request = AdminRequest::ForceReturn {
                tree: tree.clone(),
                id,
            };
            let AdminReply::ForceReturned { holder } = administer(&config.data, request)? else {
                return Err(unexpected());
            };
            match holder {
                Some(h) => println!("returned record {id} of tree `{tree}` from holder {h}"),
                None => println!("nobody held record {id} of tree `{tree}`"),
            }
            Ok(())
        }
        Command::Identity => {
            let identity = Identity::load_or_create(&config.data)?;
            println!("uuid {}", identity.uuid);
            println!("fingerprint {}", identity.fingerprint());
            // What a browser page names in `serverCertificateHashes` (current, then next):
            // a running server says what it presents (it alone rotates them then); with
            // none running, this process holds the database (so none starts meanwhile) and
            // applies the rotation a starting server would.
            let hashes = match Store::open(&config.data) {
                Ok(store) => {
                    let web = rekord_server::WebCerts::load_or_create(
                        &config.data,
                        rekord_server::web::unix_now(),
                    )?;
                    drop(store);
                    web.hashes()
                }
                #[cfg(unix)]
                Err(ServerError::Busy(path)) => {
                    match rekord_server::admin::request(&config.data, &AdminRequest::WebHashes)? {
                        Some(AdminReply::WebHashes(hashes)) => hashes,
                        Some(AdminReply::WebCertificate(path)) => {
                            println!("web-certificate {}", path.display());
                            return Ok(());
                        }
                        Some(_) => return Err(unexpected()),
                        None => return Err(ServerError::Busy(path)),
                    }
                }
                Err(e) => return Err(e),
            };
            // A public certificate is validated by WebPKI: browsers are named no hash.
            match &config.web.certificate {
                Some(cert) => println!("web-certificate {}", cert.display()),
                None => {
                    for hash in hashes {
                        println!("web-hash {hash}");
                    }
                }
            }
            Ok(())
        }
        Command::RotateWebCertificate => {
            match administer(&config.data, AdminRequest::RotateWeb)? {
                // The rotating certificate is not what browsers are presented: not printed.
                AdminReply::WebCertificate(path) => {
                    println!("web-certificate {}", path.display());
                }
                AdminReply::WebHashes(hashes) => match &config.web.certificate {
                    Some(path) => println!("web-certificate {}", path.display()),
                    None => {
                        for hash in hashes {
                            println!("web-hash {hash}");
                        }
                    }
                },
                _ => return Err(unexpected()),
            }
            Ok(())
        }
        Command::Backup { out } => {
            let AdminReply::BackedUp { out } =
                administer(&config.data, AdminRequest::Backup { out })?
            else {
                return Err(unexpected());
            };
            println!("backed up to {}", out.display());
            Ok(())
        }
    }
}

/// Executes `request` on the database in `data`: directly if no process holds it, else
/// (on Unix) through the admin socket of the server running on it.
fn administer(data: &Path, request: AdminRequest) -> Result<AdminReply, ServerError> {
    match Store::open(data) {
        Ok(store) => request.execute(&store),
        #[cfg(unix)]
        Err(ServerError::Busy(path)) => {
            rekord_server::admin::request(data, &request)?.ok_or(ServerError::Busy(path))
        }
        Err(e) => Err(e),
    }
}

fn unexpected() -> ServerError {
    ServerError::Admin("the server answered with the wrong kind of reply".into())
}

async fn run(config: Config) -> Result<(), ServerError> {
    let shutdown = shutdown_signal()?;
    let server = rekord_server::Server::bind(config)?;
    println!("listening on {}", server.local_addr()?);
    server.serve(shutdown).await
}

/// Completes on SIGINT or (on Unix) SIGTERM. The handlers are installed before it returns,
/// so a signal arriving any time after is not lost.
fn shutdown_signal() -> Result<impl Future<Output = ()>, ServerError> {
    let io = |e| ServerError::Io {
        path: PathBuf::from("<signal handler>"),
        source: e,
    };
    #[cfg(unix)]
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io)?;
    #[cfg(unix)]
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(io)?;
    Ok(async move {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = io;
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
        }
    })
}
