//! The data directory belongs to the server's user alone.
//!
//! It holds the private key, the database (every tree, whatever tokens allow) and the admin
//! socket, so on Unix:
//!
//! - it is created with mode 0700;
//! - the server refuses to use a directory that another user owns, or that the group or
//!   others may write to (they could swap the key, the certificate or the database), a
//!   symbolic link, or one inside a directory every user may rename things in, and says
//!   how to fix it;
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
        let io = |path: &Path, e: std::io::Error| ServerError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        // Not a link: whoever controls a link chooses which directory the server reads
        // its key and database from, and can switch it between the check and the open.
        let own = std::fs::symlink_metadata(dir).map_err(|e| io(dir, e))?;
        if own.file_type().is_symlink() {
            return Err(ServerError::UnsafeDataDir(format!(
                "{} is a symbolic link; give the server the directory itself (`--data {}`)",
                dir.display(),
                std::fs::canonicalize(dir)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "the real path".into())
            )));
        }
        // Nor inside a directory every user may rename things in (a world-writable one
        // without the sticky bit, such as /tmp has): it could be swapped as a whole.
        let real = std::fs::canonicalize(dir).map_err(|e| io(dir, e))?;
        for ancestor in real.ancestors().skip(1) {
            let m = std::fs::metadata(ancestor).map_err(|e| io(ancestor, e))?;
            if m.mode() & 0o002 != 0 && m.mode() & 0o1000 == 0 {
                return Err(ServerError::UnsafeDataDir(format!(
                    "{} is inside {}, which every user may change (mode {:03o}, no sticky \
                     bit); move the data directory, or `chmod o-w {}`",
                    dir.display(),
                    ancestor.display(),
                    m.mode() & 0o777,
                    ancestor.display()
                )));
            }
        }
        let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
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
