//! The server's identity: its UUID, key pair and self-signed certificate, created on first
//! start and reused afterwards.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::ServerError;

/// File holding the server UUID (text, hyphenated).
pub const UUID_FILE: &str = "server.uuid";
/// File holding the certificate (DER).
pub const CERT_FILE: &str = "cert.der";
/// File holding the private key (PKCS#8 DER; readable by the owner only on Unix).
pub const KEY_FILE: &str = "key.der";

/// The server's identity as loaded from (or created in) the data directory.
#[derive(Clone)]
pub struct Identity {
    /// The server UUID.
    pub uuid: uuid::Uuid,
    /// The self-signed certificate (DER).
    pub cert_der: Vec<u8>,
    /// The private key (PKCS#8 DER).
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("uuid", &self.uuid)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The certificate's SHA-256 fingerprint (what clients pin).
    pub fn fingerprint(&self) -> String {
        rekord::net::fingerprint(&self.cert_der)
    }

    /// Loads the identity from `dir`, creating it (and `dir`) if none exists yet. A partial
    /// identity (some files missing) is an error rather than silently replaced: clients
    /// pinned the old one.
    pub fn load_or_create(dir: &Path) -> Result<Self, ServerError> {
        crate::datadir::prepare(dir)?;
        if let Some(identity) = Self::load(dir)? {
            return Ok(identity);
        }
        let certified = rcgen::generate_simple_self_signed(vec![rekord::net::SERVER_NAME.into()])
            .map_err(|e| {
            ServerError::Identity(format!("cannot create the certificate: {e}"))
        })?;
        let identity = Identity {
            uuid: uuid::Uuid::new_v4(),
            cert_der: certified.cert.der().to_vec(),
            key_der: certified.signing_key.serialize_der(),
        };
        write_file(&dir.join(KEY_FILE), &identity.key_der, true)?;
        write_file(&dir.join(CERT_FILE), &identity.cert_der, false)?;
        // The UUID comes last: its presence marks a complete identity.
        write_file(
            &dir.join(UUID_FILE),
            format!("{}\n", identity.uuid.hyphenated()).as_bytes(),
            false,
        )?;
        tracing::info!(uuid = %identity.uuid, fingerprint = %identity.fingerprint(), "created the server identity");
        Ok(identity)
    }

    /// Loads the identity from `dir`; `Ok(None)` if none was created there yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, ServerError> {
        let paths = [UUID_FILE, CERT_FILE, KEY_FILE].map(|f| dir.join(f));
        let present = paths.iter().filter(|p| p.exists()).count();
        if present == 0 {
            return Ok(None);
        }
        if present < paths.len() {
            return Err(ServerError::Identity(format!(
                "the identity in {} is incomplete (expected {UUID_FILE}, {CERT_FILE} and {KEY_FILE}); restore it from a backup, or remove all three to create a new identity that clients will refuse until they forget their pin",
                dir.display()
            )));
        }
        let [uuid_path, cert_path, key_path] = paths;
        let text = fs::read_to_string(&uuid_path).map_err(|e| io_error(&uuid_path, e))?;
        let uuid = uuid::Uuid::parse_str(text.trim()).map_err(|e| {
            ServerError::Identity(format!("{} is not a UUID: {e}", uuid_path.display()))
        })?;
        let cert_der = fs::read(&cert_path).map_err(|e| io_error(&cert_path, e))?;
        // The key is the owner's alone, whatever an older version or a copy left.
        crate::datadir::owner_only(&key_path)?;
        let key_der = fs::read(&key_path).map_err(|e| io_error(&key_path, e))?;
        Ok(Some(Identity {
            uuid,
            cert_der,
            key_der,
        }))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename. The temporary file
/// is created exclusively (a file or link another user planted under its name is never
/// written through): one left by a crash is removed first, one that cannot be is an error.
pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), ServerError> {
    let tmp: PathBuf = path.with_extension("tmp");
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_file(&tmp).map_err(|e| io_error(&tmp, e))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}
