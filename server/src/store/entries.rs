//! Outbox entries: consecutive numbered entries of a client applied in order, each outcome
//! remembered (table `outcomes`) with a digest of its changes (`entry_digests`), so a retry
//! gets the same answer and a copy of a replica's file is told apart.

use super::*;

/// A digest of an outbox entry's changes, the same for every send of the entry: the base
/// of an optimistic edit is left out (a replica moves it back after a server restore, and
/// sends the entry again under its number).
fn entry_digest(changes: &[Change]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for c in changes {
        h.update(c.tree.as_bytes());
        h.update(&[0]);
        h.update(&c.id.to_le_bytes());
        h.update(&c.rev.to_le_bytes());
        match &c.kind {
            ChangeKind::Edit {
                hlc, version, data, ..
            } => {
                h.update(&[1]);
                h.update(&hlc.to_le_bytes());
                h.update(&version.to_le_bytes());
                h.update(&(data.len() as u64).to_le_bytes());
                h.update(data);
            }
            ChangeKind::Put { version, data } => {
                h.update(&[2]);
                h.update(&version.to_le_bytes());
                h.update(&(data.len() as u64).to_le_bytes());
                h.update(data);
            }
            ChangeKind::Remove => h.update(&[3]),
            ChangeKind::Release => h.update(&[4]),
            ChangeKind::SetState(s) => {
                h.update(&[5]);
                h.update(&s.to_le_bytes());
            }
            ChangeKind::Borrow { holder } => {
                h.update(&[6]);
                h.update(&holder.to_le_bytes());
            }
        }
    }
    h.finalize()
}

/// Why entry `n` of a client is refused: another copy of its file sent an entry under
/// that number.
fn copied_entry(n: u64) -> String {
    format!(
        "outbox entry {n} of this replica is not the one the server received under that \
         number: another copy of this replica's file (or a newer state of it, if this one was \
         restored from a backup) sent its own changes with the same numbers. This change is \
         refused and undone here; use one file per replica (a viewer or a second process \
         needs a new file of its own, never a copy)"
    )
}

fn encode_outcome(o: &EntryOutcome) -> Result<Vec<u8>, ServerError> {
    rekord::proto::encode_outcome(o)
        .map_err(|e| ServerError::Database(format!("cannot encode an entry outcome: {e}")))
}

fn decode_outcome(bytes: &[u8]) -> Result<EntryOutcome, ServerError> {
    rekord::proto::decode_outcome(bytes)
        .map_err(|e| ServerError::Database(format!("a stored entry outcome is corrupt: {e}")))
}

/// Keeps an answer within one frame: each conflict carries the record's current data (and
/// its base), at most [`rekord::proto::MAX_RECORD`] bytes each; after the first one, a
/// conflict that would take the answer's conflict data past that much again is answered
/// [`EntryOutcome::Skipped`] instead (the client sends it again after merging the others,
/// and hears of its conflict then). Without this, a run of small entries could provoke an
/// answer too large to send, and the client would retry it for ever.
fn fit_answer(outcomes: &mut [EntryOutcome]) {
    let mut bytes = 0usize;
    let mut first = true;
    for o in outcomes.iter_mut() {
        let EntryOutcome::Rejected(RemoteError::Conflict(c)) = o else {
            continue;
        };
        let size = c.data.len() + c.base.as_ref().map_or(0, |(_, d)| d.len());
        if !first && bytes + size > rekord::proto::MAX_RECORD {
            *o = EntryOutcome::Skipped;
            continue;
        }
        first = false;
        bytes += size;
    }
}

/// Outcomes of the entries after a conflicting one: [`RemoteError::Conflict`] for those
/// whose optimistic edits conflict in the current state, [`EntryOutcome::Skipped`] for the
/// others (nothing is applied).
fn look_ahead(
    txn: &redb::WriteTransaction,
    holder: u32,
    batch: &[Vec<Change>],
    parsed: &mut Parsed,
) -> Result<Vec<EntryOutcome>, ServerError> {
    let log = txn.open_table(LOG)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut borrows = txn.open_table(BORROWS)?;
    let schemas = txn.open_table(SCHEMAS)?;
    let ranges = txn.open_table(RANGES)?;
    let holder_tokens = txn.open_table(HOLDER_TOKENS)?;
    let lost_ids = txn.open_table(LOST_IDS)?;
    let tables = Tables {
        log: &log,
        records: &mut records,
        borrows: &mut borrows,
        schemas: &schemas,
        ranges: &ranges,
        holder_tokens: &holder_tokens,
        parsed,
        lost_ids: &lost_ids,
    };
    batch
        .iter()
        .map(|changes| {
            Ok(match tables.first_conflict(holder, changes)? {
                Some(e) => EntryOutcome::Rejected(e),
                None => EntryOutcome::Skipped,
            })
        })
        .collect()
}

/// Rewrites the values of the `outcomes` table in the current layout if they are in the
/// layout of protocol version 1 (a server database written before version 2), and records
/// the layout in `meta`.
pub(super) fn migrate_outcomes(txn: &redb::WriteTransaction) -> Result<(), ServerError> {
    let mut meta = txn.open_table(META)?;
    if meta.get("outcomes_format")?.map(|g| g.value()) == Some(OUTCOMES_FORMAT) {
        return Ok(());
    }
    let mut outcomes = txn.open_table(OUTCOMES)?;
    let mut rows = Vec::new();
    for row in outcomes.iter()? {
        let (k, v) = row?;
        let old = rekord::proto::decode_outcome_v1(v.value()).map_err(|e| {
            ServerError::Database(format!(
                "a stored entry outcome (protocol version 1) is corrupt: {e}"
            ))
        })?;
        rows.push((k.value(), encode_outcome(&old)?));
    }
    for (k, v) in rows {
        outcomes.insert(k, v.as_slice())?;
    }
    meta.insert("outcomes_format", OUTCOMES_FORMAT)?;
    Ok(())
}

impl Store {
    /// The last outbox entry number of client `holder` this server processed (0: none).
    pub fn last_entry(&self, holder: u32) -> Result<u64, ServerError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(ENTRIES) {
            Ok(t) => Ok(t.get(holder)?.map_or(0, |v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies consecutive outbox entries `first, first + 1, ...` of client `holder`, each
    /// all or nothing, in one durable transaction. The server remembers the last entry
    /// number processed per client, and the outcome of each entry the client has not
    /// settled yet: a retry of an entry up to it applies nothing and gets the first answer
    /// again (or [`EntryOutcome::Duplicate`] once forgotten); a refused entry is answered
    /// [`EntryOutcome::Rejected`] and counts as processed (its number is never applied
    /// later), except for a [`RemoteError::Conflict`], after which the client sends the
    /// entry again, merged, under the same number; entries after a refused one are not processed by this call (they are missing
    /// from the answer; the client sends them again). Returns the outcomes, in entry order,
    /// and the accepted changes, in sequence order.
    pub fn apply_entries(
        &self,
        holder: u32,
        grant: &Grant,
        first: u64,
        batch: &[Vec<Change>],
    ) -> Result<(Vec<EntryOutcome>, Vec<Sequenced>), ServerError> {
        let mut limit = batch.len();
        let mut parsed = self.parsed();
        // The refusal of entry `limit`, found by an earlier round.
        let mut refusal: Option<RemoteError> = None;
        loop {
            let txn = self.begin_logged()?;
            let last = txn
                .open_table(ENTRIES)?
                .get(holder)?
                .map_or(0, |v| v.value());
            let mut seq = head_of(&txn.open_table(LOG)?)?;
            let mut answered = txn.open_table(OUTCOMES)?;
            let mut digests = txn.open_table(DIGESTS)?;
            let mut settled = txn.open_table(SETTLED)?;
            let floor = settled.get(holder)?.map_or(0, |v| v.value());
            // The client settled every entry before `first`.
            if first > floor {
                answered.retain_in((holder, 0)..(holder, first), |_, _| false)?;
                digests.retain_in((holder, 0)..(holder, first), |_, _| false)?;
                settled.insert(holder, first)?;
            }
            drop(settled);
            let mut entries = Vec::new();
            let mut created = Vec::new();
            let mut outcomes = Vec::with_capacity(limit + 1);
            let mut processed = last;
            let mut failed = None;
            for (i, changes) in batch.iter().take(limit).enumerate() {
                let n = first.saturating_add(i as u64);
                if n <= last {
                    // Entries the client settled, or that it numbered other than the entry
                    // answered under that number: another copy of its file sent those.
                    let copied = n < floor
                        || digests
                            .get((holder, n))?
                            .is_some_and(|d| d.value() != entry_digest(changes));
                    outcomes.push(if copied {
                        EntryOutcome::Rejected(RemoteError::Invalid(copied_entry(n)))
                    } else {
                        match answered.get((holder, n))? {
                            Some(o) => decode_outcome(o.value())?,
                            None => EntryOutcome::Duplicate,
                        }
                    });
                    continue;
                }
                match apply_in(
                    &txn,
                    holder,
                    grant,
                    changes.clone(),
                    &mut seq,
                    &mut entries,
                    &mut created,
                    &mut parsed,
                )? {
                    Ok(()) => {
                        let outcome = EntryOutcome::Applied { seq };
                        answered.insert((holder, n), encode_outcome(&outcome)?.as_slice())?;
                        digests.insert((holder, n), entry_digest(changes))?;
                        outcomes.push(outcome);
                        processed = n;
                    }
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, e)) = failed {
                // The refused entry may have written part of its changes: start over
                // without it (`limit` shrinks every round, so this ends).
                drop((answered, digests));
                txn.abort()?;
                limit = i;
                refusal = Some(e);
                continue;
            }
            if let Some(e) = refusal {
                let n = first.saturating_add(limit as u64);
                if n > last {
                    // A conflict leaves the entry unprocessed: the client merges and sends
                    // it again, under the same number.
                    let conflict = matches!(e, RemoteError::Conflict(_));
                    let outcome = EntryOutcome::Rejected(e);
                    if !conflict {
                        answered.insert((holder, n), encode_outcome(&outcome)?.as_slice())?;
                        if let Some(changes) = batch.get(limit) {
                            digests.insert((holder, n), entry_digest(changes))?;
                        }
                        processed = n;
                    }
                    outcomes.push(outcome);
                    if conflict {
                        // Look ahead: the later entries' conflicts (which no change of this
                        // client can resolve) are reported now, so the client merges them
                        // all before it sends again; the others are skipped.
                        drop(answered);
                        let rest = batch.get(limit + 1..).unwrap_or_default();
                        outcomes.extend(look_ahead(&txn, holder, rest, &mut parsed)?);
                        fit_answer(&mut outcomes);
                        answered = txn.open_table(OUTCOMES)?;
                    }
                } else {
                    outcomes.push(match answered.get((holder, n))? {
                        Some(o) => decode_outcome(o.value())?,
                        None => EntryOutcome::Duplicate,
                    });
                }
            }
            drop((answered, digests));
            txn.open_table(ENTRIES)?.insert(holder, processed)?;
            txn.commit()?;
            return Ok((outcomes, entries));
        }
    }
}
