//! The allocators' high-water marks beside the database (`allocated` in the data
//! directory): the end of every id range and the holder number past every one this data
//! directory's server ever handed out, whichever database file it ran on.
//!
//! A restored backup cannot know what the server granted after the copy was taken; the
//! gaps of `open_history` guess (an opening moves the allocators far past the file's own
//! counters). A guess fails when the server handed out more than a gap between the copy and
//! the restore: many starts of the server (each moves the allocators by a start's gap), or
//! the same backup restored twice (both restores move from the same counters by the same
//! gap, and the second grants again what the first granted). The marks outlive the
//! database file (a restore puts back `server.redb` only), so an opening starts past them.
//! Each is raised, durably, before the transaction that hands out past it commits.
//!
//! A restore into another data directory (or of the whole directory, marks included) has
//! only the gaps, as before.

use std::io::Write as _;

use super::*;

/// The marks' file in the data directory.
pub(super) const FILE: &str = "allocated";

/// The high-water marks: nothing at or past them was handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Marks {
    /// The end (exclusive) of every id range granted.
    pub ids: u64,
    /// Past every holder number assigned.
    pub holders: u64,
}

impl Marks {
    /// Reads the marks of `dir` (none yet: zeros).
    pub fn load(dir: &Path) -> Result<Marks, ServerError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Marks::default()),
            Err(source) => return Err(ServerError::Io { path, source }),
        };
        let damaged = || {
            ServerError::Database(format!(
                "{} is damaged (expected the lines `ids N` and `holders N`): it says past which \
                 id and holder number nothing was handed out. Put back a good copy; removing it \
                 is safe only if this server's database was not restored from a backup since \
                 that backup was taken",
                path.display()
            ))
        };
        let mut marks = Marks::default();
        let mut seen = (false, false);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once(' ').ok_or_else(damaged)?;
            let value: u64 = value.trim().parse().map_err(|_| damaged())?;
            match key {
                "ids" => (marks.ids, seen.0) = (value, true),
                "holders" => (marks.holders, seen.1) = (value, true),
                _ => return Err(damaged()),
            }
        }
        if seen != (true, true) {
            return Err(damaged());
        }
        Ok(marks)
    }

    /// Stores the marks in `dir` durably: a new file (owner-only) synced, renamed over
    /// the old one, and the directory synced.
    pub fn store(&self, dir: &Path) -> Result<(), ServerError> {
        let path = dir.join(FILE);
        let temporary = dir.join(format!("{FILE}.new"));
        let io = |path: &Path, source: std::io::Error| ServerError::Io {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(&temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(|e| io(&temporary, e))?;
        file.write_all(format!("ids {}\nholders {}\n", self.ids, self.holders).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&temporary, e))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(|e| io(&path, e))?;
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
        Ok(())
    }
}

impl Store {
    /// Raises the marks to at least `ids` and `holders` (durably) before a transaction
    /// hands out below them. Callers hold the database's write transaction, so raises do
    /// not race.
    pub(super) fn raise_marks(&self, ids: u64, holders: u64) -> Result<(), ServerError> {
        let mut marks = match self.marks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if marks.ids >= ids && marks.holders >= holders {
            return Ok(());
        }
        let raised = Marks {
            ids: marks.ids.max(ids),
            holders: marks.holders.max(holders),
        };
        raised.store(&self.dir)?;
        *marks = raised;
        Ok(())
    }
}
