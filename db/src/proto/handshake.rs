//! The handshake, sans-IO: what each side checks in the other's hello.
//!
//! The client sends [`ClientHello`] (protocol version, application name, its identity, its
//! token, the server identity it pinned, its cursor, the trees it wants). The server answers
//! [`ServerHello`] or [`Frame::Refused`]. The client then checks the answer itself: a server
//! with another identity than the pinned one is refused by the client even if TLS succeeded
//! (the transport pins the certificate as well).

use super::{ClientHello, Frame, Id, PROTOCOL_VERSION, Refusal, ServerHello};

/// Which trees a token may reach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Trees {
    /// Every tree.
    All,
    /// Only these.
    Only(Vec<String>),
}

impl Trees {
    /// Whether `tree` is included.
    pub fn allows(&self, tree: &str) -> bool {
        match self {
            Trees::All => true,
            Trees::Only(names) => names.iter().any(|n| n == tree),
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// Trees the client may read (receive changes of).
    pub read: Trees,
    /// Trees the client may write (create, change, borrow).
    pub write: Trees,
}

/// The server's side: checks a client's hello. `token_grant` looks the token up (`None`:
/// unknown or revoked). Returns the grant, or the refusal to send before closing.
pub fn check_client(
    hello: &ClientHello,
    server_app: &str,
    token_grant: impl FnOnce(&str) -> Option<Grant>,
) -> Result<Grant, Refusal> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Refusal::ProtocolVersion {
            server: PROTOCOL_VERSION,
            client: hello.protocol,
        });
    }
    if hello.app != server_app {
        return Err(Refusal::WrongApp {
            server: server_app.to_owned(),
            client: hello.app.clone(),
        });
    }
    let grant = token_grant(&hello.token).ok_or(Refusal::BadToken)?;
    if let Some(tree) = hello.trees.iter().find(|t| !grant.read.allows(t)) {
        return Err(Refusal::TreeNotAllowed { tree: tree.clone() });
    }
    Ok(grant)
}

/// Why the client gives up on a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server refused this client.
    #[error("the server refused the connection: {0}")]
    Refused(Refusal),
    /// The server is not the one this client pinned.
    #[error(
        "this is not the server this client first connected to (expected identity {expected}, found {found}); refusing it. If the server was replaced on purpose, forget the pinned identity"
    )]
    WrongServer {
        /// The pinned identity, as a UUID string.
        expected: String,
        /// The identity presented, as a UUID string.
        found: String,
    },
    /// The server serves another application.
    #[error("the server serves application `{server}`, this client is `{client}`")]
    WrongApp {
        /// The server's application.
        server: String,
        /// This client's application.
        client: String,
    },
    /// The server speaks another protocol version.
    #[error(
        "the server speaks protocol version {server}, this client {client}; update the older side"
    )]
    ProtocolVersion {
        /// The server's version.
        server: u32,
        /// This client's version.
        client: u32,
    },
    /// The server answered something other than a hello.
    #[error("the server broke the handshake: {0}")]
    Unexpected(String),
}

/// What the client needs to say hello. (Its `Debug` output leaves the token out.)
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Application name.
    pub app: String,
    /// The client's identity.
    pub client: Id,
    /// Access token.
    pub token: String,
    /// The pinned server identity, if this client connected before.
    pub pinned: Option<Id>,
    /// The client's cursor.
    pub cursor: u64,
    /// Trees to subscribe to (empty: all readable).
    pub trees: Vec<String>,
    /// The holder number this client had (0: none yet; see [`ClientHello::replica`]).
    pub replica: u32,
    /// The server lineage this client last synced with (see [`ClientHello::history`]).
    pub history: Vec<(u64, u64)>,
    /// The highest outbox entry number the client's file made (see
    /// [`ClientHello::last_entry`]).
    pub last_entry: u64,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("app", &self.app)
            .field("client", &self.client)
            .field("token", &"<redacted>")
            .field("pinned", &self.pinned)
            .field("cursor", &self.cursor)
            .field("trees", &self.trees)
            .field("replica", &self.replica)
            .field("history", &self.history)
            .field("last_entry", &self.last_entry)
            .finish()
    }
}

/// The client's hello frame.
pub fn client_hello(cfg: &ClientConfig) -> Frame {
    Frame::ClientHello(ClientHello {
        protocol: PROTOCOL_VERSION,
        app: cfg.app.clone(),
        client: cfg.client,
        token: cfg.token.clone(),
        server: cfg.pinned,
        cursor: cfg.cursor,
        trees: cfg.trees.clone(),
        replica: cfg.replica,
        history: cfg.history.clone(),
        last_entry: cfg.last_entry,
    })
}

fn uuid_text(id: &Id) -> String {
    uuid::Uuid::from_bytes(*id).to_string()
}

/// The client's side: checks the server's answer to its hello. On success the caller pins
/// `ServerHello::server` if nothing was pinned yet.
pub fn check_server(cfg: &ClientConfig, answer: Frame) -> Result<ServerHello, HandshakeError> {
    let hello = match answer {
        Frame::ServerHello(h) => h,
        Frame::Refused(r) => return Err(HandshakeError::Refused(r)),
        other => {
            return Err(HandshakeError::Unexpected(format!(
                "expected a hello, got {}",
                frame_name(&other)
            )));
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(HandshakeError::ProtocolVersion {
            server: hello.protocol,
            client: PROTOCOL_VERSION,
        });
    }
    if let Some(pinned) = cfg.pinned
        && pinned != hello.server
    {
        return Err(HandshakeError::WrongServer {
            expected: uuid_text(&pinned),
            found: uuid_text(&hello.server),
        });
    }
    if hello.app != cfg.app {
        return Err(HandshakeError::WrongApp {
            server: hello.app,
            client: cfg.app.clone(),
        });
    }
    Ok(hello)
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::ClientHello(_) => "a client hello",
        Frame::ServerHello(_) => "a server hello",
        Frame::Refused(_) => "a refusal",
        Frame::Request { .. } => "a request",
        Frame::Response { .. } => "a response",
        Frame::Push(_) => "a push",
    }
}
