//! The rekord sync server, as a library; the `rekord-server` binary is a thin wrapper.
//!
//! What it does today: on first start it creates its identity (UUID, key pair,
//! self-signed certificate; see [`identity`]) and its database (`server.redb`: tokens and
//! client holder numbers; see [`store`]) in the data directory, reuses them afterwards,
//! and serves rekord's QUIC transport (contract in [`rekord::net`]): the authenticated,
//! pinned handshake, then these requests:
//!
//! - [`Request::Ping`]: answered with [`Response::Pong`].
//! - [`Request::Ranges`]: grants the client a new id range of `want` ids, clamped to
//!   `1..=`[`store::MAX_RANGE`], from one global allocator starting at [`store::FIRST_ID`]
//!   (see [`Store::grant_range`]); answered with [`Response::Ranges`] (one range).
//! - [`Request::Borrow`]: the tree must be writable by the client's token (else
//!   [`RemoteError::NotAllowed`]). If nobody holds the record, the client does now; if it
//!   held it already, nothing changes; both are answered with [`Response::Granted`] (with
//!   the grant's sequence number, 0 if it was held already). If
//!   another client holds it: [`RemoteError::AlreadyBorrowed`] with that client's holder
//!   number and the name of the token it connected with. Borrows are persisted ([`Store::borrow`]) and survive restarts.
//! - [`Request::Return`]: the tree must be writable; frees the record if this client holds
//!   it ([`Response::Returned`]), else [`RemoteError::NotBorrowed`]. Synced databases send
//!   returns as numbered outbox entries instead ([`Request::Entries`], a change of kind
//!   `Borrow { holder: 0 }`), so a resent return is answered with its first outcome and never
//!   frees a borrow granted after it.
//!
//! - [`Request::PutSchema`]: stores a record schema (RON of a [`rekord::Schema`], whose tree
//!   and version must match the request's; the tree must be writable); answered with
//!   [`Response::Accepted`] (`seq` 0). The same schema again is fine; a different one for
//!   an existing `(tree, version)` is refused with [`RemoteError::Invalid`].
//! - [`Request::Fetch`]: the current state of one record (revisions and borrow holder) of a
//!   tree the token may read ([`Response::Record`]); clients resynchronise a record with it
//!   after the server refused their changes to it.
//! - [`Request::Schema`]: the stored schema of a tree the token may read, at one version
//!   ([`Response::Schema`], or [`RemoteError::NotFound`]); clients fetch the schemas of
//!   versions other clients wrote.
//! - [`Request::Changes`]: applies a batch of changes (see "Changes" below).
//! - [`Request::Entries`]: consecutive numbered outbox entries of a synced database, each
//!   applied like a [`Request::Changes`] batch, with retries detected by entry number
//!   ([`Store::apply_entries`]); answered with one [`rekord::proto::EntryOutcome`] each. The
//!   server keeps each entry's answer until the client sends only later entries, so a
//!   retry after a lost answer hears the same answer (the sequence number, or the refusal).
//!
//! # Changes
//!
//! A batch is applied all or nothing, in one durable write transaction
//! ([`Store::apply_changes`]); each change gets the next gap-free sequence number (from 1)
//! and is logged. The answer is [`Response::Accepted`] with the last sequence number; the
//! same `op` of the same client again (a retry) gets the same answer and applies nothing.
//! The first refused change refuses the batch, with:
//!
//! - [`RemoteError::NotAllowed`]: the token may not write the tree;
//! - [`RemoteError::OutsideRange`]: a create (`Put` of revision 0 of an unknown id) with an
//!   id outside the client's granted ranges. A create makes the client the record's borrow
//!   holder (receivers learn it from the pushed change's `origin`; no separate borrow
//!   change is logged);
//! - [`RemoteError::NotBorrowed`]: any other change without holding the record's borrow;
//! - [`RemoteError::Released`]: `Put`, `Remove` or `Release` of a released revision
//!   (`SetState` needs a released revision, else [`RemoteError::Invalid`]);
//! - [`RemoteError::NotFound`]: a change of a removed revision, or a non-`Put` change of an
//!   unknown one;
//! - [`RemoteError::Invalid`]: `Put` data that does not decode with the stored schema of its
//!   version (or no such schema: "upload the schema first"), or a new revision whose
//!   previous revision does not exist.
//! - [`RemoteError::Conflict`]: an optimistic edit ([`ChangeKind::Edit`], trees a client
//!   made optimistic) of a revision that another client changed after the edit's `base`
//!   sequence number. The server tracks, per revision, the last data change (sequence
//!   number, client, hybrid logical clock) and the last one by a different client, so a
//!   client's chain of edits on its own version is accepted, and anything else is a
//!   conflict. The answer carries the current version and, from the log, the version at
//!   the edit's base; the client merges and sends the outcome based on the current one.
//!   An `Edit` needs no borrow, but a record another client borrowed refuses it
//!   ([`RemoteError::AlreadyBorrowed`]); an `Edit` of revision 0 of an unknown id in the
//!   client's ranges creates the record without giving anyone its borrow.
//!
//! After the commit, the accepted changes are pushed as [`Push::Changes`] (at most
//! [`PUSH_BATCH`] changes and about [`PUSH_BATCH_BYTES`] each) to every session whose
//! token may read the tree and that subscribed to it (`ClientHello::trees`, empty: all),
//! the origin included, in sequence order.
//!
//! # Catch-up
//!
//! After the [`ServerHello`] (whose `head` is the latest sequence number), a session gets
//! every logged change after its `ClientHello::cursor` that it may read, in order, in
//! [`Push::Changes`] batches, then [`Push::CaughtUp`], then live pushes. It subscribes to
//! the live pushes before reading the log and skips live changes the catch-up sent, so
//! there is no gap and no duplicate.
//!
//! # Borrow changes
//!
//! Every borrow that changes hands (granted to a client that did not hold it, or returned)
//! is logged like a data change, in the same transaction: a [`ChangeKind::Borrow`] change
//! (`holder` 0 for a return, `origin` the client that asked) under the next sequence
//! number. So it is pushed in order with the data to every session that may read and
//! subscribed to the tree (the requester included, after its response), and replayed in
//! catch-up to clients that were offline when it happened.
//!
//! # Push order and slow clients
//!
//! Pushes are sent in commit order, and every push committed before a request is handled
//! reaches the session before that request's response. Each session has a queue
//! of [`PUSH_QUEUE`] pushes; a client that does not read fast enough to keep up never loses
//! a push silently: when its queue overflows, its connection is closed with
//! [`CLOSE_LAGGED`], and the client resynchronises when it reconnects. A client that reads
//! nothing at all for [`PUSH_WRITE_TIMEOUT`] while a push waits is closed the same way.
//!
//! # Limits
//!
//! What a stranger, a token or an address can make the server spend is bounded by
//! [`Limits`] (the `[limits]` table of the configuration; the module [`limits`] lists each
//! attack and its answer): connections before any TLS work, handshake and hello time,
//! frame time and memory, answers a client does not read, requests per token, token
//! guesses per address, replicas per token and schemas. A refused connection fails at
//! once with QUIC's `CONNECTION_REFUSED`; one closed past a limit gets
//! `rekord::net::CLOSE_LIMITED` and the limit's name as reason.
//!
//! # Administration while serving
//!
//! `server.redb` is locked by the running server, so on Unix the server also listens on a
//! local admin socket, `admin.sock` in its data directory (only its user can connect;
//! see [`admin`]). The CLI's token and backup commands open the database directly when no
//! server runs, and otherwise send the command over that socket; the server executes it
//! through its open [`Store`] while it keeps serving clients. A token issued this way is
//! accepted by the very next connection, and a revoked one refused (existing sessions are
//! not cut off). On other platforms these commands need the server to be stopped.
//!
//! ```text
//! rekord-server --data DIR token issue --name alice --read-all --write parts
//! rekord-server --data DIR token list
//! rekord-server --data DIR token revoke alice
//! rekord-server --data DIR backup --out /var/backups/rekord/server-2024-05-01.redb
//! ```
//!
//! **Backup** ([`Store::backup`]) works the same with the server running or stopped: it
//! writes a consistent copy (the state of one instant) to a new file, never overwriting
//! one; while serving, the server process creates the file (a relative `--out` is resolved
//! against the CLI's working directory). The identity files (`server.uuid`, `cert.der`,
//! `key.der`) never change: copy them once, together with the first backup.
//!
//! **Restore** needs the server stopped: stop it (SIGTERM or SIGINT; it removes its admin
//! socket), replace `server.redb` in the data directory by the backup file, start it again.
//! (A server that was killed leaves `admin.sock` behind; the next start replaces it.)
//!
//! What a restore keeps and what it loses:
//!
//! - **The server loses** every change, token issue or revocation, id range and holder
//!   number made after the backup. Tokens are as they were at the backup.
//! - **Nothing is reused.** Each start of the server begins a new *history* (table
//!   `history`: the lineage of history ids, each with the sequence number up to which it
//!   shares its predecessor's changes), and moves the id allocator and the holder numbers
//!   past anything the previous run can have handed out (by 2^44 ids and 2^20 holder
//!   numbers on the first start of a file written by `backup`, by 2^40 and 2^10 on every
//!   other start), and past the data directory's high-water marks (the file `allocated`:
//!   the end of every id range and the holder number past every one this directory's
//!   server ever handed out, raised durably before each grant; a restore replaces
//!   `server.redb` only, so the marks remember what the lost history handed out, also
//!   over many starts or when one backup is restored twice). So sequence numbers of the
//!   lost history are never mistaken for the new history's, and no id range or holder
//!   number is granted twice. (Restored into another data directory, without the marks,
//!   the gaps alone keep this while fewer were handed out between backup and restore.)
//! - **Replicas reconcile.** Every hello carries the lineage; a replica that synced with a
//!   history the server no longer descends from ([`rekord::SyncEvent::Restored`]) sends
//!   again what it changed after the last shared change (its records as they are, with the
//!   borrows it held taken back and its id ranges registered again), makes the records
//!   other replicas changed what the server has (reported; their authors send them again
//!   when they reconnect), and receives the restored server's changes from the shared
//!   point on. Unacknowledged writes were in its outbox anyway. A replica that never
//!   reconnects takes its later changes with it; a replica's journal of changed records
//!   reaches back `SyncConfig::journal_retention` (30 days by default).
//! ```no_run
//! # async fn demo() -> Result<(), rekord_server::ServerError> {
//! let config = rekord_server::Config::default();
//! rekord_server::run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
#![warn(missing_docs)]

pub mod admin;
pub mod datadir;
pub mod identity;
pub mod limits;
pub mod store;
mod transport;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::rustls;
use rekord::net::{ALPN, CLOSE_LIMITED, CLOSE_PROTOCOL, CLOSE_REFUSED, CLOSE_SHUTDOWN};
use rekord::proto::handshake::check_client;
use rekord::proto::handshake::{Grant, Trees};
use rekord::proto::{
    self, ChangeKind, Frame, FrameReader, PROTOCOL_VERSION, Push, RemoteError, Request, Response,
    Sequenced, ServerHello,
};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use transport::{Peer, RecvHalf, SendHalf};

pub use admin::{AdminReply, AdminRequest};
pub use identity::Identity;
pub use limits::Limits;
pub use store::{Applied, BorrowOutcome, RecordState, Store, TokenInfo};
pub use web::{Web, WebCert, WebCerts};

/// Application close code: the server failed internally (database error) while serving the
/// connection; the client may retry later.
pub const CLOSE_INTERNAL: u32 = 4;

/// Application close code: the client did not read the server's pushes fast enough and its
/// queue of [`PUSH_QUEUE`] pushes overflowed; it missed pushes and must resynchronise
/// (reconnect).
pub const CLOSE_LAGGED: u32 = 5;

/// How many pushes may wait for one session before it is closed with [`CLOSE_LAGGED`].
pub const PUSH_QUEUE: usize = 4096;

/// Bound on writing one push to a session (QUIC flow control blocks the write while the
/// client reads nothing); a session that takes longer is closed with [`CLOSE_LAGGED`].
pub const PUSH_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's idle timeout of a session: the longest a client may go quiet before the
/// server forgets it (the client's own `idle_timeout`, 15 s by default, is what counts when
/// it is shorter).
pub const MAX_IDLE: Duration = Duration::from_secs(120);

/// Bound on sending a refused client its refusal before the connection is closed.
pub const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// Bound on waiting for connections to close at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most changes in one [`Push::Changes`] (catch-up and live).
pub const PUSH_BATCH: usize = 1000;

/// About the most record bytes in one [`Push::Changes`] (a single larger change, at most
/// [`proto::MAX_RECORD`] bytes, travels alone).
pub const PUSH_BATCH_BYTES: usize = 4 << 20;

const READ_CHUNK: usize = 64 * 1024;

/// The server's configuration; every field has a default, so an empty TOML file (or none)
/// is a valid configuration.
///
/// ```toml
/// listen = "127.0.0.1:7878"     # UDP address to serve QUIC on
/// data = "./rekord-server-data" # identity files, server.redb, admin.sock
/// app = "rekord"                # application name clients must present
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address to listen on (default `127.0.0.1:7878`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Data directory: identity files, `server.redb` and, while serving, `admin.sock`
    /// (default `./rekord-server-data`).
    pub data: PathBuf,
    /// The application name clients must present in their hello (default `rekord`).
    pub app: String,
    /// The bounds that keep the server serving under attack (the `[limits]` table; see
    /// [`Limits`]).
    pub limits: Limits,
    /// Who may open WebTransport sessions (the `[web]` table; see [`Web`]).
    pub web: Web,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data: PathBuf::from("./rekord-server-data"),
            app: "rekord".into(),
            limits: Limits::default(),
            web: Web::default(),
        }
    }
}

impl Config {
    /// Reads a configuration from a TOML file.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ServerError::Config(msg) => ServerError::Config(format!("{}: {msg}", path.display())),
            e => e,
        })
    }

    /// Parses a configuration from TOML text.
    pub fn parse(text: &str) -> Result<Self, ServerError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values (the application name's length, every limit at least 1).
    pub fn validate(&self) -> Result<(), ServerError> {
        self.limits.validate()?;
        self.web.validate()?;
        if self.app.is_empty() || self.app.len() > proto::MAX_NAME {
            return Err(ServerError::Config(format!(
                "the application name must be 1 to {} bytes",
                proto::MAX_NAME
            )));
        }
        Ok(())
    }
}

/// Why the server could not start or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The identity (UUID, key, certificate) could not be created or loaded.
    #[error("server identity: {0}")]
    Identity(String),
    /// The server database failed.
    #[error("server database: {0}")]
    Database(String),
    /// The data directory is not the server's alone (owned by another user, or writable by
    /// its group or others).
    #[error("unsafe data directory: {0}")]
    UnsafeDataDir(String),
    /// The server database is opened by another process.
    #[error(
        "{} is in use by another process (is the server running?); stop it first",
        .0.display()
    )]
    Busy(PathBuf),
    /// A token command failed.
    #[error("{0}")]
    Token(String),
    /// The admin socket could not be set up, or a reply on it broke the protocol.
    #[error("admin socket: {0}")]
    Admin(String),
    /// A command sent to the running server through its admin socket failed there (the
    /// server's message).
    #[error("the running server: {0}")]
    Remote(String),
    /// TLS could not be set up with the identity.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

struct Shared {
    app: String,
    server: [u8; 16],
    store: Arc<Store>,
    /// Pushes to every session. The lock is held across a logged change's transaction and
    /// its place in `pending`, so pushes go out in commit order.
    pushes: std::sync::Mutex<broadcast::Sender<Arc<Outgoing>>>,
    /// Group commit: changes committed (not yet durably) waiting for the next flush, in
    /// commit order; their pushes go out and their requests are answered after it.
    pending: std::sync::Mutex<Vec<Flush>>,
    /// Wakes the flusher.
    flush_wake: tokio::sync::Notify,
    /// The last sequence number known durable (what catch-up may send).
    durable: std::sync::atomic::AtomicU64,
    limits: Limits,
    /// Connections counted against the limits.
    gate: Arc<limits::Gate>,
    /// Requests per second per token.
    rates: limits::Rates,
    /// Memory for frames in transit beyond their first MiB, in MiB permits.
    frame_memory: Arc<tokio::sync::Semaphore>,
    /// Refusals logged at most once a second per kind.
    quiet: limits::Quiet,
    /// Each token's part of the frame memory ([`Shared::token_frame_memory`]).
    token_frames: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Who may open WebTransport sessions.
    web: Web,
    /// The long-term certificate (DER) and key, which sign WebTransport announcements.
    long_term: (Vec<u8>, rcgen::KeyPair),
    /// The WebTransport certificates announced now (the one presented first).
    announced: std::sync::RwLock<Vec<proto::WebCertificate>>,
    /// Asks the serving loop (which owns the certificates) to rotate now; it answers on
    /// the enclosed channel.
    rotate_web: tokio::sync::mpsc::UnboundedSender<RotateReply>,
}

/// Where the serving loop answers a forced rotation: the hashes after it, or why not.
type RotateReply = std::sync::mpsc::Sender<Result<Vec<String>, ServerError>>;

impl Shared {
    /// The signed announcement of the WebTransport certificates for `nonce`.
    fn web_certificates(&self, nonce: &[u8; 32]) -> Result<Response, End> {
        use rcgen::SigningKey as _;
        let certificates = match self.announced.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let signed = proto::WebCertificates::signed(&self.server, nonce, &certificates);
        let signature = self
            .long_term
            .1
            .sign(&signed)
            .map_err(|e| End::Internal(format!("cannot sign the announcement: {e}")))?;
        Ok(Response::WebCertificates(proto::WebCertificates {
            server: self.server,
            cert: self.long_term.0.clone(),
            certificates,
            signature,
        }))
    }

    /// Announces `web`'s certificates from now on.
    fn announce(&self, web: &WebCerts) {
        let list = announced(&self.web, web);
        match self.announced.write() {
            Ok(mut g) => *g = list,
            Err(poisoned) => *poisoned.into_inner() = list,
        }
    }

    /// The part of the frame memory the sessions of `token` share, and its size in MiB: a
    /// quarter of the whole (at least what one frame needs, 15 MiB, when the whole is that
    /// large), so one token cannot keep the rest waiting.
    fn token_frame_memory(&self, token: &str) -> (Arc<tokio::sync::Semaphore>, u32) {
        let whole = self.limits.frame_memory_mib;
        let size = (whole / 4).max(whole.min(limits::FRAME_SHARE_MAX));
        let mut parts = match self.token_frames.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let part = parts
            .entry(token.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(size as usize)))
            .clone();
        (part, size)
    }
}

/// A push as every session shares it: the frame, and its bytes encoded once (by the first
/// session that sends it whole). A session that reads nothing holds a reference, not a
/// copy, while its write waits.
struct Outgoing {
    frame: Frame,
    encoded: std::sync::OnceLock<Option<Vec<u8>>>,
}

impl Outgoing {
    fn new(push: Push) -> Self {
        Self {
            frame: Frame::Push(push),
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// The push.
    fn push(&self) -> Option<&Push> {
        match &self.frame {
            Frame::Push(push) => Some(push),
            _ => None,
        }
    }

    /// The frame's bytes.
    fn bytes(&self) -> Result<&[u8], End> {
        self.encoded
            .get_or_init(|| proto::encode(&self.frame).ok())
            .as_deref()
            .ok_or_else(|| End::Internal("a push could not be encoded".into()))
    }
}

/// One commit waiting for the group flush.
struct Flush {
    pushes: Vec<Push>,
    done: tokio::sync::oneshot::Sender<()>,
}

impl Shared {
    fn pushes(&self) -> std::sync::MutexGuard<'_, broadcast::Sender<Arc<Outgoing>>> {
        match self.pushes.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a commit's pushes for the next group flush (call while holding
    /// [`Shared::pushes`], right after the commit); the receiver completes once the commit
    /// is durable and its pushes are sent.
    fn enqueue(&self, pushes: Vec<Push>) -> tokio::sync::oneshot::Receiver<()> {
        let (done, durable) = tokio::sync::oneshot::channel();
        match self.pending.lock() {
            Ok(mut g) => g.push(Flush { pushes, done }),
            Err(poisoned) => poisoned.into_inner().push(Flush { pushes, done }),
        }
        self.flush_wake.notify_one();
        durable
    }

    fn take_pending(&self) -> Vec<Flush> {
        match self.pending.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// Group commit: makes queued commits durable with one disk sync per round, then sends
/// their pushes in commit order and releases their answers.
async fn flusher(shared: Arc<Shared>) {
    loop {
        shared.flush_wake.notified().await;
        loop {
            let batch = shared.take_pending();
            if batch.is_empty() {
                break;
            }
            let store = shared.store.clone();
            match run_blocking(move || store.flush()).await {
                Ok(Ok(())) => {
                    let sender = shared.pushes();
                    for flush in batch {
                        for push in flush.pushes {
                            if let Push::Changes(entries) = &push
                                && let Some(last) = entries.last()
                            {
                                shared
                                    .durable
                                    .fetch_max(last.seq, std::sync::atomic::Ordering::AcqRel);
                            }
                            // No receiver (no session) is fine.
                            let _ = sender.send(Arc::new(Outgoing::new(push)));
                        }
                        let _ = flush.done.send(());
                    }
                }
                // The requests waiting on `batch` fail (their senders are dropped here):
                // nothing is acknowledged that is not durable.
                Ok(Err(e)) => tracing::error!(error = %e, "group commit failed"),
                Err(e) => tracing::error!(error = %e, "group commit crashed"),
            }
        }
    }
}

/// Waits for a queued commit to be durable.
async fn durable(done: tokio::sync::oneshot::Receiver<()>) -> Result<(), End> {
    done.await
        .map_err(|_| End::Internal("a change could not be made durable".into()))
}

/// A bound server, ready to [`serve`](Server::serve).
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    local: (
        tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
        tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
    ),
    identity: Identity,
    web_certs: WebCerts,
    resolver: Arc<web::Resolver>,
    store: Arc<Store>,
    config: Config,
    admin: admin::Listener,
}

/// Binds a server with `config` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    Server::bind(config)?.serve(shutdown).await
}

/// The WebTransport certificates to announce: the rotating ones, or none when the server
/// presents a public certificate (`web.certificate`; browsers validate it by WebPKI, and a
/// hash named to them would make them refuse it).
fn announced(config: &web::Web, certs: &WebCerts) -> Vec<rekord::proto::WebCertificate> {
    if config.certificate.is_some() {
        Vec::new()
    } else {
        certs.announced()
    }
}

impl Server {
    /// Loads (or creates) the identity and the database in the data directory, binds the
    /// admin socket (Unix; see [`admin`]) and the QUIC endpoint. Must be called inside a
    /// tokio runtime.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let identity = Identity::load_or_create(&config.data)?;
        let store = Arc::new(Store::open(&config.data)?);
        // After the database: its lock proves no other server uses this data directory.
        let admin = admin::Listener::bind(&config.data)?;
        let web_certs = WebCerts::load_or_create(&config.data, web::unix_now())?;
        let resolver = Arc::new(web::Resolver::new(
            &identity,
            &web_certs,
            config.web.public_certificate()?,
        )?);
        let server_config = tls_config(resolver.clone())?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|e| {
            ServerError::Bind {
                addr: config.listen,
                source: e,
            }
        })?;
        Ok(Self {
            endpoint,
            local: tokio::sync::mpsc::unbounded_channel(),
            identity,
            web_certs,
            resolver,
            store,
            config,
            admin,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.endpoint.local_addr().map_err(|e| ServerError::Bind {
            addr: self.config.listen,
            source: e,
        })
    }

    /// The server's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A connector of in-process clients: each [`LocalConnector::connect`] is a session of
    /// this server over an in-memory byte stream, served like a network connection once
    /// [`serve`](Server::serve) runs (the same handshake, tokens and rules; no limits per
    /// address). For deterministic tests of whole replicas without sockets (see
    /// `rekord::net::Connect`), and for embedding a server and its clients in one process.
    pub fn local_connector(&self) -> LocalConnector {
        LocalConnector {
            queue: self.local.0.clone(),
        }
    }

    /// The WebTransport certificates (what a browser page names in
    /// `serverCertificateHashes`: [`WebCerts::hashes`]).
    pub fn web_certs(&self) -> &WebCerts {
        &self.web_certs
    }

    /// The server database, usable while serving (tokens, online [`Store::backup`]).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The admin socket ([`admin::SOCKET_FILE`] in the data directory) on Unix; `None`
    /// on platforms without an admin channel.
    pub fn admin_socket(&self) -> Option<&Path> {
        #[cfg(unix)]
        return Some(self.admin.path());
        #[cfg(not(unix))]
        return self.admin.path();
    }

    /// Accepts connections concurrently until `shutdown` completes, then closes every
    /// connection (code [`CLOSE_SHUTDOWN`]) and waits, bounded by [`SHUTDOWN_TIMEOUT`], for
    /// them to end. Admin commands ([`admin`]) are served meanwhile; at shutdown the admin
    /// socket is removed and commands under way are completed. The database is closed when
    /// this returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            endpoint,
            local: (_, mut local),
            identity,
            mut web_certs,
            resolver,
            store,
            config,
            admin,
        } = self;
        let head = store.head()?;
        store.set_group_commit(true);
        store.set_limits(config.limits.replicas_per_token, config.limits.max_schemas);
        let gate = limits::Gate::new(config.limits.clone());
        let (rotate_web, mut rotate_requests) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            app: config.app.clone(),
            server: *identity.uuid.as_bytes(),
            store,
            pushes: std::sync::Mutex::new(broadcast::channel(PUSH_QUEUE).0),
            pending: std::sync::Mutex::new(Vec::new()),
            flush_wake: tokio::sync::Notify::new(),
            durable: std::sync::atomic::AtomicU64::new(head),
            limits: config.limits.clone(),
            gate: gate.clone(),
            rates: limits::Rates::new(&config.limits),
            frame_memory: Arc::new(tokio::sync::Semaphore::new(
                config.limits.frame_memory_mib as usize,
            )),
            quiet: limits::Quiet::default(),
            token_frames: std::sync::Mutex::new(std::collections::HashMap::new()),
            web: config.web.clone(),
            long_term: (
                identity.cert_der.clone(),
                rcgen::KeyPair::try_from(identity.key_der.as_slice()).map_err(|e| {
                    ServerError::Identity(format!("the long-term key does not load: {e}"))
                })?,
            ),
            announced: std::sync::RwLock::new(announced(&config.web, &web_certs)),
            rotate_web,
        });
        let flush_task = tokio::spawn(flusher(shared.clone()));
        let mut rotation = tokio::time::interval(web::ROTATION_CHECK);
        rotation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            listen = ?endpoint.local_addr().ok(),
            uuid = %identity.uuid,
            fingerprint = %identity.fingerprint(),
            app = %config.app,
            web_hashes = ?announced(&config.web, &web_certs)
                .iter()
                .map(|c| rekord::net::hex(&c.hash))
                .collect::<Vec<_>>(),
            web_certificate = ?config.web.certificate,
            web_origins = ?config.web.origins,
            limits = ?config.limits,
            "rekord server serving"
        );
        let mut tasks = JoinSet::new();
        let mut admin_tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let remote = incoming.remote_address();
                    if gate.busy() && !incoming.remote_address_validated() {
                        // Many handshakes at once: a client must prove it receives at its
                        // address (a QUIC retry) before it counts against that address.
                        if incoming.retry().is_err() {
                            tracing::debug!(%remote, "retry impossible; connection ignored");
                        }
                        continue;
                    }
                    match gate.admit(remote.ip()) {
                        Ok(ticket) => {
                            tasks.spawn(handle(incoming, ticket, shared.clone()));
                        }
                        Err(full) => {
                            if let Some(count) = shared.quiet.note(full.what()) {
                                tracing::warn!(
                                    %remote,
                                    refused = count,
                                    "refusing connections: {}",
                                    full.what()
                                );
                            }
                            incoming.refuse();
                        }
                    }
                }
                Some(stream) = local.recv() => {
                    tasks.spawn(handle_local(stream, shared.clone()));
                }
                connection = admin.accept() => {
                    let hooks: Arc<dyn admin::Hooks> = shared.clone();
                    admin_tasks.spawn(connection.serve(shared.store.clone(), hooks));
                }
                Some(reply) = rotate_requests.recv() => {
                    let now = web::unix_now();
                    resolver.reload_public(&shared.web);
                    let rotated = web_certs
                        .force_rotate(now)
                        .and_then(|()| resolver.present(&web_certs));
                    shared.announce(&web_certs);
                    let answer = rotated.map(|()| {
                        tracing::warn!(
                            hashes = ?web_certs.hashes(),
                            "rotated the WebTransport certificate (admin command)"
                        );
                        web_certs.hashes()
                    });
                    let _ = reply.send(answer);
                }
                _ = rotation.tick() => {
                    resolver.reload_public(&shared.web);
                    let rotated = web_certs.rotate(web::unix_now());
                    // A next certificate made (or one switched to) is announced at once.
                    shared.announce(&web_certs);
                    match rotated {
                        Ok(false) => {}
                        Ok(true) => match resolver.present(&web_certs) {
                            Ok(()) => tracing::info!(
                                hashes = ?web_certs.hashes(),
                                "rotated the WebTransport certificate"
                            ),
                            Err(e) => tracing::error!(error = %e, "cannot present the new WebTransport certificate"),
                        },
                        Err(e) => tracing::error!(error = %e, "cannot rotate the WebTransport certificate"),
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                Some(_) = admin_tasks.join_next(), if !admin_tasks.is_empty() => {}
            }
        }
        // No new admin commands: the socket file goes away now.
        drop(admin);
        tracing::info!(connections = tasks.len(), "shutting down");
        endpoint.close(CLOSE_SHUTDOWN.into(), b"server shutting down");
        let drained = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
            endpoint.wait_idle().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections did not close in time; dropping them");
            tasks.shutdown().await;
        }
        // Admin commands are bounded (ADMIN_TIMEOUT for their I/O) apart from the command
        // itself, which must end before the database can close anyway.
        while admin_tasks.join_next().await.is_some() {}
        // Nothing waits for the flusher any more; whatever was committed since its last
        // round becomes durable here, before the database closes.
        flush_task.abort();
        let _ = flush_task.await;
        shared.store.flush()?;
        shared.store.set_group_commit(false);
        drop(shared);
        tracing::info!("server stopped");
        Ok(())
    }
}

fn tls_config(resolver: Arc<web::Resolver>) -> Result<quinn::ServerConfig, ServerError> {
    let tls_error = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&e))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Native clients and WebTransport (browsers) on one port; the certificate follows the
    // ALPN (`web::Resolver`).
    tls.alpn_protocols = vec![ALPN.to_vec(), web_transport_quinn::ALPN.as_bytes().to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_error(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // The server never drops a session for quiet before the client would (each side's
    // limit is the smaller of the two): a client starved of CPU for a while stays
    // connected for as long as its own idle timeout allows, and its bounded push queue.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(MAX_IDLE).ok());
    // Few streams per connection: the protocol's one bidirectional stream, and what HTTP/3
    // needs for WebTransport (the CONNECT stream beside the session's, three unidirectional
    // streams: control and QPACK; Chromium refuses a server that announces fewer). Streams
    // a native client opens beyond its one are never read: what they carry stays within the
    // connection's receive window, like everything the client sends.
    transport.max_concurrent_bidi_streams(2u32.into());
    transport.max_concurrent_uni_streams(3u32.into());
    // The protocol uses no datagrams: none are buffered.
    transport.datagram_receive_buffer_size(None);
    transport.receive_window(limits::RECEIVE_WINDOW.into());
    transport.stream_receive_window(limits::RECEIVE_WINDOW.into());
    transport.send_window(limits::SEND_WINDOW);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Why a connection ended early.
enum End {
    /// The peer closed or the connection was lost: nothing to send.
    Gone(String),
    /// The peer broke the protocol.
    Protocol(String),
    /// The server failed.
    Internal(String),
    /// The session's push queue overflowed (this many pushes were missed).
    Lagged(u64),
    /// The connection went past one of the server's [`Limits`].
    Limited(String),
}

/// Frame memory held for one frame in transit: its share of the token's part and of the
/// whole (freed when dropped).
struct FrameMemory {
    _token: Option<tokio::sync::OwnedSemaphorePermit>,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl FrameMemory {
    /// Waits for `need` MiB of the token's part (if any), then of the whole; `None` if a
    /// semaphore was closed.
    async fn take(
        all: Arc<tokio::sync::Semaphore>,
        token: Option<(Arc<tokio::sync::Semaphore>, u32)>,
        need: u32,
    ) -> Option<FrameMemory> {
        let token = match token {
            Some((part, size)) => Some(part.acquire_many_owned(need.min(size)).await.ok()?),
            None => None,
        };
        let all = all.acquire_many_owned(need).await.ok()?;
        Some(FrameMemory {
            _token: token,
            _all: all,
        })
    }
}

/// The receiving side of a session: frames reassembled from the stream, each bounded in
/// size (a hello: [`limits::MAX_HELLO`]), in time ([`Limits::frame_timeout_secs`]) and,
/// beyond its first MiB, in memory shared by all sessions ([`Limits::frame_memory_mib`]).
struct Inbound {
    reader: FrameReader,
    /// When the frame in transit began (its first byte arrived).
    started: Option<tokio::time::Instant>,
    /// The shared frame memory this session holds for the frame in transit: its whole
    /// share, taken at once when its length is known, so two frames never each hold part
    /// of what both need.
    held: Option<FrameMemory>,
    /// The wait for `held`, kept across cancellations (a push to write interrupts
    /// `read_frame`): the session keeps its place in line.
    waiting: Option<std::pin::Pin<Box<dyn Future<Output = Option<FrameMemory>> + Send>>>,
    timeout: Duration,
    memory: Arc<tokio::sync::Semaphore>,
    /// The part of the frame memory this session's token may hold at once (set when the
    /// hello is accepted; frames before that take none).
    token_memory: Option<(Arc<tokio::sync::Semaphore>, u32)>,
    /// MiB in the shared frame memory (a frame's share is capped at it).
    budget: u32,
    /// The largest frame accepted now.
    max_frame: u32,
}

impl Inbound {
    /// A reader of the hello: frames up to [`limits::MAX_HELLO`].
    fn new(shared: &Shared) -> Self {
        Self {
            reader: FrameReader::new(),
            started: None,
            held: None,
            waiting: None,
            timeout: shared.limits.frame_timeout(),
            memory: shared.frame_memory.clone(),
            token_memory: None,
            budget: shared.limits.frame_memory_mib,
            max_frame: limits::MAX_HELLO,
        }
    }

    /// After an accepted hello with token `token`: frames up to [`proto::MAX_FRAME`], in
    /// the token's part of the frame memory.
    fn accepted(&mut self, shared: &Shared, token: &str) {
        self.max_frame = proto::MAX_FRAME;
        self.token_memory = Some(shared.token_frame_memory(token));
    }

    /// The next frame; `None` once the client ended the stream. Cancel-safe: what was read
    /// stays buffered, and the frame's start time and memory stay noted.
    async fn read_frame(&mut self, recv: &mut RecvHalf) -> Result<Option<Frame>, End> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => {
                    self.started = None;
                    self.held = None;
                    self.waiting = None;
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(End::Protocol(e.to_string())),
            }
            let deadline = if self.reader.pending() == 0 {
                None
            } else {
                Some(*self.started.get_or_insert_with(tokio::time::Instant::now) + self.timeout)
            };
            if let (Some(len), Some(deadline)) = (self.reader.announced(), deadline) {
                if len > self.max_frame {
                    return Err(End::Protocol(format!(
                        "a frame of {len} bytes where at most {} are accepted{}",
                        self.max_frame,
                        if self.max_frame < proto::MAX_FRAME {
                            " before the hello is accepted"
                        } else {
                            ""
                        }
                    )));
                }
                // Beyond its free first MiB, a frame takes its share of the shared memory
                // before more of it is read (meanwhile QUIC flow control holds the sender
                // back); a share is at most the whole memory, so every frame can arrive, and
                // one token's frames hold at most its part. `len <= MAX_FRAME` fits in usize.
                let need = (len as usize)
                    .saturating_sub(limits::FREE_FRAME_BYTES)
                    .div_ceil(1 << 20);
                let need = u32::try_from(need).unwrap_or(u32::MAX).min(self.budget);
                if need > 0 && self.held.is_none() {
                    let wait = match &mut self.waiting {
                        Some(wait) => wait,
                        None => self.waiting.insert(Box::pin(FrameMemory::take(
                            self.memory.clone(),
                            self.token_memory.clone(),
                            need,
                        ))),
                    };
                    let held = tokio::time::timeout_at(deadline, wait).await.map_err(|_| {
                        End::Limited(
                            "the server's memory for frames in transit stayed taken \
                             (limits.frame_memory_mib); retry later"
                                .into(),
                        )
                    })?;
                    self.waiting = None;
                    let held =
                        held.ok_or_else(|| End::Internal("the frame memory was closed".into()))?;
                    self.held = Some(held);
                    // The frame's time to arrive starts once it has its memory.
                    self.started = Some(tokio::time::Instant::now());
                    continue;
                }
            }
            let chunk = recv.read_chunk(READ_CHUNK);
            let chunk = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, chunk)
                    .await
                    .map_err(|_| {
                        End::Limited(format!(
                            "a frame took more than {} s to arrive (limits.frame_timeout_secs)",
                            self.timeout.as_secs()
                        ))
                    })?,
                None => chunk.await,
            };
            match chunk {
                Ok(Some(bytes)) => self.reader.push(&bytes),
                Ok(None) if self.reader.pending() == 0 => return Ok(None),
                Ok(None) => return Err(End::Protocol("the stream ended inside a frame".into())),
                Err(e) => return Err(End::Gone(e)),
            }
        }
    }
}

async fn write_frame(send: &mut SendHalf, frame: &Frame) -> Result<(), End> {
    let bytes = proto::encode(frame).map_err(|e| End::Internal(e.to_string()))?;
    send.write_all(&bytes).await.map_err(End::Gone)
}

async fn handle(incoming: quinn::Incoming, mut ticket: limits::Ticket, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    // The QUIC handshake and the hello share one bound.
    let hello_by = tokio::time::Instant::now() + shared.limits.hello_timeout();
    let (raw, conn) = match tokio::time::timeout_at(hello_by, incoming).await {
        Ok(Ok(conn)) if web::is_web(&conn) => {
            // A browser: the HTTP/3 handshake and the CONNECT request within the same bound.
            match tokio::time::timeout_at(hello_by, web::accept(conn.clone(), &shared.web)).await {
                Ok(Ok(session)) => (conn, Peer::Web(Box::new(session))),
                Ok(Err(web::Refused::Origin(origin))) => {
                    if let Some(count) = shared.quiet.note("origin refused") {
                        tracing::warn!(
                            %remote,
                            %origin,
                            count,
                            "refused a WebTransport session from a page whose origin is not in \
                             web.origins (add it to the server's configuration to allow it)"
                        );
                    }
                    // The 403 arrives before the close (bounded: the client closes on it).
                    let _ = tokio::time::timeout(REFUSAL_TIME, conn.closed()).await;
                    conn.close(CLOSE_REFUSED.into(), b"origin not allowed");
                    return;
                }
                Ok(Err(web::Refused::Failed(reason))) => {
                    tracing::debug!(%remote, %reason, "WebTransport handshake failed");
                    conn.close(CLOSE_PROTOCOL.into(), b"webtransport handshake failed");
                    return;
                }
                Err(_) => {
                    if let Some(count) = shared.quiet.note("webtransport timeout") {
                        tracing::info!(
                            %remote,
                            count,
                            "WebTransport handshakes timed out (limits.hello_timeout_secs)"
                        );
                    }
                    conn.close(CLOSE_LIMITED.into(), b"no webtransport session in time");
                    return;
                }
            }
        }
        Ok(Ok(conn)) => (conn.clone(), Peer::Quic(conn)),
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection failed");
            return;
        }
        Err(_) => {
            if let Some(count) = shared.quiet.note("handshake timeout") {
                tracing::info!(%remote, count, "QUIC handshakes timed out (limits.hello_timeout_secs)");
            }
            return;
        }
    };
    let ended = session(&conn, Some(&mut ticket), hello_by, shared.clone()).await;
    // The connection closes with the session, whatever ended it: a WebTransport library
    // task would otherwise keep it open after the session (outside the limits, whose
    // ticket goes with this function).
    let close = CloseOnDrop(raw);
    let closed_with_reason = matches!(ended, Err(ref e) if !matches!(e, End::Gone(_)));
    match ended {
        Ok(()) => tracing::debug!(%remote, "connection ended"),
        Err(End::Gone(reason)) => tracing::debug!(%remote, %reason, "connection lost"),
        Err(End::Protocol(reason)) => {
            tracing::warn!(%remote, %reason, "closing a connection that broke the protocol");
            conn.close(CLOSE_PROTOCOL, reason.as_bytes());
        }
        Err(End::Internal(reason)) => {
            tracing::error!(%remote, %reason, "internal error; closing the connection");
            conn.close(CLOSE_INTERNAL, b"internal server error");
        }
        Err(End::Limited(reason)) => {
            if let Some(count) = shared.quiet.note("session limit") {
                tracing::warn!(%remote, %reason, count, "closing a connection past a limit");
            }
            conn.close(CLOSE_LIMITED, reason.as_bytes());
        }
        Err(End::Lagged(missed)) => {
            tracing::warn!(%remote, missed, "client too slow for its pushes; closing it");
            conn.close(
                CLOSE_LAGGED,
                b"too many pushes queued for this client; reconnect to resynchronise",
            );
        }
    }
    // A WebTransport session's close (code and reason) goes out as a message on its
    // request stream, written by a library task: the QUIC connection stays up until the
    // client, having read it, closes, or for `WEB_CLOSE_GRACE` at most. Else the client
    // would learn only that the connection closed, not why.
    if closed_with_reason && matches!(conn, Peer::Web(_)) {
        let _ = tokio::time::timeout(WEB_CLOSE_GRACE, close.0.closed()).await;
    }
}

/// How long a WebTransport session's close message may take to reach the client before the
/// connection closes under it.
const WEB_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Closes a connection when dropped (a close after an earlier one changes nothing).
struct CloseOnDrop(quinn::Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0
            .close(rekord::net::CLOSE_NORMAL.into(), b"session ended");
    }
}

/// Serves an in-process client ([`LocalConnector`]).
async fn handle_local(stream: tokio::io::DuplexStream, shared: Arc<Shared>) {
    let hello_by = tokio::time::Instant::now() + shared.limits.hello_timeout();
    let peer = Peer::Local(std::sync::Mutex::new(Some(stream)));
    match session(&peer, None, hello_by, shared).await {
        Ok(()) => tracing::debug!("local connection ended"),
        Err(End::Gone(reason)) => tracing::debug!(%reason, "local connection lost"),
        Err(End::Protocol(reason) | End::Internal(reason) | End::Limited(reason)) => {
            tracing::warn!(%reason, "local connection closed")
        }
        Err(End::Lagged(missed)) => tracing::warn!(missed, "local client too slow; closed"),
    }
}

/// Connects in-process clients to a [`Server`] ([`Server::local_connector`]).
#[derive(Debug, Clone)]
pub struct LocalConnector {
    queue: tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
}

impl LocalConnector {
    /// A new session's client end: a byte stream to speak the protocol on (the server's
    /// end is served as a connection). [`ServerError::Remote`] once the server stopped.
    pub fn connect(&self) -> Result<tokio::io::DuplexStream, ServerError> {
        let (client, server) = tokio::io::duplex(1 << 20);
        self.queue
            .send(server)
            .map_err(|_| ServerError::Remote("the server is not serving".into()))?;
        Ok(client)
    }
}

async fn session(
    conn: &Peer,
    ticket: Option<&mut limits::Ticket>,
    hello_by: tokio::time::Instant,
    shared: Arc<Shared>,
) -> Result<(), End> {
    let remote = conn.remote_address();
    let (mut send, mut recv, hello) = tokio::time::timeout_at(hello_by, async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(End::Gone)?;
        let mut reader = Inbound::new(&shared);
        let mut asked = false;
        loop {
            match reader.read_frame(&mut recv).await? {
                Some(Frame::ClientHello(hello)) => return Ok((send, (recv, reader), hello)),
                // Before its hello (which carries the token), a client may ask once for the
                // signed certificate announcement: over WebTransport it proves the server's
                // long-term identity before the token is sent.
                Some(Frame::Request {
                    id,
                    body: Request::WebCertificates { nonce },
                }) if !asked => {
                    asked = true;
                    let body = shared.web_certificates(&nonce)?;
                    write_frame(&mut send, &Frame::Response { id, body }).await?;
                }
                Some(_) => {
                    return Err(End::Protocol(
                        "the first frame must be a client hello (or one certificate request)"
                            .into(),
                    ));
                }
                None => {
                    return Err(End::Gone(
                        "the client ended the stream before its hello".into(),
                    ));
                }
            }
        }
    })
    .await
    .map_err(|_| {
        End::Limited(format!(
            "no hello within {} s (limits.hello_timeout_secs)",
            shared.limits.hello_timeout().as_secs()
        ))
    })??;
    let (recv_stream, mut reader) = (&mut recv.0, recv.1);

    let guessed_too_much = || {
        End::Limited(
            "too many refused tokens from this address (limits.auth_failures_per_minute); \
             check the token, and retry in a minute"
                .into(),
        )
    };
    if shared.gate.guessing(remote.ip()) {
        return Err(guessed_too_much());
    }
    let gate = shared.gate.clone();
    let ip = remote.ip();
    let store = shared.store.clone();
    let app = shared.app.clone();
    let client = hello.client;
    let subscribed = hello.trees.clone();
    let cursor = hello.cursor;
    let claimed = hello.replica;
    let lineage = hello.history.clone();
    let last_entry = hello.last_entry;
    let checked = tokio::task::spawn_blocking(move || {
        // One token check at a time per address (on this blocking thread, briefly).
        let turn = gate.token_turn(ip);
        let _turn = turn.as_deref().map(limits::lock);
        if gate.guessing(ip) {
            return Ok(None);
        }
        let mut db_error = None;
        let mut name = String::new();
        let verdict = check_client(&hello, &app, |token| match store.token(token) {
            Ok(info) => info.map(|info| {
                name = info.name;
                Grant {
                    read: info.read,
                    write: info.write,
                }
            }),
            Err(e) => {
                db_error = Some(e);
                None
            }
        });
        if let Some(e) = db_error {
            return Err(e);
        }
        if verdict == Err(rekord::proto::Refusal::BadToken) {
            gate.refused_token(ip);
        }
        drop(_turn);
        let outcome = match verdict {
            Ok(grant) => match store.connect_claiming(client, &name, claimed)? {
                // A client sends only entries its file made: a higher number processed
                // came from another copy of its file, and this one is older.
                Ok(holder) if store.last_entry(holder)? > last_entry => {
                    Ok(Err(rekord::proto::Refusal::OlderCopy {
                        server: store.last_entry(holder)?,
                        client: last_entry,
                    }))
                }
                Ok(holder) => {
                    let history = store.history()?;
                    let common = store.common_with(&lineage)?;
                    Ok(Ok((grant, holder, name, (history, common))))
                }
                Err(refusal) => Ok(Err(refusal)),
            },
            Err(refusal) => Ok(Err(refusal)),
        };
        outcome.map(Some)
    })
    .await
    .map_err(|e| End::Internal(e.to_string()))?
    .map_err(|e| End::Internal(e.to_string()))?;

    let client_text = uuid::Uuid::from_bytes(client);
    let checked = checked.ok_or_else(guessed_too_much)?;
    let (grant, holder, token, (history, common)) = match checked {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::info!(%remote, client = %client_text, %refusal, "refused a client");
            // Bounded: a client that reads nothing must not keep its place.
            let _ = tokio::time::timeout(REFUSAL_TIME, async {
                write_frame(&mut send, &Frame::Refused(refusal.clone())).await?;
                send.finish();
                // Let the refusal arrive before the close discards unsent stream data.
                send.stopped().await;
                Ok::<(), End>(())
            })
            .await;
            conn.close(CLOSE_REFUSED, refusal.to_string().as_bytes());
            return Ok(());
        }
    };
    if let Some(ticket) = ticket {
        ticket.established();
    }
    reader.accepted(&shared, &token);
    // Subscribed before the hello and before the log is read: every change committed
    // after this point reaches this session live, every one before it is in the log.
    let mut pushes = shared.pushes().subscribe();
    // Only what is durable is sent: a change the server could still lose never reaches a
    // client.
    let head = shared.durable.load(std::sync::atomic::Ordering::Acquire);
    let server_hello = Frame::ServerHello(ServerHello {
        protocol: PROTOCOL_VERSION,
        app: shared.app.clone(),
        server: shared.server,
        replica: holder,
        head,
        history,
        read: match &grant.read {
            rekord::proto::handshake::Trees::All => None,
            rekord::proto::handshake::Trees::Only(trees) => Some(trees.clone()),
        },
        common,
    });
    let hello = write_frame(&mut send, &server_hello);
    tokio::time::timeout(shared.limits.frame_timeout(), hello)
        .await
        .map_err(|_| {
            End::Limited(
                "the client read no answer to its hello (limits.frame_timeout_secs)".into(),
            )
        })??;
    tracing::info!(
        %remote,
        transport = conn.kind(),
        client = %client_text,
        holder,
        token = %token,
        cursor,
        head,
        "client connected as holder {holder} with token `{token}`"
    );
    let reads = |tree: &str| {
        grant.read.allows(tree) && (subscribed.is_empty() || subscribed.iter().any(|t| t == tree))
    };

    // Catch-up: every logged change after the cursor, then `CaughtUp`.
    // A cursor beyond the head (a client of a server since restored from an older backup)
    // must not hide the changes that now get those numbers.
    let mut scanned = cursor.min(head);
    loop {
        let store = shared.store.clone();
        let after = scanned;
        let mut batch =
            blocking(move || store.log_after(after, PUSH_BATCH, PUSH_BATCH_BYTES)).await?;
        batch.retain(|e| e.seq <= head);
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        scanned = last;
        let visible: Vec<Sequenced> = batch
            .into_iter()
            .filter(|e| reads(&e.change.tree))
            .collect();
        if !visible.is_empty() {
            send_push(&mut send, Push::Changes(visible), &pushes).await?;
        }
    }
    let head = scanned.max(head);
    send_push(&mut send, Push::CaughtUp { head }, &pushes).await?;

    // What of a live push this session gets.
    let filter = |push: Arc<Outgoing>| match push.push() {
        Some(Push::Changes(entries)) => {
            // Entries up to `head` were sent by the catch-up already.
            let shown = |e: &Sequenced| e.seq > head && reads(&e.change.tree);
            if entries.iter().all(shown) {
                // The common case: the shared push as it is.
                return Some(push);
            }
            let visible: Vec<Sequenced> = entries.iter().filter(|e| shown(e)).cloned().collect();
            (!visible.is_empty()).then(|| Arc::new(Outgoing::new(Push::Changes(visible))))
        }
        _ => Some(push),
    };
    loop {
        // Both branches are cancel-safe: a frame is read from chunks already received, and
        // a push stays queued until `recv` returns it.
        tokio::select! {
            frame = reader.read_frame(recv_stream) => {
                let Some(frame) = frame? else { break };
                let Frame::Request { id, body } = frame else {
                    return Err(End::Protocol(
                        "only requests are accepted after the hello".into(),
                    ));
                };
                // Pushes committed before this request go out before its answer (a client
                // granted a borrow never sees an older borrow push after the grant).
                drain(&mut send, &mut pushes, &filter).await?;
                let wait = shared.rates.delay(&token);
                if !wait.is_zero() {
                    if let Some(count) = shared.quiet.note("requests throttled") {
                        tracing::warn!(
                            %remote,
                            token = %token,
                            throttled = count,
                            "requests beyond limits.requests_per_second wait"
                        );
                    }
                    tokio::time::sleep(wait).await;
                }
                let answer = answer(&shared, &grant, holder, body).await?;
                // A client that reads nothing blocks this write (QUIC flow control); it gets
                // as long as a frame may take to arrive.
                let timeout = shared.limits.frame_timeout();
                tokio::time::timeout(
                    timeout,
                    write_frame(&mut send, &Frame::Response { id, body: answer }),
                )
                .await
                .map_err(|_| {
                    End::Limited(format!(
                        "the client read no answer for {} s (limits.frame_timeout_secs)",
                        timeout.as_secs()
                    ))
                })??;
            }
            push = pushes.recv() => match push {
                Ok(push) => {
                    if let Some(push) = filter(push) {
                        send_shared(&mut send, &push, &pushes).await?;
                    }
                    // Forward what else is queued right away: a session busy with its own
                    // requests must not fall behind the pushes they cause.
                    drain(&mut send, &mut pushes, &filter).await?;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(End::Lagged(missed));
                }
                // The sender lives as long as the server: shutting down.
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    send.finish();
    Ok(())
}

/// The refusal of ids to a token that may write no tree (it could create nothing with them).
fn writes_nothing() -> RemoteError {
    RemoteError::Invalid("this client's token may write no tree, so it gets no record ids".into())
}

/// Forwards every push queued for this session now (through `filter`).
async fn drain(
    send: &mut SendHalf,
    pushes: &mut broadcast::Receiver<Arc<Outgoing>>,
    filter: &impl Fn(Arc<Outgoing>) -> Option<Arc<Outgoing>>,
) -> Result<(), End> {
    loop {
        let push = match pushes.try_recv() {
            Ok(push) => push,
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                return Err(End::Lagged(missed));
            }
            Err(_) => return Ok(()),
        };
        if let Some(push) = filter(push) {
            send_shared(send, &push, pushes).await?;
        }
    }
}

/// Writes one push of this session alone, bounded by [`PUSH_WRITE_TIMEOUT`].
async fn send_push(
    send: &mut SendHalf,
    push: Push,
    queue: &broadcast::Receiver<Arc<Outgoing>>,
) -> Result<(), End> {
    send_shared(send, &Outgoing::new(push), queue).await
}

/// Writes one push, bounded by [`PUSH_WRITE_TIMEOUT`].
async fn send_shared(
    send: &mut SendHalf,
    push: &Outgoing,
    queue: &broadcast::Receiver<Arc<Outgoing>>,
) -> Result<(), End> {
    let bytes = push.bytes()?;
    let write = async { send.write_all(bytes).await.map_err(End::Gone) };
    tokio::time::timeout(PUSH_WRITE_TIMEOUT, write)
        .await
        .map_err(|_| End::Lagged(queue.len() as u64))?
}

impl admin::Hooks for Shared {
    fn rotate_web(&self) -> Result<Vec<String>, ServerError> {
        let (reply, answer) = std::sync::mpsc::channel();
        let gone = || ServerError::Admin("the server is shutting down".into());
        self.rotate_web.send(reply).map_err(|_| gone())?;
        // On a blocking thread (admin commands run there); the serving loop answers at once.
        answer
            .recv_timeout(admin::ADMIN_TIMEOUT)
            .map_err(|_| gone())?
    }

    fn web_certificate(&self) -> Option<PathBuf> {
        self.web.certificate.clone()
    }

    fn web_hashes(&self) -> Vec<String> {
        let announced = match self.announced.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        announced
            .iter()
            .map(|c| rekord::net::hex(&c.hash))
            .collect()
    }

    fn force_return(&self, tree: &str, id: u64) -> Result<Option<u32>, ServerError> {
        let done = {
            let _order = self.pushes();
            let taken = self.store.force_return(tree, id)?;
            taken.map(|(holder, entry)| {
                tracing::info!(tree, id, holder, "borrow forcibly returned");
                (holder, self.enqueue(vec![Push::Changes(vec![entry])]))
            })
        };
        // On a blocking thread (admin commands run there), never inside async code.
        match done {
            Some((holder, done)) => done.blocking_recv().map(|()| Some(holder)).map_err(|_| {
                ServerError::Database("the forced return could not be made durable".into())
            }),
            None => Ok(None),
        }
    }
}

/// Runs `work` with the store on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, End> {
    run_blocking(work)
        .await
        .map_err(|e| End::Internal(e.to_string()))?
        .map_err(|e| End::Internal(e.to_string()))
}

/// Runs blocking `work` (database transactions) from async code. On a multi-threaded
/// runtime it runs right here, the runtime handing this worker's other tasks to another
/// thread meanwhile: no hop to the blocking pool and back on the path of every change
/// (a change's propagation crosses two). Elsewhere (a current-thread runtime, where that
/// is not possible) on the blocking pool.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Ok(tokio::task::block_in_place(work));
    }
    tokio::task::spawn_blocking(work).await
}

/// The answer to one request of client `holder` whose token grants `grant`.
async fn answer(
    shared: &Arc<Shared>,
    grant: &Grant,
    holder: u32,
    body: Request,
) -> Result<Response, End> {
    Ok(match body {
        Request::Ping => Response::Pong,
        Request::WebCertificates { nonce } => shared.web_certificates(&nonce)?,
        Request::Ranges { want } => {
            if grant.write == Trees::Only(Vec::new()) {
                return Ok(Response::Error(writes_nothing()));
            }
            let store = shared.store.clone();
            let range = blocking(move || store.grant_range(holder, want)).await?;
            Response::Ranges(vec![range])
        }
        Request::Reclaim { ranges } => {
            if grant.write == Trees::Only(Vec::new()) {
                return Ok(Response::Error(writes_nothing()));
            }
            let store = shared.store.clone();
            let refused = blocking(move || store.reclaim(holder, &ranges)).await?;
            Response::Reclaimed { refused }
        }
        Request::Borrow { tree, id } => {
            if !grant.write.allows(&tree) {
                return Ok(Response::Error(RemoteError::NotAllowed { tree }));
            }
            let shared = shared.clone();
            let (outcome, seq, done) = blocking(move || {
                let _order = shared.pushes();
                let (outcome, entry) = shared.store.borrow_logged(&tree, id, holder)?;
                let seq = entry.as_ref().map_or(0, |e| e.seq);
                let pushes = entry.map(|e| Push::Changes(vec![e])).into_iter().collect();
                let refusal = match outcome {
                    BorrowOutcome::HeldBy(other) => Some(RemoteError::AlreadyBorrowed {
                        holder: other,
                        name: shared.store.holder_token(other)?,
                    }),
                    BorrowOutcome::Granted | BorrowOutcome::AlreadyHeld => None,
                };
                Ok((refusal, seq, shared.enqueue(pushes)))
            })
            .await?;
            durable(done).await?;
            match outcome {
                None => Response::Granted { seq },
                Some(refusal) => Response::Error(refusal),
            }
        }
        Request::Return { tree, id } => {
            if !grant.write.allows(&tree) {
                return Ok(Response::Error(RemoteError::NotAllowed { tree }));
            }
            let shared = shared.clone();
            let (freed, done) = blocking(move || {
                let _order = shared.pushes();
                let entry = shared.store.return_logged(&tree, id, holder)?;
                let freed = entry.is_some();
                let pushes = entry.map(|e| Push::Changes(vec![e])).into_iter().collect();
                Ok((freed, shared.enqueue(pushes)))
            })
            .await?;
            durable(done).await?;
            if freed {
                Response::Returned
            } else {
                Response::Error(RemoteError::NotBorrowed)
            }
        }
        Request::PutSchema {
            tree,
            version,
            schema,
        } => {
            if !grant.write.allows(&tree) {
                return Ok(Response::Error(RemoteError::NotAllowed { tree }));
            }
            let store = shared.store.clone();
            match blocking(move || store.put_schema(&tree, version, &schema)).await? {
                Ok(()) => Response::Accepted { seq: 0 },
                Err(e) => Response::Error(e),
            }
        }
        Request::Fetch { tree, id } => {
            if !grant.read.allows(&tree) {
                return Ok(Response::Error(RemoteError::NotAllowed { tree }));
            }
            let store = shared.store.clone();
            let (holder, revisions) = blocking(move || store.fetch(&tree, id)).await?;
            Response::Record { holder, revisions }
        }
        Request::Schema { tree, version } => {
            if !grant.read.allows(&tree) {
                return Ok(Response::Error(RemoteError::NotAllowed { tree }));
            }
            let store = shared.store.clone();
            match blocking(move || store.schema(&tree, version)).await? {
                Some(text) => Response::Schema(text),
                None => Response::Error(RemoteError::NotFound),
            }
        }
        Request::Entries { first, entries } => {
            let shared = shared.clone();
            let grant = grant.clone();
            let (response, done) = blocking(move || {
                let _order = shared.pushes();
                let (outcomes, accepted) = shared
                    .store
                    .apply_entries(holder, &grant, first, &entries)?;
                let pushes = push_batches(accepted)
                    .into_iter()
                    .map(Push::Changes)
                    .collect();
                Ok((Response::Entries(outcomes), shared.enqueue(pushes)))
            })
            .await?;
            // Also for entries answered as duplicates: their first application may still
            // be on its way to the disk.
            durable(done).await?;
            response
        }
        Request::Changes { op, changes } => {
            let shared = shared.clone();
            let grant = grant.clone();
            let (response, done) = blocking(move || {
                let _order = shared.pushes();
                let (response, pushes) =
                    match shared.store.apply_changes(holder, &grant, op, changes)? {
                        // A create makes its client the borrow holder; the pushed
                        // change says so (`Sequenced::origin`), no separate borrow push.
                        Applied::Accepted { seq, entries, .. } => (
                            Response::Accepted { seq },
                            push_batches(entries)
                                .into_iter()
                                .map(Push::Changes)
                                .collect(),
                        ),
                        Applied::Retried { seq } => (Response::Accepted { seq }, Vec::new()),
                        Applied::Rejected(e) => (Response::Error(e), Vec::new()),
                    };
                Ok((response, shared.enqueue(pushes)))
            })
            .await?;
            durable(done).await?;
            response
        }
    })
}

/// Splits accepted changes into pushes of at most [`PUSH_BATCH`] changes and, beyond the
/// first change of each, about [`PUSH_BATCH_BYTES`] of record data.
fn push_batches(entries: Vec<Sequenced>) -> Vec<Vec<Sequenced>> {
    let mut out: Vec<Vec<Sequenced>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let len = entry_size(&entry);
        match out.last_mut() {
            Some(last) if last.len() < PUSH_BATCH && bytes + len <= PUSH_BATCH_BYTES => {
                bytes += len;
                last.push(entry);
            }
            _ => {
                bytes = len;
                out.push(vec![entry]);
            }
        }
    }
    out
}

/// About how many bytes a change takes in a frame.
fn entry_size(entry: &Sequenced) -> usize {
    let data = match &entry.change.kind {
        ChangeKind::Put { data, .. } => data.len(),
        _ => 0,
    };
    64 + entry.change.tree.len() + data
}
