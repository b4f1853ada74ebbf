//! The data directory belongs to the server's user alone.
//!
//! It holds the private key, the database (every tree, whatever tokens allow) and the admin
//! socket, so on Unix:
//!
//! - it is created with mode 0700;
//! - the server refuses to use a directory that another user owns, or that the group or
//!   others may write to (they could swap the key, the certificate or the database), and
//!   says how to fix it;
//! - every file holding records or secrets (`server.redb`, `key.der`, backups) is 0600,
//!   whatever the umask, and temporary files are created exclusively.

use std::path::Path;

use crate::ServerError;

/// Creates `dir` (mode 0700 on Unix) if it does not exist, and checks that only this user
/// can change what is in it.
pub fn prepare(dir: &Path) -> Result<(), ServerError> {
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| ServerError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    check(dir)
}

/// Checks that `dir` is owned by this user and not writable by anyone else (Unix; other
/// platforms rely on the directory's ACLs).
pub fn check(dir: &Path) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir).map_err(|e| ServerError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(ServerError::UnsafeDataDir(format!(
                "{} is owned by user {}, not by this server's user {me}; another user could \
                 replace its key or database. Run the server as its owner, or give it a \
                 directory of its own (`chown` it to user {me}, or choose another `--data`)",
                dir.display(),
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(ServerError::UnsafeDataDir(format!(
                "{} may be written by {} (mode {mode:03o}); another user could replace its \
                 key or database. Fix it with `chmod 700 {}`",
                dir.display(),
                if mode & 0o002 != 0 {
                    "every user"
                } else {
                    "its group"
                },
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Makes `path` readable and writable by its owner only (Unix).
pub fn owner_only(path: &Path) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            ServerError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        })?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
