//! The server's histories: one per opening of the database (table `history`), the lineage
//! told to clients, and the id ranges a client of a lost history takes back after a restore.

use super::*;

/// Starts a new history (see [`HISTORY`]) each time the database is opened: its base is
/// the head now, and the id allocator and holder numbers move past anything an earlier
/// history can have handed out after this state. A database file put back from a copy
/// (restored) therefore never continues the history its copy was taken from: clients
/// that synced with that history after the copy see a history that parted from theirs at
/// the copy's head. Opened for the first time after [`Store::backup`] wrote it, the gaps
/// are wider ([`RESTORE_ID_GAP`], [`RESTORE_HOLDER_GAP`]); other openings use
/// [`START_ID_GAP`] and [`START_HOLDER_GAP`] (a file copied by other means and restored is
/// safe while fewer ids and clients were handed out between copy and restore).
/// The allocators also start past `marks`, the data directory's high-water marks (see
/// `allocated`): what this directory's server handed out on any file, which a restored
/// copy cannot know.
pub(super) fn open_history(
    txn: &redb::WriteTransaction,
    path: &Path,
    marks: super::allocated::Marks,
) -> Result<(), ServerError> {
    let mut history = txn.open_table(HISTORY)?;
    let mut meta = txn.open_table(META)?;
    let restored = meta.remove(RESTORE_PENDING)?.is_some();
    let last = history.last()?.map(|(k, _)| k.value());
    let head = head_of(&txn.open_table(LOG)?)?;
    // Never 0 (0 means "none" to clients).
    let id = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
    let position = last.map_or(0, |l| l + 1);
    history.insert(position, (id, if last.is_some() { head } else { 0 }))?;
    let (id_gap, holder_gap) = if restored {
        (RESTORE_ID_GAP, RESTORE_HOLDER_GAP)
    } else {
        (START_ID_GAP, START_HOLDER_GAP)
    };
    let next_id = meta.get("next_id")?.map(|g| g.value());
    if next_id.is_some() || marks.ids > 0 {
        let from = next_id.unwrap_or(FIRST_ID);
        let end = from.max(marks.ids).saturating_add(id_gap);
        meta.insert("next_id", end)?;
        txn.open_table(LOST_IDS)?.insert(from, end)?;
    }
    let next_holder = meta.get("next_holder")?.map(|g| g.value());
    if next_holder.is_some() || marks.holders > 0 {
        let from = next_holder.unwrap_or(u64::from(FIRST_HOLDER));
        meta.insert(
            "next_holder",
            from.max(marks.holders)
                .saturating_add(holder_gap)
                .min(u64::from(u32::MAX)),
        )?;
    }
    if restored {
        tracing::warn!(
            file = %path.display(),
            head,
            "opened a restored backup: a new history starts after sequence number {head}; \
             clients of the lost history reconcile when they connect"
        );
    }
    Ok(())
}

impl Store {
    /// The lineage of this server's history, oldest first, at most the newest
    /// [`HISTORY_SENT`] entries: `(history id, base)`, where each history shares the
    /// changes of the one before it up to sequence number `base`. A restore of a backup
    /// appends an entry (based at the backup's head), so a client that synced with a
    /// history this one does not descend from knows exactly which of its changes the
    /// server lost.
    pub fn history(&self) -> Result<Vec<(u64, u64)>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let mut out: Vec<(u64, u64)> = table
            .iter()?
            .rev()
            .take(HISTORY_SENT)
            .map(|e| e.map(|(_, v)| v.value()))
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Where `client`'s lineage (as it last heard it) parts from this server's whole
    /// lineage: the last sequence number both share (`None`: the same history, or the
    /// client has none). See [`rekord::proto::diverged`].
    pub fn common_with(&self, client: &[(u64, u64)]) -> Result<Option<u64>, ServerError> {
        if client.is_empty() {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let all: Vec<(u64, u64)> = table
            .iter()?
            .map(|e| e.map(|(_, v)| v.value()))
            .collect::<Result<_, _>>()?;
        Ok(rekord::proto::diverged(client, &all))
    }

    /// Registers id ranges a client of a lost history held (granted after the backup this
    /// server was restored from) as client `holder`'s again, so its records created with
    /// them are accepted. A range is refused (returned) if it is not one this server can
    /// have granted before (ids from [`FIRST_ID`] below the allocator) or overlaps a range
    /// another client holds; the client then stops using it.
    pub fn reclaim(
        &self,
        holder: u32,
        wanted: &[(u64, u64)],
    ) -> Result<Vec<(u64, u64)>, ServerError> {
        let txn = self.db.begin_write()?;
        let mut refused = Vec::new();
        {
            let next_id = txn
                .open_table(META)?
                .get("next_id")?
                .map_or(FIRST_ID, |g| g.value());
            let mut ranges = txn.open_table(RANGES)?;
            let lost = txn.open_table(LOST_IDS)?;
            for &(start, end) in wanted {
                // A range this history granted the client already: nothing to do.
                let mut known = false;
                for row in ranges.iter()? {
                    let (k, e) = row?;
                    let ((h, s), e) = (k.value(), e.value());
                    if h == holder && s <= start && end <= e {
                        known = true;
                        break;
                    }
                }
                if known {
                    continue;
                }
                // Only ranges a lost history may have granted (ranges of this history are
                // registered already), of a size one grant can have.
                let in_lost = match lost.range(..=start)?.next_back() {
                    Some(entry) => end <= entry?.1.value(),
                    None => false,
                };
                if start < FIRST_ID
                    || end <= start
                    || end > next_id
                    || end - start > MAX_RANGE
                    || !in_lost
                {
                    refused.push((start, end));
                    continue;
                }
                let mut overlaps = false;
                let mut own = false;
                for row in ranges.iter()? {
                    let (k, e) = row?;
                    let ((h, s), e) = (k.value(), e.value());
                    if s < end && start < e {
                        if h == holder && s <= start && end <= e {
                            own = true;
                        } else if h != holder {
                            overlaps = true;
                        }
                    }
                }
                if overlaps {
                    refused.push((start, end));
                } else if !own {
                    ranges.insert((holder, start), end)?;
                }
            }
        }
        txn.commit()?;
        Ok(refused)
    }
}
