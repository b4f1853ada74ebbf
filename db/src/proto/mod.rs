//! The wire protocol between rekord clients and a rekord server, sans-IO: bytes in, messages
//! out, and back. Nothing here touches a socket or a clock, so it is tested and fuzzed without
//! the network; the QUIC transport (server crate, sync client) only moves frames.
//!
//! - [`Frame`]: one message; on the wire a `u32` little-endian length, then the message as
//!   rkyv bytes (same format as records: unaligned, little-endian, 32-bit offsets).
//! - [`FrameReader`]: reassembles frames from arbitrary chunks of a byte stream; every frame
//!   is bounded ([`MAX_FRAME`]), validated with rkyv's checked access, then checked against
//!   the protocol's own limits ([`Frame::validate`]) before anything else sees it.
//! - [`PROTOCOL_VERSION`]: both sides send theirs in the hello; a mismatch is a clear refusal
//!   ([`Refusal::ProtocolVersion`]), never undefined behaviour.
//! - [`handshake`]: the checks each side applies to the other's hello (application name,
//!   pinned server identity, protocol version).

pub mod handshake;
// rkyv's derive generates resolver types whose enum-variant fields carry no docs; every item
// written by hand in `message` is documented.
#[allow(missing_docs)]
mod message;

pub use message::*;

/// The protocol version this build speaks. Bumped on any incompatible change of [`Frame`].
///
/// Version 2: [`RemoteError::AlreadyBorrowed`] also names the token the holder connected
/// with. Version 3: server histories (restores are noticed: [`ServerHello::history`],
/// [`Request::Reclaim`], [`ClientHello::replica`]), the token's read rights in the hello,
/// and returns as numbered outbox entries. Version 4: the hello's last entry number
/// ([`Refusal::OlderCopy`]). Version 5: [`Refusal::TooManyReplicas`]. Version 6:
/// [`Request::WebCertificates`].
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest frame accepted (16 MiB); larger lengths are refused before any allocation.
pub const MAX_FRAME: u32 = 16 << 20;

/// Longest name (application, tree) accepted.
pub const MAX_NAME: usize = 128;

/// Longest token accepted.
pub const MAX_TOKEN: usize = 512;

/// Most trees a client may subscribe to by name.
pub const MAX_TREES: usize = 1024;

/// Most history entries a [`ServerHello`] carries.
pub const MAX_HISTORY: usize = 64;

/// Most id ranges one [`Request::Reclaim`] carries.
pub const MAX_RECLAIM: usize = 4096;

/// Longest schema text (RON) accepted by [`Request::PutSchema`] (1 MiB).
pub const MAX_SCHEMA: usize = 1 << 20;

/// Most outbox entries in one [`Request::Entries`].
pub const MAX_ENTRIES: usize = 10_000;

/// Largest record data accepted in one [`ChangeKind::Put`] (8 MiB), so that any change,
/// with its sequence number, fits in a pushed frame.
pub const MAX_RECORD: usize = 8 << 20;

/// Why bytes from the network were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame announced a length above [`MAX_FRAME`].
    #[error("frame of {len} bytes announced; at most {MAX_FRAME} are accepted")]
    FrameTooLarge {
        /// The announced length.
        len: u32,
    },
    /// The frame's bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message is well-formed but breaks a protocol limit.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Encodes one frame (length prefix + message).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; 4];
    let out =
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(frame, std::mem::take(&mut out))
            .map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = u32::try_from(out.len() - 4)
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(WireError::FrameTooLarge {
            len: u32::try_from(out.len()).unwrap_or(u32::MAX),
        })?;
    let mut out = out;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Decodes the payload of one frame (without its length prefix): checked rkyv access, then
/// the protocol limits.
pub fn decode(payload: &[u8]) -> Result<Frame, WireError> {
    let archived = rkyv::access::<ArchivedFrame, rkyv::rancor::Error>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let frame: Frame = rkyv::deserialize::<Frame, rkyv::rancor::Error>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    frame.validate()?;
    Ok(frame)
}

/// Encodes one [`Sequenced`] change on its own (rkyv bytes, no length prefix), as a server
/// stores it in its log.
pub fn encode_sequenced(entry: &Sequenced) -> Result<Vec<u8>, WireError> {
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(entry, Vec::new())
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes bytes written by [`encode_sequenced`] (checked rkyv access).
pub fn decode_sequenced(bytes: &[u8]) -> Result<Sequenced, WireError> {
    let archived = rkyv::access::<ArchivedSequenced, rkyv::rancor::Error>(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    rkyv::deserialize::<Sequenced, rkyv::rancor::Error>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Encodes one [`EntryOutcome`] on its own (rkyv bytes), as a server remembers it.
pub fn encode_outcome(o: &EntryOutcome) -> Result<Vec<u8>, WireError> {
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(o, Vec::new())
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes bytes written by [`encode_outcome`] (checked rkyv access).
pub fn decode_outcome(bytes: &[u8]) -> Result<EntryOutcome, WireError> {
    let archived = rkyv::access::<ArchivedEntryOutcome, rkyv::rancor::Error>(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    rkyv::deserialize::<EntryOutcome, rkyv::rancor::Error>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes an [`EntryOutcome`] stored by a server of protocol version 1 (whose
/// [`RemoteError::AlreadyBorrowed`] carried no token name; it decodes with `name: None`).
/// Servers migrate the outcomes they keep with it when they start (checked rkyv access:
/// malformed bytes are an error).
pub fn decode_outcome_v1(bytes: &[u8]) -> Result<EntryOutcome, WireError> {
    let archived = rkyv::access::<v1::ArchivedEntryOutcome, rkyv::rancor::Error>(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let old = rkyv::deserialize::<v1::EntryOutcome, rkyv::rancor::Error>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok(old.into())
}

/// The stored layouts of protocol version 1 that changed in version 2, for
/// [`decode_outcome_v1`].
#[allow(missing_docs)]
mod v1 {
    use super::Current;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(crate = rkyv)]
    pub enum EntryOutcome {
        Applied { seq: u64 },
        Duplicate,
        Rejected(RemoteError),
        Skipped,
    }

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(crate = rkyv)]
    pub enum RemoteError {
        AlreadyBorrowed { holder: u32 },
        NotBorrowed,
        Released,
        OutsideRange { id: u64 },
        NotAllowed { tree: String },
        NotFound,
        Invalid(String),
        Conflict(Box<Current>),
    }

    impl From<EntryOutcome> for super::EntryOutcome {
        fn from(o: EntryOutcome) -> Self {
            match o {
                EntryOutcome::Applied { seq } => Self::Applied { seq },
                EntryOutcome::Duplicate => Self::Duplicate,
                EntryOutcome::Rejected(e) => Self::Rejected(e.into()),
                EntryOutcome::Skipped => Self::Skipped,
            }
        }
    }

    impl From<RemoteError> for super::RemoteError {
        fn from(e: RemoteError) -> Self {
            match e {
                RemoteError::AlreadyBorrowed { holder } => {
                    Self::AlreadyBorrowed { holder, name: None }
                }
                RemoteError::NotBorrowed => Self::NotBorrowed,
                RemoteError::Released => Self::Released,
                RemoteError::OutsideRange { id } => Self::OutsideRange { id },
                RemoteError::NotAllowed { tree } => Self::NotAllowed { tree },
                RemoteError::NotFound => Self::NotFound,
                RemoteError::Invalid(text) => Self::Invalid(text),
                RemoteError::Conflict(c) => Self::Conflict(c),
            }
        }
    }
}

/// Room a [`FrameReader`] keeps beyond the bytes it holds after a frame was taken (more is
/// given back).
const SPARE_ROOM: usize = 1 << 20;

/// Reassembles frames from a byte stream delivered in arbitrary chunks.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the stream. The buffer grows as bytes arrive (never
    /// to an announced length before its bytes came), and never past the end of the frame
    /// in transit: a frame takes at most its own length in memory, not twice it.
    pub fn push(&mut self, bytes: &[u8]) {
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            let frame_end = self
                .buf
                .first_chunk::<4>()
                .map(|b| u32::from_le_bytes(*b))
                .filter(|len| *len <= MAX_FRAME)
                // `len <= MAX_FRAME` fits in usize (see `next_frame`).
                .map_or(needed, |len| 4 + len as usize);
            let target = needed.max((self.buf.capacity() * 2).min(frame_end));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable (the peer broke the protocol): close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(len) = self.buf.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(WireError::FrameTooLarge { len });
        }
        // `len <= MAX_FRAME` (16 MiB) fits in usize on every supported target (>= 32 bits).
        let end = 4 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let frame = decode(&self.buf[4..end]);
        self.buf.drain(..end);
        // A big frame's room is not kept for the small ones after it.
        if self.buf.capacity() > SPARE_ROOM && self.buf.len() < self.buf.capacity() / 4 {
            self.buf.shrink_to(self.buf.len().max(SPARE_ROOM / 16));
        }
        frame.map(Some)
    }

    /// The length the frame in transit announced (once its first 4 bytes arrived).
    pub fn announced(&self) -> Option<u32> {
        self.buf.first_chunk::<4>().map(|b| u32::from_le_bytes(*b))
    }

    /// Bytes buffered but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes every byte buffered and not yet taken as a frame: a reader used as the buffer
    /// of a relay that forwards bytes as they arrive (a sync engine's driver).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Where the server history a client synced with (`mine`, its lineage) and the server's
/// (`theirs`) part: `None` if they are the same (or either is unknown), else the last
/// sequence number both share. Each lineage lists `(history id, base)` oldest first, every
/// history sharing the one before it up to `base`. The server computes it with its whole
/// lineage ([`ServerHello::common`]), so a client away for many server starts still finds
/// where it stands.
pub fn diverged(mine: &[(u64, u64)], theirs: &[(u64, u64)]) -> Option<u64> {
    let (Some(a), Some(b)) = (mine.last(), theirs.last()) else {
        return None;
    };
    if a.0 == b.0 {
        return None;
    }
    // The newest history both know; past it, each side's later branch points bound what
    // they share.
    for (j, m) in mine.iter().enumerate().rev() {
        if let Some(k) = theirs.iter().position(|t| t.0 == m.0) {
            let after = |l: &[(u64, u64)]| l.iter().map(|e| e.1).min();
            let bound = [
                after(mine.get(j + 1..).unwrap_or_default()),
                after(theirs.get(k + 1..).unwrap_or_default()),
            ];
            return Some(bound.into_iter().flatten().min().unwrap_or(0));
        }
    }
    Some(0)
}
