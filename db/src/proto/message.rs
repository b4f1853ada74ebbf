//! The messages of protocol version [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).

use super::{
    MAX_ENTRIES, MAX_NAME, MAX_RECLAIM, MAX_RECORD, MAX_SCHEMA, MAX_TOKEN, MAX_TREES, WireError,
};

/// A 16-byte identity (a UUID's bytes): of a server, a client, or an operation.
pub type Id = [u8; 16];

/// One protocol message.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum Frame {
    /// First message of a client.
    ClientHello(ClientHello),
    /// The server's answer when it accepts the client.
    ServerHello(ServerHello),
    /// The server's answer when it refuses the client (it closes the connection after).
    Refused(Refusal),
    /// A client request; answered by a [`Frame::Response`] with the same `id`.
    Request {
        /// Chosen by the client, unique per connection.
        id: u64,
        /// What is asked.
        body: Request,
    },
    /// The answer to the request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        body: Response,
    },
    /// Something the server sends unasked (changes, including borrow changes).
    Push(Push),
}

/// What a client says first. (Its `Debug` output leaves the token out.)
#[derive(Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct ClientHello {
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// The application name: a client of one application never syncs with another's server.
    pub app: String,
    /// The client's stable identity.
    pub client: Id,
    /// The access token issued by the server's CLI.
    pub token: String,
    /// The server identity the client pinned on first contact (`None` on first contact).
    pub server: Option<Id>,
    /// The last server sequence number the client has applied (0: none).
    pub cursor: u64,
    /// Trees to receive changes of (empty: all the token may read).
    pub trees: Vec<String>,
    /// The holder number this client had (0: none yet). A server restored from a backup
    /// that does not know the client gives it this number again when it is free.
    pub replica: u32,
    /// The lineage of the server history this client last synced with, as the server sent
    /// it (empty: none yet); the server answers where it parts from its own
    /// ([`ServerHello::common`]).
    pub history: Vec<(u64, u64)>,
    /// The highest outbox entry number this client's file has made (0: none). A client
    /// sends only entries it made, so a server that processed a higher number for this
    /// client got it from another copy of the client's file: this one is older
    /// ([`Refusal::OlderCopy`]).
    pub last_entry: u64,
}

impl std::fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHello")
            .field("protocol", &self.protocol)
            .field("app", &self.app)
            .field("client", &self.client)
            .field("token", &"<redacted>")
            .field("server", &self.server)
            .field("cursor", &self.cursor)
            .field("trees", &self.trees)
            .field("replica", &self.replica)
            .field("history", &self.history)
            .field("last_entry", &self.last_entry)
            .finish()
    }
}

/// The server's welcome.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct ServerHello {
    /// The protocol version the server speaks.
    pub protocol: u32,
    /// The application name the server serves.
    pub app: String,
    /// The server's identity (pinned by the client on first contact).
    pub server: Id,
    /// The holder number the server uses for this client in borrow records.
    pub replica: u32,
    /// The server's latest sequence number.
    pub head: u64,
    /// The lineage of the server's history, oldest first (at most
    /// [`MAX_HISTORY`](super::MAX_HISTORY) entries, the newest): `(history id, base)`, each
    /// history sharing the changes of the one before it up to sequence number `base`. A
    /// restore from a backup starts a new history; a client that synced with a history the
    /// server no longer descends from reconciles from the last sequence number both share.
    pub history: Vec<(u64, u64)>,
    /// The trees the client's token may read (`None`: all). A client whose read rights grew
    /// fetches what the trees it may now read missed.
    pub read: Option<Vec<String>>,
    /// Where the client's history ([`ClientHello::history`]) parts from the server's: the
    /// last sequence number both share (`None`: the same history, or the client has none).
    pub common: Option<u64>,
}

/// Why the server refuses a client.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum Refusal {
    /// Client and server speak different protocol versions.
    ProtocolVersion {
        /// The server's version.
        server: u32,
        /// The client's version.
        client: u32,
    },
    /// The client belongs to another application.
    WrongApp {
        /// The server's application.
        server: String,
        /// The client's application.
        client: String,
    },
    /// The token is unknown, revoked or malformed.
    BadToken,
    /// The client asked for a tree its token may not read.
    TreeNotAllowed {
        /// The tree.
        tree: String,
    },
    /// The client identity in the hello belongs to a replica that connected with another
    /// token: a replica is bound to the token (by name) it first connected with, so a
    /// client cannot become another by copying its identity.
    ReplicaOfAnotherToken,
    /// The server processed outbox entries of this client up to `server`, and the client's
    /// file made only up to `client`: it is an older copy of the replica's file (restored
    /// from a backup, or copied while the replica went on). Its changes would be numbered
    /// like the other copy's and taken for them, and it would never see the other copy's
    /// changes (a replica skips its own): refused.
    OlderCopy {
        /// The last entry number the server processed for this client.
        server: u64,
        /// The last entry number the client's file made.
        client: u64,
    },
    /// The token has registered as many replicas (client identities) as the server allows
    /// one token (its `limits.replicas_per_token`): a new one is refused.
    TooManyReplicas {
        /// The server's limit.
        limit: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ProtocolVersion { server, client } => write!(
                f,
                "the server speaks protocol version {server}, this client {client}; update the older side"
            ),
            Refusal::WrongApp { server, client } => write!(
                f,
                "the server serves application `{server}`, this client is `{client}`; check the server address"
            ),
            Refusal::BadToken => write!(
                f,
                "the server does not accept this token (unknown or revoked); ask its administrator for a new one"
            ),
            Refusal::TreeNotAllowed { tree } => {
                write!(f, "this client's token may not read tree `{tree}`")
            }
            Refusal::ReplicaOfAnotherToken => write!(
                f,
                "this replica's identity belongs to a replica that connects with another token; \
                 connect with the token this replica first used (its name is what counts: a \
                 token re-issued under that name works), or open a new replica file"
            ),
            Refusal::OlderCopy { server, client } => write!(
                f,
                "this replica's file is an older copy of it: the server has its changes up to \
                 outbox entry {server}, this file made only {client} (it was restored from a \
                 backup, or copied while the replica went on elsewhere). Syncing it would mix \
                 the two copies' changes: use the newer file, or start a new replica file \
                 (take this one's data along with rekord-viewer export and import)"
            ),
            Refusal::TooManyReplicas { limit } => write!(
                f,
                "this token has registered {limit} replicas, as many as the server allows one \
                 token; reuse a replica file this token synced before, or ask the server's \
                 administrator for another token (or a higher limits.replicas_per_token)"
            ),
        }
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum Request {
    /// Liveness and round-trip measurement.
    Ping,
    /// Asks for id ranges with at least `want` ids in total.
    Ranges {
        /// Ids wanted.
        want: u64,
    },
    /// Asks for the borrow of a record.
    Borrow {
        /// Tree.
        tree: String,
        /// Record id.
        id: u64,
    },
    /// Returns a borrow (after pushing the final data).
    Return {
        /// Tree.
        tree: String,
        /// Record id.
        id: u64,
    },
    /// Uploads the schema of `tree` at `version` (needed before data of that version is
    /// accepted); answered with [`Response::Accepted`] (`seq` 0). Uploading the same schema
    /// again is fine; a different one for an existing `(tree, version)` is refused.
    PutSchema {
        /// Tree.
        tree: String,
        /// Schema version (from 1).
        version: u32,
        /// The schema as RON text (`rekord::Schema::to_ron`), at most
        /// [`MAX_SCHEMA`](super::MAX_SCHEMA) bytes.
        schema: String,
    },
    /// Local changes to apply, atomically, once (`op` makes retries idempotent).
    Changes {
        /// Operation id, unique per client operation.
        op: Id,
        /// The changes.
        changes: Vec<Change>,
    },
    /// Consecutive outbox entries `first, first + 1, ...` of this client, each applied all
    /// or nothing; the server remembers the last entry number it processed per client, so
    /// a retry applies nothing twice (see `rekord_server::store::Store::apply_entries`).
    /// Answered with [`Response::Entries`].
    Entries {
        /// The number of the first entry (from 1; numbers are never reused by a client).
        first: u64,
        /// The entries' changes, at most [`MAX_ENTRIES`](super::MAX_ENTRIES) entries.
        entries: Vec<Vec<Change>>,
    },
    /// Asks for the server's current state of record `id` of `tree` (every existing
    /// revision and the borrow holder); answered with [`Response::Record`]. A client
    /// resynchronises a record with it after the server refused its changes.
    Fetch {
        /// Tree.
        tree: String,
        /// Record id.
        id: u64,
    },
    /// Registers id ranges this client held in a history the server lost (it was restored
    /// from a backup taken before they were granted) as this client's again, so the records
    /// it created with them are accepted; answered with [`Response::Reclaimed`].
    Reclaim {
        /// The ranges, `(start, end)` with `end` exclusive.
        ranges: Vec<(u64, u64)>,
    },
    /// Asks for the stored schema of `tree` at `version` (a client needs it before it
    /// stores data of that version written by another client); answered with
    /// [`Response::Schema`], or [`RemoteError::NotFound`].
    Schema {
        /// Tree.
        tree: String,
        /// Schema version.
        version: u32,
    },
    /// Asks for the server's WebTransport certificates, signed with its long-term key over
    /// `nonce` (fresh random bytes): a replica that reaches the server over WebTransport,
    /// which shows it only the WebTransport certificate, checks the server's long-term
    /// identity this way, and learns the hashes to name next time. Answered with
    /// [`Response::WebCertificates`]. It may come first on the stream, before the hello
    /// (once): the identity is then proven before the token is sent.
    WebCertificates {
        /// Fresh random bytes the signature must cover (no replayed answer passes).
        nonce: [u8; 32],
    },
}

/// The server's WebTransport certificates, signed with its long-term key
/// ([`Request::WebCertificates`]).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct WebCertificates {
    /// The server's UUID (as its hello says; the signature covers it).
    pub server: Id,
    /// The server's long-term certificate (DER): what native replicas pin, and whose key
    /// made `signature`.
    pub cert: Vec<u8>,
    /// The WebTransport certificates: the one presented now first, then the next one.
    pub certificates: Vec<WebCertificate>,
    /// ECDSA P-256 / SHA-256 signature (ASN.1 DER) of
    /// [`WebCertificates::signed`]`(server, nonce)` with the key of `cert`.
    pub signature: Vec<u8>,
}

/// One WebTransport certificate of [`WebCertificates`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct WebCertificate {
    /// Its SHA-256 (what a page names in `serverCertificateHashes`).
    pub hash: [u8; 32],
    /// When it expires (seconds since the Unix epoch).
    pub not_after: u64,
}

impl WebCertificates {
    /// The bytes the signature covers: a domain tag, the server's UUID, the nonce, and
    /// every certificate's hash and expiry.
    pub fn signed(server: &Id, nonce: &[u8; 32], certificates: &[WebCertificate]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + certificates.len() * 40);
        out.extend_from_slice(b"rekord web certificates v1\0");
        out.extend_from_slice(server);
        out.extend_from_slice(nonce);
        for c in certificates {
            out.extend_from_slice(&c.hash);
            out.extend_from_slice(&c.not_after.to_le_bytes());
        }
        out
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong,
    /// Granted id ranges, `(start, end)` with `end` exclusive.
    Ranges(Vec<(u64, u64)>),
    /// The borrow is granted (or was already held by this client: `seq` 0).
    Granted {
        /// The sequence number of the logged grant; it reaches the client as a pushed
        /// change, after any change logged before it.
        seq: u64,
    },
    /// The borrow is returned.
    Returned,
    /// The changes are applied under this sequence number (also for a retried `op`).
    Accepted {
        /// The sequence number of the (last) accepted change.
        seq: u64,
    },
    /// The request failed.
    Error(RemoteError),
    /// Answer to [`Request::Schema`]: the schema as RON text.
    Schema(String),
    /// Answer to [`Request::Fetch`].
    Record {
        /// Who holds the record's borrow (0: nobody).
        holder: u32,
        /// The existing revisions, oldest first (empty: no such record).
        revisions: Vec<Revision>,
    },
    /// Answer to [`Request::Reclaim`]: the ranges refused (held by another client, or never
    /// granted by this server); the client stops using them.
    Reclaimed {
        /// The refused ranges.
        refused: Vec<(u64, u64)>,
    },
    /// Answer to [`Request::Entries`]: one outcome per processed entry, in order (entries
    /// after a rejected one are not processed and not answered; after a conflict, each
    /// later entry is answered with its own conflict, or [`EntryOutcome::Skipped`]).
    Entries(Vec<EntryOutcome>),
    /// Answer to [`Request::WebCertificates`].
    WebCertificates(WebCertificates),
}

/// One revision of a record as the server holds it ([`Response::Record`]).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Revision {
    /// Revision number.
    pub rev: u32,
    /// Schema version of `data`.
    pub version: u32,
    /// Whether it is released.
    pub released: bool,
    /// Its state (released revisions).
    pub state: u32,
    /// The record bytes.
    pub data: Vec<u8>,
    /// The sequence number of its last change of data, release or state (0: not
    /// recorded; servers before this dated data changes only).
    pub changed: u64,
    /// The holder number of the client that made that change.
    pub by: u32,
}

/// What the server did with one outbox entry of [`Request::Entries`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum EntryOutcome {
    /// Applied; `seq` is the sequence number of its last change (the head before it for
    /// an empty entry).
    Applied {
        /// Sequence number.
        seq: u64,
    },
    /// Processed before (a retry) and its first answer forgotten: nothing applied. (A
    /// server answers a retry with the first answer while the client may not have seen it:
    /// until the client sends only later entries.)
    Duplicate,
    /// Refused for good (nothing of it applied); for a [`RemoteError::Conflict`], refused
    /// until merged (see there).
    Rejected(RemoteError),
    /// Not processed because an earlier entry of the request conflicted (the entries after
    /// a conflict are answered, so the client can merge all their conflicts at once); the
    /// client sends it again.
    Skipped,
}

/// Why the server rejected a request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum RemoteError {
    /// The record is borrowed by another client.
    AlreadyBorrowed {
        /// Holder number of the client holding it.
        holder: u32,
        /// The name of the token that client connected with, when the server knows it
        /// (1 to [`MAX_NAME`](super::MAX_NAME) bytes; `None` for a holder whose token the
        /// server never recorded, such as one last seen by a server before version 2 of
        /// the protocol).
        name: Option<String>,
    },
    /// The change needs the record's borrow, which this client does not hold.
    NotBorrowed,
    /// The revision is released; only its state may change.
    Released,
    /// A create used an id outside this client's ranges.
    OutsideRange {
        /// The offending id.
        id: u64,
    },
    /// The token does not allow this (tree not writable).
    NotAllowed {
        /// The tree.
        tree: String,
    },
    /// The request names something that does not exist.
    NotFound,
    /// The request is malformed or inconsistent.
    Invalid(String),
    /// An optimistic [`ChangeKind::Edit`] was based on a version another client changed
    /// since: nothing of its entry was applied, and (unlike other refusals) the entry does
    /// not count as processed. The client merges per the tree's strategy and sends the
    /// entry again under the same number, with the outcome as an edit based on
    /// `current.seq`.
    Conflict(Box<Current>),
}

/// The server's current version of a record revision that an optimistic edit conflicted
/// with ([`RemoteError::Conflict`]), and the version the edit was based on.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Current {
    /// Tree.
    pub tree: String,
    /// Record id.
    pub id: u64,
    /// Revision.
    pub rev: u32,
    /// Sequence number of the last change of the current version.
    pub seq: u64,
    /// Holder number of the client that made it (0: the server).
    pub origin: u32,
    /// Its hybrid logical clock timestamp (0: written under a borrow, without one).
    pub hlc: u64,
    /// Schema version of `data`.
    pub version: u32,
    /// The current record bytes.
    pub data: Vec<u8>,
    /// The version the conflicting edit was based on, `(schema version, bytes)`, when the
    /// server's log still holds it (the base of a three-way merge).
    pub base: Option<(u32, Vec<u8>)>,
}

/// One change to one record, as it travels between replicas.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Change {
    /// Tree.
    pub tree: String,
    /// Record id.
    pub id: u64,
    /// Revision.
    pub rev: u32,
    /// What changed.
    pub kind: ChangeKind,
}

/// What a [`Change`] does.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum ChangeKind {
    /// An optimistic edit (trees with a merge strategy): the record's new data, accepted
    /// without the borrow when no other client changed the revision after sequence number
    /// `base` (the last server change this client had applied when it edited), else refused
    /// with [`RemoteError::Conflict`]. A record held by another client's borrow is refused
    /// with [`RemoteError::AlreadyBorrowed`]. On an id from the client's ranges that does not
    /// exist yet, it creates the record without giving anyone its borrow.
    Edit {
        /// Sequence number the edit is based on.
        base: u64,
        /// Hybrid logical clock timestamp of the edit (physical milliseconds << 16 | counter).
        hlc: u64,
        /// Schema version of `data`.
        version: u32,
        /// The record bytes.
        data: Vec<u8>,
    },
    /// The record's new data (create, update, new revision): rkyv bytes of schema `version`,
    /// validated against that stored schema before they are stored.
    Put {
        /// Schema version of `data`.
        version: u32,
        /// The record bytes.
        data: Vec<u8>,
    },
    /// The revision is removed.
    Remove,
    /// The revision is released.
    Release,
    /// The released revision's state.
    SetState(u32),
    /// The record's borrow changed hands (`holder` 0: returned). The server writes these
    /// into its log when it grants or frees a borrow ([`Request::Borrow`],
    /// [`Request::Return`]). A client may send one only with `holder` 0, as an outbox entry
    /// of its own: the return of its borrow, numbered like changes (so a resent return is
    /// answered with its first outcome); returning a record it does not hold changes
    /// nothing.
    Borrow {
        /// The new holder.
        holder: u32,
    },
}

impl ChangeKind {
    /// A short description for logs: the kind, and the first bytes of its data.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn name(&self) -> String {
        let head = |data: &[u8]| format!("{:02x?}", &data[..data.len().min(12)]);
        match self {
            ChangeKind::Edit { base, data, .. } => format!("edit(base {base}) {}", head(data)),
            ChangeKind::Put { data, .. } => format!("put {}", head(data)),
            ChangeKind::Remove => "remove".into(),
            ChangeKind::Release => "release".into(),
            ChangeKind::SetState(s) => format!("state {s}"),
            ChangeKind::Borrow { holder } => format!("borrow {holder}"),
        }
    }
}

/// What the server sends unasked.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub enum Push {
    /// Accepted changes, in sequence order, each with the holder number of its origin.
    Changes(Vec<Sequenced>),
    /// The client has every change up to `head`.
    CaughtUp {
        /// The server's latest sequence number.
        head: u64,
    },
}

/// A change with its server sequence number.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Sequenced {
    /// Gap-free server sequence number.
    pub seq: u64,
    /// Holder number of the client the change came from.
    pub origin: u32,
    /// The change.
    pub change: Change,
}

fn name_ok(what: &str, name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(WireError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

fn tree_ok(tree: &str) -> Result<(), WireError> {
    name_ok("a tree name", tree)?;
    if !tree
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
    {
        return Err(WireError::Invalid(format!(
            "`{tree}` is not a valid tree name"
        )));
    }
    Ok(())
}

fn change_ok(c: &Change) -> Result<(), WireError> {
    tree_ok(&c.tree)?;
    if c.id == 0 {
        return Err(WireError::Invalid("record id 0 does not exist".into()));
    }
    if let ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. } = &c.kind {
        if *version == 0 {
            return Err(WireError::Invalid("schema versions start at 1".into()));
        }
        if data.len() > MAX_RECORD {
            return Err(WireError::Invalid(format!(
                "record data is limited to {MAX_RECORD} bytes, got {}",
                data.len()
            )));
        }
    }
    Ok(())
}

fn remote_ok(e: &RemoteError) -> Result<(), WireError> {
    match e {
        RemoteError::AlreadyBorrowed {
            name: Some(name), ..
        } => name_ok("a token name", name),
        RemoteError::NotAllowed { tree } => tree_ok(tree),
        RemoteError::Conflict(c) => {
            tree_ok(&c.tree)?;
            let base = c.base.as_ref().map_or(0, |(_, d)| d.len());
            if c.version == 0 || c.data.len() > MAX_RECORD || base > MAX_RECORD {
                return Err(WireError::Invalid(
                    "a conflict names version 0 or carries too much data".into(),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Frame {
    /// Checks the protocol's limits (names, counts, ids); called by [`decode`](super::decode)
    /// on everything that comes from the network.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Frame::ClientHello(h) => {
                name_ok("the application name", &h.app)?;
                if h.token.len() > MAX_TOKEN {
                    return Err(WireError::Invalid(format!(
                        "the token is longer than {MAX_TOKEN} bytes"
                    )));
                }
                if h.history.len() > super::MAX_HISTORY {
                    return Err(WireError::Invalid(format!(
                        "at most {} history entries, got {}",
                        super::MAX_HISTORY,
                        h.history.len()
                    )));
                }
                if h.trees.len() > MAX_TREES {
                    return Err(WireError::Invalid(format!(
                        "at most {MAX_TREES} trees may be subscribed to by name"
                    )));
                }
                h.trees.iter().try_for_each(|t| tree_ok(t))
            }
            Frame::ServerHello(h) => {
                name_ok("the application name", &h.app)?;
                if h.history.len() > super::MAX_HISTORY {
                    return Err(WireError::Invalid(format!(
                        "at most {} history entries, got {}",
                        super::MAX_HISTORY,
                        h.history.len()
                    )));
                }
                if let Some(read) = &h.read {
                    if read.len() > MAX_TREES {
                        return Err(WireError::Invalid(format!(
                            "at most {MAX_TREES} readable trees by name"
                        )));
                    }
                    read.iter().try_for_each(|t| tree_ok(t))?;
                }
                Ok(())
            }
            Frame::Refused(Refusal::WrongApp { server, client }) => {
                name_ok("the application name", server)?;
                name_ok("the application name", client)
            }
            Frame::Refused(Refusal::TreeNotAllowed { tree }) => tree_ok(tree),
            Frame::Refused(_) => Ok(()),
            Frame::Request { body, .. } => match body {
                Request::Borrow { tree, id } | Request::Return { tree, id } => {
                    tree_ok(tree)?;
                    if *id == 0 {
                        return Err(WireError::Invalid("record id 0 does not exist".into()));
                    }
                    Ok(())
                }
                Request::PutSchema {
                    tree,
                    version,
                    schema,
                } => {
                    tree_ok(tree)?;
                    if *version == 0 {
                        return Err(WireError::Invalid("schema versions start at 1".into()));
                    }
                    if schema.len() > MAX_SCHEMA {
                        return Err(WireError::Invalid(format!(
                            "a schema is limited to {MAX_SCHEMA} bytes of RON, got {}",
                            schema.len()
                        )));
                    }
                    Ok(())
                }
                Request::Changes { changes, .. } => changes.iter().try_for_each(change_ok),
                Request::Entries { first, entries } => {
                    if *first == 0 {
                        return Err(WireError::Invalid("entry numbers start at 1".into()));
                    }
                    if entries.len() > MAX_ENTRIES {
                        return Err(WireError::Invalid(format!(
                            "at most {MAX_ENTRIES} entries per request, got {}",
                            entries.len()
                        )));
                    }
                    entries.iter().flatten().try_for_each(change_ok)
                }
                Request::Fetch { tree, id } => {
                    tree_ok(tree)?;
                    if *id == 0 {
                        return Err(WireError::Invalid("record id 0 does not exist".into()));
                    }
                    Ok(())
                }
                Request::Schema { tree, version } => {
                    tree_ok(tree)?;
                    if *version == 0 {
                        return Err(WireError::Invalid("schema versions start at 1".into()));
                    }
                    Ok(())
                }
                Request::Reclaim { ranges } => {
                    if ranges.len() > MAX_RECLAIM {
                        return Err(WireError::Invalid(format!(
                            "at most {MAX_RECLAIM} ranges per reclaim, got {}",
                            ranges.len()
                        )));
                    }
                    Ok(())
                }
                Request::Ping | Request::Ranges { .. } | Request::WebCertificates { .. } => Ok(()),
            },
            Frame::Response { body, .. } => match body {
                Response::Ranges(r) => {
                    if r.iter().any(|(s, e)| *s == 0 || s >= e) {
                        return Err(WireError::Invalid(
                            "an id range is empty or starts at 0".into(),
                        ));
                    }
                    Ok(())
                }
                Response::Error(e) => remote_ok(e),
                Response::Entries(outcomes) => outcomes.iter().try_for_each(|o| match o {
                    EntryOutcome::Rejected(e) => remote_ok(e),
                    _ => Ok(()),
                }),
                Response::Record { revisions, .. } => {
                    let mut last = None;
                    for r in revisions {
                        if r.version == 0 || r.data.len() > MAX_RECORD {
                            return Err(WireError::Invalid(
                                "a fetched revision has version 0 or too much data".into(),
                            ));
                        }
                        if last.is_some_and(|l| l >= r.rev) {
                            return Err(WireError::Invalid(
                                "fetched revisions must be in increasing order".into(),
                            ));
                        }
                        last = Some(r.rev);
                    }
                    Ok(())
                }
                Response::WebCertificates(w) => {
                    // A certificate is a few hundred bytes; a signature about 72.
                    if w.cert.len() > 16 << 10
                        || w.signature.len() > 256
                        || w.certificates.len() > 4
                    {
                        return Err(WireError::Invalid(
                            "a certificate announcement is larger than any server makes".into(),
                        ));
                    }
                    Ok(())
                }
                Response::Schema(text) if text.len() > MAX_SCHEMA => {
                    Err(WireError::Invalid(format!(
                        "a schema is limited to {MAX_SCHEMA} bytes of RON, got {}",
                        text.len()
                    )))
                }
                _ => Ok(()),
            },
            Frame::Push(Push::Changes(entries)) => {
                let mut last = 0;
                for e in entries {
                    if e.seq <= last {
                        return Err(WireError::Invalid(
                            "pushed changes must have increasing sequence numbers".into(),
                        ));
                    }
                    last = e.seq;
                    change_ok(&e.change)?;
                }
                Ok(())
            }
            Frame::Push(Push::CaughtUp { .. }) => Ok(()),
        }
    }
}
