//! The local admin channel: token and backup commands for a running server.
//!
//! `server.redb` can be opened by one process only, so while `rekord-server run` serves a
//! data directory, the CLI cannot open the database itself. On Unix the running server
//! therefore listens on a Unix domain socket, [`SOCKET_FILE`] in its data directory, and
//! the CLI sends its command there instead ([`request`]); the server executes it through
//! its open [`Store`] on a blocking thread while it keeps serving QUIC clients.
//!
//! # Security
//!
//! The socket is bound inside a fresh directory only the owner can use (mode 0700), given
//! mode 0600, and only then moved into the data directory, so no other user can ever
//! connect to it. The server also checks each peer's credentials: only processes of the
//! user running the server (or root) are served. The channel is as trusted as the data
//! directory itself, which holds the private key.
//!
//! # Life cycle
//!
//! The socket is created when the server starts ([`Server::bind`](crate::Server::bind))
//! and removed when it stops. A socket left behind by a server that was killed is detected
//! at the next start (nobody accepts a connection on it) and replaced; a socket that does
//! accept a connection means another process serves it, and the server refuses to start.
//!
//! # Protocol
//!
//! One request per connection. The client sends one line: an [`AdminRequest`] in RON,
//! at most [`MAX_REQUEST`] bytes, then `\n`. The server answers with one line: an
//! [`AdminReply`] in RON (at most [`MAX_REPLY`] bytes), then closes the connection. A line
//! that is too long, not UTF-8, or not a known command is answered with
//! [`AdminReply::Error`]. For example:
//!
//! ```text
//! -> Issue(name:"alice",read:All,write:Only(["parts"]))
//! <- Issued(token:"rk1_...")
//! -> Backup(out:"/var/backups/rekord/2024-05-01.redb")
//! <- BackedUp(out:"/var/backups/rekord/2024-05-01.redb")
//! -> Drop(everything:true)
//! <- Error("invalid request: ...")
//! ```
//!
//! Other platforms have no admin channel: the token and backup commands need the server
//! to be stopped there.

use std::path::PathBuf;
use std::time::Duration;

use rekord::proto::handshake::Trees;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ServerError, Store, TokenInfo};

/// File name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// Longest request line accepted, in bytes (without the newline).
pub const MAX_REQUEST: usize = 64 * 1024;

/// Longest reply line accepted by [`request`], in bytes (without the newline).
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Bound on reading a request or writing a reply, on either side; the command itself
/// (for example a backup) is not bounded.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a running server does for admin commands that concern live sessions.
pub trait Hooks: Send + Sync {
    /// Forces the return of a record's borrow and pushes the change to the sessions;
    /// returns the former holder.
    fn force_return(&self, tree: &str, id: u64) -> Result<Option<u32>, ServerError>;

    /// The hashes of the WebTransport certificates the server presents and announces now
    /// (current first), as `serverCertificateHashes` names them.
    fn web_hashes(&self) -> Vec<String>;

    /// Presents a new WebTransport certificate now (see [`crate::WebCerts::force_rotate`]);
    /// the hashes presented and announced after it.
    fn rotate_web(&self) -> Result<Vec<String>, ServerError>;

    /// The public certificate presented to WebTransport connections instead of the
    /// rotating one, if one is configured (`web.certificate`).
    fn web_certificate(&self) -> Option<PathBuf>;
}

/// A command for the server database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdminRequest {
    /// Issue a token (see [`Store::issue`]).
    Issue {
        /// The token's unique name.
        name: String,
        /// Trees the token may read.
        read: Trees,
        /// Trees the token may write.
        write: Trees,
    },
    /// Revoke a token (see [`Store::revoke`]).
    Revoke {
        /// The token's name, or the token.
        token_or_name: String,
    },
    /// List the tokens (see [`Store::list`]).
    List,
    /// Write a consistent copy of the database to a new file (see [`Store::backup`]).
    /// Over the admin socket the path must be absolute: the server, not the client,
    /// creates the file, and its working directory is not the client's.
    Backup {
        /// The backup file to create.
        out: PathBuf,
    },
    /// Take a record's borrow back from whoever holds it (see [`Store::force_return`]).
    ForceReturn {
        /// Tree.
        tree: String,
        /// Record id.
        id: u64,
    },
    /// The WebTransport certificate hashes the running server presents and announces
    /// (what `rekord-server identity` prints while a server runs). Only a running server
    /// answers it.
    WebHashes,
    /// Present a new WebTransport certificate now (see [`crate::WebCerts::force_rotate`]);
    /// answered with [`AdminReply::WebHashes`].
    RotateWeb,
}

/// The result of an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdminReply {
    /// A token was issued; it is shown only here.
    Issued {
        /// The token.
        token: String,
    },
    /// A token was revoked.
    Revoked {
        /// The token's name.
        name: String,
    },
    /// The tokens, sorted by name.
    Tokens(Vec<TokenInfo>),
    /// The backup was written.
    BackedUp {
        /// The backup file.
        out: PathBuf,
    },
    /// The borrow was taken back from `holder` (`None`: nobody held it).
    ForceReturned {
        /// The former holder.
        holder: Option<u32>,
    },
    /// The WebTransport certificate hashes of the running server, current first.
    WebHashes(Vec<String>),
    /// The running server presents this certificate from a public CA to WebTransport
    /// connections (`web.certificate`): browsers validate it by WebPKI, no hash is named.
    WebCertificate(PathBuf),
    /// The command failed (only sent over the socket; [`request`] turns it into
    /// [`ServerError::Remote`]).
    Error(String),
}

impl AdminRequest {
    /// Executes the command on `store`. Blocking (it runs database transactions).
    pub fn execute(self, store: &Store) -> Result<AdminReply, ServerError> {
        match self {
            AdminRequest::Issue { name, read, write } => store
                .issue(&name, read, write)
                .map(|token| AdminReply::Issued { token }),
            AdminRequest::Revoke { token_or_name } => store
                .revoke(&token_or_name)
                .map(|name| AdminReply::Revoked { name }),
            AdminRequest::List => store.list().map(AdminReply::Tokens),
            AdminRequest::Backup { out } => {
                store.backup(&out).map(|()| AdminReply::BackedUp { out })
            }
            AdminRequest::ForceReturn { tree, id } => {
                store
                    .force_return(&tree, id)
                    .map(|taken| AdminReply::ForceReturned {
                        holder: taken.map(|(h, _)| h),
                    })
            }
            AdminRequest::RotateWeb => {
                // No server runs (this process holds the database): the files alone.
                let dir = store.path().parent().unwrap_or(std::path::Path::new("."));
                let now = crate::web::unix_now();
                let mut certs = crate::WebCerts::load_or_create(dir, now)?;
                certs.force_rotate(now)?;
                Ok(AdminReply::WebHashes(certs.hashes()))
            }
            AdminRequest::WebHashes => Err(ServerError::Admin(
                "only a running server tells the WebTransport certificates it presents; \
                 with none running, read them from the data directory (rekord-server identity)"
                    .into(),
            )),
        }
    }

    /// What the request does, for logs (never includes a token).
    #[cfg_attr(not(unix), allow(dead_code))]
    fn describe(&self) -> String {
        match self {
            AdminRequest::Issue { name, .. } => format!("issue token `{name}`"),
            AdminRequest::Revoke { .. } => "revoke a token".into(),
            AdminRequest::List => "list tokens".into(),
            AdminRequest::Backup { out } => format!("back up to {}", out.display()),
            AdminRequest::ForceReturn { tree, id } => {
                format!("force the return of record {id} of tree `{tree}`")
            }
            AdminRequest::WebHashes => "tell the WebTransport certificate hashes".into(),
            AdminRequest::RotateWeb => "rotate the WebTransport certificate".into(),
        }
    }
}

/// Encodes `value` as one RON line, newline included.
#[cfg_attr(not(unix), allow(dead_code))]
fn encode_line<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut text = ron::to_string(value).map_err(|e| e.to_string())?;
    if text.contains('\n') {
        return Err("the encoding spans several lines".into());
    }
    text.push('\n');
    Ok(text.into_bytes())
}

/// Decodes one RON line, given without its newline.
#[cfg_attr(not(unix), allow(dead_code))]
fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    ron::from_str(text).map_err(|e| e.to_string())
}

/// Takes the line out of `buf` as read with a limit of `max + 1` bytes: `buf` must end
/// with the newline and hold at most `max` bytes before it.
#[cfg_attr(not(unix), allow(dead_code))]
fn complete_line(mut buf: Vec<u8>, max: usize) -> Result<Vec<u8>, String> {
    let newline = buf.last() == Some(&b'\n');
    if newline {
        buf.pop();
    }
    if buf.len() > max {
        Err(format!("the line is longer than {max} bytes"))
    } else if newline {
        Ok(buf)
    } else {
        Err("the connection ended before the end of the line".into())
    }
}

#[cfg(unix)]
pub(crate) use unix::Listener;
#[cfg(unix)]
pub use unix::request;

#[cfg(not(unix))]
pub(crate) use elsewhere::Listener;

#[cfg(unix)]
mod unix {
    use super::Hooks;
    use std::io::{BufRead as _, Read as _, Write as _};
    use std::os::unix::fs::{
        DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
    };
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::{
        ADMIN_TIMEOUT, AdminReply, AdminRequest, MAX_REPLY, MAX_REQUEST, SOCKET_FILE,
        complete_line, decode_line, encode_line,
    };
    use crate::{ServerError, Store};

    fn io_error(path: &Path, e: std::io::Error) -> ServerError {
        ServerError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }

    /// The admin socket of a running server; dropping it removes the socket file.
    #[derive(Debug)]
    pub(crate) struct Listener {
        listener: tokio::net::UnixListener,
        path: PathBuf,
        /// Device and inode of the socket file, to remove only our own.
        file: (u64, u64),
        /// The user running the server (the socket file's owner).
        owner: u32,
    }

    impl Listener {
        /// Binds [`SOCKET_FILE`] in `data_dir`, replacing a stale one. Must be called
        /// inside a tokio runtime, by the process holding the database lock.
        pub(crate) fn bind(data_dir: &Path) -> Result<Self, ServerError> {
            let path = data_dir.join(SOCKET_FILE);
            remove_stale(&path)?;
            // Bind inside a directory only we can use, restrict the socket, then move it
            // into place: no other user can connect at any moment.
            // (Short names: a socket path is limited to about 100 bytes.)
            let private =
                data_dir.join(format!(".admin-{:08x}", uuid::Uuid::new_v4().as_fields().0));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&private)
                .map_err(|e| io_error(&private, e))?;
            let bound = bind_in(&private, &path);
            let _ = std::fs::remove_dir_all(&private);
            let listener = bound?;
            let meta = std::fs::symlink_metadata(&path).map_err(|e| io_error(&path, e))?;
            tracing::debug!(path = %path.display(), "admin socket ready");
            Ok(Self {
                listener,
                file: (meta.dev(), meta.ino()),
                owner: meta.uid(),
                path,
            })
        }

        /// The socket file.
        pub(crate) fn path(&self) -> &Path {
            &self.path
        }

        /// Waits for the next connection. Cancel-safe.
        pub(crate) async fn accept(&self) -> Connection {
            loop {
                match self.listener.accept().await {
                    Ok((stream, _)) => {
                        return Connection {
                            stream,
                            owner: self.owner,
                        };
                    }
                    Err(e) => {
                        // Out of file descriptors, typically: do not spin.
                        tracing::warn!(error = %e, "admin socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let ours = std::fs::symlink_metadata(&self.path)
                .is_ok_and(|m| (m.dev(), m.ino()) == self.file);
            if ours && let Err(e) = std::fs::remove_file(&self.path) {
                let path = self.path.display();
                tracing::warn!(%path, error = %e, "cannot remove the admin socket");
            }
        }
    }

    /// Removes `path` if it is a socket nobody accepts connections on.
    fn remove_stale(path: &Path) -> Result<(), ServerError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(path, e)),
        };
        if !meta.file_type().is_socket() {
            return Err(ServerError::Admin(format!(
                "{} exists and is not a socket; move it away",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::Admin(format!(
                "another process accepts connections on {}; stop it first",
                path.display()
            )));
        }
        tracing::info!(
            path = %path.display(),
            "replacing a stale admin socket (the server was not stopped cleanly)"
        );
        std::fs::remove_file(path).map_err(|e| io_error(path, e))
    }

    /// Binds a socket in the private directory `private`, restricts it to the owner and
    /// moves it to `path`.
    fn bind_in(private: &Path, path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
        let temporary = private.join("s");
        let listener =
            tokio::net::UnixListener::bind(&temporary).map_err(|e| io_error(&temporary, e))?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error(&temporary, e))?;
        std::fs::rename(&temporary, path).map_err(|e| io_error(path, e))?;
        Ok(listener)
    }

    /// One client of the admin socket.
    #[derive(Debug)]
    pub(crate) struct Connection {
        stream: tokio::net::UnixStream,
        owner: u32,
    }

    impl Connection {
        /// Reads the request, executes it on `store` on a blocking thread and replies.
        pub(crate) async fn serve(self, store: Arc<Store>, hooks: Arc<dyn Hooks>) {
            let Connection { stream, owner } = self;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == owner || cred.uid() == 0 => {}
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid(), "admin socket: refused another user");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: cannot check the peer");
                    return;
                }
            }
            let reply = match tokio::time::timeout(ADMIN_TIMEOUT, read_request(&stream)).await {
                Err(_) => AdminReply::Error("no complete request in time".into()),
                Ok(Err(e)) => AdminReply::Error(format!("invalid request: {e}")),
                Ok(Ok(request)) => execute(request, store, hooks).await,
            };
            let bytes = match encode_line(&reply) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(error = %e, "admin socket: cannot encode a reply");
                    return;
                }
            };
            let written = tokio::time::timeout(ADMIN_TIMEOUT, write_all(&stream, &bytes)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "admin socket: the client left"),
                Err(_) => tracing::debug!("admin socket: the client does not read its reply"),
            }
        }
    }

    /// Reads one request line: up to the newline, or `MAX_REQUEST + 1` bytes, or the end.
    async fn read_request(stream: &tokio::net::UnixStream) -> Result<AdminRequest, String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.contains(&b'\n') && buf.len() <= MAX_REQUEST {
            stream.readable().await.map_err(|e| e.to_string())?;
            match stream.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        // One request per connection: anything after the newline is ignored.
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end + 1);
        }
        decode_line(&complete_line(buf, MAX_REQUEST)?)
    }

    async fn write_all(stream: &tokio::net::UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn execute(
        request: AdminRequest,
        store: Arc<Store>,
        hooks: Arc<dyn Hooks>,
    ) -> AdminReply {
        if let AdminRequest::Backup { out } = &request
            && !out.is_absolute()
        {
            return AdminReply::Error(format!(
                "the backup path must be absolute, not {}",
                out.display()
            ));
        }
        let what = request.describe();
        let done = tokio::task::spawn_blocking(move || match request {
            // Live clients must hear of it: the server's hook commits and pushes.
            AdminRequest::ForceReturn { tree, id } => hooks
                .force_return(&tree, id)
                .map(|holder| AdminReply::ForceReturned { holder }),
            AdminRequest::WebHashes => Ok(match hooks.web_certificate() {
                Some(path) => AdminReply::WebCertificate(path),
                None => AdminReply::WebHashes(hooks.web_hashes()),
            }),
            // (A public certificate's files are read again too.)
            AdminRequest::RotateWeb => {
                hooks
                    .rotate_web()
                    .map(|hashes| match hooks.web_certificate() {
                        Some(path) => AdminReply::WebCertificate(path),
                        None => AdminReply::WebHashes(hashes),
                    })
            }
            other => other.execute(&store),
        })
        .await;
        match done {
            Ok(Ok(reply)) => {
                tracing::info!(command = %what, "admin command done");
                reply
            }
            Ok(Err(e)) => {
                tracing::info!(command = %what, error = %e, "admin command failed");
                AdminReply::Error(e.to_string())
            }
            Err(e) => {
                tracing::error!(command = %what, error = %e, "admin command crashed");
                AdminReply::Error(format!("the command failed in the server: {e}"))
            }
        }
    }

    /// Sends `request` to the server running on `data_dir` through its admin socket.
    ///
    /// `Ok(None)` if no server accepts connections there (no socket, or a stale one);
    /// a command that failed in the server is [`ServerError::Remote`]. Blocking; a
    /// relative [`AdminRequest::Backup`] path is made absolute first.
    pub fn request(
        data_dir: &Path,
        request: &AdminRequest,
    ) -> Result<Option<AdminReply>, ServerError> {
        let path = data_dir.join(SOCKET_FILE);
        let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        let request = match request {
            AdminRequest::Backup { out } if !out.is_absolute() => AdminRequest::Backup {
                out: std::path::absolute(out).map_err(|e| io_error(out, e))?,
            },
            other => other.clone(),
        };
        let line = encode_line(&request)
            .map_err(|e| ServerError::Admin(format!("cannot encode the request: {e}")))?;
        if line.len() > MAX_REQUEST + 1 {
            return Err(ServerError::Admin(format!(
                "the request is longer than {MAX_REQUEST} bytes"
            )));
        }
        let io = |e| io_error(&path, e);
        stream.set_write_timeout(Some(ADMIN_TIMEOUT)).map_err(io)?;
        stream.write_all(&line).map_err(io)?;
        // The command itself may take a while (a backup); the server bounds the rest.
        stream.set_read_timeout(None).map_err(io)?;
        let mut buf = Vec::new();
        let limit = u64::try_from(MAX_REPLY + 1).unwrap_or(u64::MAX);
        std::io::BufReader::new(&mut stream)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        let line = complete_line(buf, MAX_REPLY)
            .map_err(|e| ServerError::Admin(format!("invalid reply: {e}")))?;
        match decode_line(&line) {
            Ok(AdminReply::Error(message)) => Err(ServerError::Remote(message)),
            Ok(reply) => Ok(Some(reply)),
            Err(e) => Err(ServerError::Admin(format!("invalid reply: {e}"))),
        }
    }
}

#[cfg(not(unix))]
mod elsewhere {
    use std::path::Path;
    use std::sync::Arc;

    use crate::{ServerError, Store};

    /// No admin channel on this platform: accepts nothing.
    #[derive(Debug)]
    pub(crate) struct Listener;

    impl Listener {
        pub(crate) fn bind(_data_dir: &Path) -> Result<Self, ServerError> {
            Ok(Self)
        }

        pub(crate) fn path(&self) -> Option<&Path> {
            None
        }

        pub(crate) async fn accept(&self) -> Connection {
            std::future::pending().await
        }
    }

    /// Never constructed on this platform.
    #[derive(Debug)]
    pub(crate) enum Connection {}

    impl Connection {
        pub(crate) async fn serve(self, _store: Arc<Store>, _hooks: Arc<dyn super::Hooks>) {
            match self {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lines_round_trip_and_are_validated() {
        let request = AdminRequest::Issue {
            name: "line\nbreak \"quoted\"".into(),
            read: Trees::All,
            write: Trees::Only(vec!["parts".into()]),
        };
        let line = encode_line(&request).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let back: AdminRequest = decode_line(&complete_line(line, MAX_REQUEST).unwrap()).unwrap();
        assert_eq!(back, request);

        assert!(decode_line::<AdminRequest>(b"Drop(everything:true)").is_err());
        assert!(decode_line::<AdminRequest>(b"List").is_ok());
        assert!(decode_line::<AdminRequest>(b"\xff").is_err());
        assert!(complete_line(vec![b'x'; 11], 10).is_err());
        let mut long = vec![b'x'; 11];
        long.push(b'\n');
        assert!(complete_line(long, 10).is_err());
        assert!(complete_line(b"List".to_vec(), 10).is_err());
        assert_eq!(complete_line(b"List\n".to_vec(), 10).unwrap(), b"List");
    }
}
