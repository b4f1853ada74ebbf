//! Changes: checked against the schemas, the borrows and the records' state, applied
//! all-or-nothing under gap-free sequence numbers and logged (tables `log`, `records`, `ops`).

use super::*;

/// What [`Store::apply_changes`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The batch was applied (durably) under these sequence numbers.
    Accepted {
        /// The sequence number of the batch's last change (the head for an empty batch).
        seq: u64,
        /// The accepted changes, in sequence order.
        entries: Vec<Sequenced>,
        /// Records created by the batch, whose borrow the client now holds: `(tree, id)`.
        borrows: Vec<(String, u64)>,
    },
    /// The operation was accepted before; nothing was applied again.
    Retried {
        /// The sequence number answered the first time.
        seq: u64,
    },
    /// The batch was refused (nothing applied) for this reason.
    Rejected(RemoteError),
}

pub(super) fn wire_error(e: rekord::proto::WireError) -> ServerError {
    ServerError::Database(format!("a stored log entry is corrupt: {e}"))
}

/// The last sequence number in the log (0: empty).
pub(super) fn head_of(
    log: &impl redb::ReadableTable<u64, &'static [u8]>,
) -> Result<u64, ServerError> {
    Ok(log.last()?.map_or(0, |(k, _)| k.value()))
}

/// Stored schemas parsed, by (tree, version) (parsing RON costs more than checking a
/// record): [`Store`]'s cache.
pub(super) type Parsed = std::collections::HashMap<(String, u32), rekord::Schema>;

/// Checks and applies `changes` in `txn`, logging each under the next sequence number
/// (`seq` is the last one used); the outer error is a storage failure, the inner one the
/// first refusal (after which `txn` holds partial writes and must be aborted).
// The accumulators are the caller's state across the entries of one request.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_in(
    txn: &redb::WriteTransaction,
    holder: u32,
    grant: &Grant,
    changes: Vec<Change>,
    seq: &mut u64,
    entries: &mut Vec<Sequenced>,
    created: &mut Vec<(String, u64)>,
    parsed: &mut Parsed,
) -> Result<Result<(), RemoteError>, ServerError> {
    let mut log = txn.open_table(LOG)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut borrows = txn.open_table(BORROWS)?;
    let schemas = txn.open_table(SCHEMAS)?;
    let ranges = txn.open_table(RANGES)?;
    let holder_tokens = txn.open_table(HOLDER_TOKENS)?;
    let lost_ids = txn.open_table(LOST_IDS)?;
    for change in changes {
        let mut tables = Tables {
            log: &log,
            records: &mut records,
            borrows: &mut borrows,
            schemas: &schemas,
            ranges: &ranges,
            holder_tokens: &holder_tokens,
            parsed,
            lost_ids: &lost_ids,
        };
        match tables.apply(holder, grant, &change, *seq + 1)? {
            Ok(effect) => {
                let change = match effect {
                    Effect::Nothing => continue,
                    Effect::Born => {
                        created.push((change.tree.clone(), change.id));
                        change
                    }
                    // A return is logged like the server's own borrow changes (revision 0).
                    Effect::Logged if matches!(change.kind, ChangeKind::Borrow { .. }) => {
                        Change { rev: 0, ..change }
                    }
                    Effect::Logged => change,
                };
                *seq += 1;
                let entry = Sequenced {
                    seq: *seq,
                    origin: holder,
                    change,
                };
                let bytes = rekord::proto::encode_sequenced(&entry).map_err(wire_error)?;
                log.insert(*seq, bytes.as_slice())?;
                entries.push(entry);
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(()))
}

/// What applying one accepted change did.
enum Effect {
    /// Changed and logged.
    Logged,
    /// Created a record whose borrow the client now holds (logged).
    Born,
    /// Nothing to change (a return of a record the client no longer holds): not logged.
    Nothing,
}

/// The tables one change is checked against and applied to.
pub(super) struct Tables<'a, 't> {
    pub(super) log: &'a redb::Table<'t, u64, &'static [u8]>,
    pub(super) records: &'a mut redb::Table<'t, (&'static str, u64, u32), &'static [u8]>,
    pub(super) borrows: &'a mut redb::Table<'t, (&'static str, u64), u32>,
    pub(super) schemas: &'a redb::Table<'t, (&'static str, u32), &'static str>,
    pub(super) ranges: &'a redb::Table<'t, (u32, u64), u64>,
    pub(super) holder_tokens: &'a redb::Table<'t, u32, &'static str>,
    pub(super) parsed: &'a mut std::collections::HashMap<(String, u32), rekord::Schema>,
    pub(super) lost_ids: &'a redb::Table<'t, u64, u64>,
}

impl Tables<'_, '_> {
    /// The refusal of a change to a record client `holder` has borrowed, naming its token.
    fn held_by(&self, holder: u32) -> Result<RemoteError, ServerError> {
        let name = self
            .holder_tokens
            .get(holder)?
            .map(|g| g.value().to_owned());
        Ok(RemoteError::AlreadyBorrowed { holder, name })
    }

    fn state(&self, tree: &str, id: u64, rev: u32) -> Result<Option<RecordState>, ServerError> {
        self.records
            .get((tree, id, rev))?
            .map(|g| RecordState::decode(g.value()))
            .transpose()
    }

    fn known_id(&self, tree: &str, id: u64) -> Result<bool, ServerError> {
        Ok(self
            .records
            .range((tree, id, 0)..=(tree, id, u32::MAX))?
            .next()
            .is_some())
    }

    /// Whether `id` is one some client may have made a record with: granted to any client,
    /// or where an earlier history of this server may have granted ids this one does not
    /// know of (`lost_ids`). A record with such an id, re-made by the replica that holds
    /// its borrow (reconciling after a restore: the record's creator may not be back yet),
    /// is accepted whoever's range it came from.
    fn lost_id(&self, id: u64) -> Result<bool, ServerError> {
        if let Some(entry) = self.lost_ids.range(..=id)?.next_back()
            && id < entry?.1.value()
        {
            return Ok(true);
        }
        // Or in another client's range: that client made it in the lost history, and the
        // replica re-making it borrowed it from that client later.
        for row in self.ranges.iter()? {
            let (k, end) = row?;
            let (_, start) = k.value();
            if start <= id && id < end.value() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn owns(&self, holder: u32, id: u64) -> Result<bool, ServerError> {
        match self.ranges.range((holder, 0)..=(holder, id))?.next_back() {
            Some(entry) => Ok(id < entry?.1.value()),
            None => Ok(false),
        }
    }

    /// Checks `data` against the stored schema `(tree, version)`.
    fn check_data(
        &mut self,
        tree: &str,
        version: u32,
        data: &[u8],
    ) -> Result<Result<(), RemoteError>, ServerError> {
        let key = (tree.to_owned(), version);
        if !self.parsed.contains_key(&key) {
            let Some(text) = self
                .schemas
                .get((tree, version))?
                .map(|g| g.value().to_owned())
            else {
                return Ok(Err(RemoteError::Invalid(format!(
                    "the server has no schema for tree `{tree}` version {version}; \
                     upload the schema first"
                ))));
            };
            let schema = rekord::Schema::from_ron(&text).map_err(|e| {
                ServerError::Database(format!(
                    "the stored schema of tree `{tree}` version {version} is corrupt: {e}"
                ))
            })?;
            self.parsed.insert(key.clone(), schema);
        }
        let Some(schema) = self.parsed.get(&key) else {
            return Err(ServerError::Database("a parsed schema went missing".into()));
        };
        Ok(rekord::schema::dynamic::decode(schema, data)
            .map(|_| ())
            .map_err(|e| {
                RemoteError::Invalid(format!(
                    "the data of a record of tree `{tree}` does not match schema version \
                     {version}: {e}"
                ))
            }))
    }

    /// The data revision `rev` of record `id` of `tree` had as of sequence number `seq` (the
    /// base of a three-way merge): the last data change of it logged at or before `seq`,
    /// looked for among at most [`BASE_LOOKBACK`] log entries (`None` when not found, or
    /// when the record's last change before `seq` was not a data change).
    fn logged_data(
        &self,
        seq: u64,
        tree: &str,
        id: u64,
        rev: u32,
    ) -> Result<Option<(u32, Vec<u8>)>, ServerError> {
        if seq == 0 {
            return Ok(None);
        }
        for row in self.log.range(..=seq)?.rev().take(BASE_LOOKBACK) {
            let (_, bytes) = row?;
            let entry = rekord::proto::decode_sequenced(bytes.value()).map_err(wire_error)?;
            let c = entry.change;
            if c.tree != tree || c.id != id {
                continue;
            }
            match c.kind {
                ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. }
                    if c.rev == rev =>
                {
                    return Ok(Some((version, data)));
                }
                // Borrows, releases and states leave the data as it was.
                ChangeKind::Borrow { .. } | ChangeKind::Release | ChangeKind::SetState(_) => {}
                ChangeKind::Remove if c.rev == rev => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The conflict an optimistic edit by `holder` meets, given the revision's `state`:
    /// another client changed it after the edit's base (`None`: no conflict, or not an
    /// edit of an existing draft).
    fn conflict(
        &self,
        holder: u32,
        change: &Change,
        state: Option<&RecordState>,
    ) -> Result<Option<RemoteError>, ServerError> {
        let ChangeKind::Edit { base, .. } = change.kind else {
            return Ok(None);
        };
        let Some(state) = state.filter(|s| s.exists && !s.released) else {
            return Ok(None);
        };
        if state.edit_fits(holder, base) {
            return Ok(None);
        }
        let (tree, id, rev) = (change.tree.as_str(), change.id, change.rev);
        // Base data and current data must fit in one frame together.
        let base = self
            .logged_data(base, tree, id, rev)?
            .filter(|(_, b)| b.len() + state.data.len() <= rekord::proto::MAX_RECORD);
        Ok(Some(RemoteError::Conflict(Box::new(
            rekord::proto::Current {
                tree: tree.to_owned(),
                id,
                rev,
                seq: state.seq,
                origin: state.origin,
                hlc: state.hlc,
                version: state.version,
                data: state.data.clone(),
                base,
            },
        ))))
    }

    /// The first conflict any optimistic edit of `changes` meets in the current state (a
    /// look ahead after an earlier entry conflicted: nothing is applied).
    pub(super) fn first_conflict(
        &self,
        holder: u32,
        changes: &[Change],
    ) -> Result<Option<RemoteError>, ServerError> {
        for c in changes {
            if !matches!(c.kind, ChangeKind::Edit { .. }) {
                continue;
            }
            if self
                .borrows
                .get((c.tree.as_str(), c.id))?
                .is_some_and(|g| g.value() != holder)
            {
                continue;
            }
            let state = self.state(&c.tree, c.id, c.rev)?;
            if let Some(conflict) = self.conflict(holder, c, state.as_ref())? {
                return Ok(Some(conflict));
            }
        }
        Ok(None)
    }

    /// Checks and applies one change, which gets sequence number `seq` if it is logged.
    fn apply(
        &mut self,
        holder: u32,
        grant: &Grant,
        change: &Change,
        seq: u64,
    ) -> Result<Result<Effect, RemoteError>, ServerError> {
        let Change {
            tree,
            id,
            rev,
            kind,
        } = change;
        let (tree, id, rev) = (tree.as_str(), *id, *rev);
        if let ChangeKind::Borrow { holder: to } = kind
            && *to != 0
        {
            return Ok(Err(RemoteError::Invalid(
                "borrows are granted by the server; ask with Request::Borrow".into(),
            )));
        }
        if !grant.write.allows(tree) {
            return Ok(Err(RemoteError::NotAllowed {
                tree: tree.to_owned(),
            }));
        }
        let borrower = self.borrows.get((tree, id))?.map(|g| g.value());
        if let ChangeKind::Borrow { .. } = kind {
            // A return (an outbox entry of its own, numbered like changes: a resent one is
            // answered with its first outcome and never frees a later borrow). Returning
            // what this client does not hold (taken back by an administrator) changes
            // nothing.
            if borrower != Some(holder) {
                return Ok(Ok(Effect::Nothing));
            }
            self.borrows.remove((tree, id))?;
            return Ok(Ok(Effect::Logged));
        }
        let current = self.state(tree, id, rev)?;
        let creates = current.is_none() && rev == 0 && !self.known_id(tree, id)?;
        if creates {
            let (version, data, hlc, optimistic) = match kind {
                ChangeKind::Put { version, data } => (*version, data, 0, false),
                ChangeKind::Edit {
                    version, data, hlc, ..
                } => (*version, data, *hlc, true),
                _ => return Ok(Err(RemoteError::NotFound)),
            };
            // Re-made after a restore: by its borrower, or as an optimistic edit (which
            // takes no borrow; replicas re-making it at once meet as a conflict, merged).
            let remade = (borrower == Some(holder) || (optimistic && borrower.is_none()))
                && self.lost_id(id)?;
            if !remade && !self.owns(holder, id)? {
                return Ok(Err(RemoteError::OutsideRange { id }));
            }
            if let Some(other) = borrower.filter(|h| *h != holder) {
                return Ok(Err(self.held_by(other)?));
            }
            if let Err(e) = self.check_data(tree, version, data)? {
                return Ok(Err(e));
            }
            let mut state = RecordState {
                exists: true,
                released: false,
                state: 0,
                version,
                data: data.clone(),
                seq: 0,
                origin: 0,
                before: 0,
                hlc: 0,
            };
            state.changed(holder, seq, hlc);
            self.records
                .insert((tree, id, rev), state.encode().as_slice())?;
            // An optimistic create gives nobody the borrow.
            let born = borrower.is_none() && !optimistic;
            if born {
                self.borrows.insert((tree, id), holder)?;
                return Ok(Ok(Effect::Born));
            }
            return Ok(Ok(Effect::Logged));
        }
        if let ChangeKind::Edit { .. } = kind {
            if let Some(other) = borrower.filter(|h| *h != holder) {
                return Ok(Err(self.held_by(other)?));
            }
            if !current.as_ref().is_some_and(|s| s.exists) {
                return Ok(Err(RemoteError::NotFound));
            }
            if let Some(conflict) = self.conflict(holder, change, current.as_ref())? {
                return Ok(Err(conflict));
            }
        } else if borrower != Some(holder) {
            return Ok(Err(RemoteError::NotBorrowed));
        }
        let mut state = match current {
            Some(state) if state.exists => state,
            // Never there, or a removed draft revision (its row stays): only a new revision
            // after the latest existing one may be created here. Making a removed draft's
            // number again is what a standalone database does too (drafts are not frozen;
            // released revisions can never be removed).
            _ => {
                let ChangeKind::Put { .. } = kind else {
                    return Ok(Err(RemoteError::NotFound));
                };
                let previous = match rev.checked_sub(1) {
                    Some(p) => self.state(tree, id, p)?,
                    None => None,
                };
                if !previous.is_some_and(|p| p.exists) {
                    return Ok(Err(RemoteError::Invalid(format!(
                        "revision {rev} of record {id} of tree `{tree}` needs revision {} to \
                         exist first",
                        rev.saturating_sub(1)
                    ))));
                }
                RecordState {
                    exists: true,
                    released: false,
                    state: 0,
                    version: 0,
                    data: Vec::new(),
                    seq: 0,
                    origin: 0,
                    before: 0,
                    hlc: 0,
                }
            }
        };
        match kind {
            // Refused at the top of this function.
            ChangeKind::Borrow { .. } => {}
            ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. } => {
                if state.released {
                    return Ok(Err(RemoteError::Released));
                }
                if let Err(e) = self.check_data(tree, *version, data)? {
                    return Ok(Err(e));
                }
                let hlc = match kind {
                    ChangeKind::Edit { hlc, .. } => *hlc,
                    _ => 0,
                };
                state.version = *version;
                state.data = data.clone();
                state.changed(holder, seq, hlc);
            }
            ChangeKind::Remove => {
                if state.released {
                    return Ok(Err(RemoteError::Released));
                }
                state.exists = false;
                state.data = Vec::new();
            }
            ChangeKind::Release => {
                if state.released {
                    return Ok(Err(RemoteError::Released));
                }
                state.released = true;
                // Dated like a data change (`Revision::changed`, `by`): a replica
                // reconciling after a restore tells who changed the revision since.
                // (An optimistic edit of a released revision is refused before any
                // conflict check.)
                let hlc = state.hlc;
                state.changed(holder, seq, hlc);
            }
            ChangeKind::SetState(s) => {
                if !state.released {
                    return Ok(Err(RemoteError::Invalid(format!(
                        "revision {rev} of record {id} of tree `{tree}` is not released; only \
                         a released revision has a state"
                    ))));
                }
                state.state = *s;
                let hlc = state.hlc;
                state.changed(holder, seq, hlc);
            }
        }
        self.records
            .insert((tree, id, rev), state.encode().as_slice())?;
        Ok(Ok(Effect::Logged))
    }
}

impl Store {
    /// The latest sequence number (0: nothing accepted yet).
    pub fn head(&self) -> Result<u64, ServerError> {
        let txn = self.db.begin_read()?;
        head_of(&txn.open_table(LOG)?)
    }

    /// Logged changes with a sequence number above `after`, in order: at most `max` of them
    /// and, beyond the first, about `max_bytes` of record data in total.
    pub fn log_after(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Sequenced>, ServerError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let Some(from) = after.checked_add(1) else {
            return Ok(out);
        };
        for entry in log.range(from..)? {
            let (_, value) = entry?;
            let len = value.value().len();
            if out.len() >= max || (!out.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            out.push(rekord::proto::decode_sequenced(value.value()).map_err(wire_error)?);
        }
        Ok(out)
    }

    /// Applies the changes of operation `op` of client `holder` (whose token grants
    /// `grant`): all or nothing, in one durable write transaction, each accepted change
    /// logged under the next sequence number. A retried `op` is answered with its first
    /// sequence number and applies nothing. The rules are those of the crate
    /// documentation (section "Changes").
    pub fn apply_changes(
        &self,
        holder: u32,
        grant: &Grant,
        op: [u8; 16],
        changes: Vec<Change>,
    ) -> Result<Applied, ServerError> {
        let op_key = (holder, u128::from_be_bytes(op));
        let txn = self.begin_logged()?;
        {
            let ops = txn.open_table(OPS)?;
            if let Some(seq) = ops.get(op_key)? {
                return Ok(Applied::Retried { seq: seq.value() });
            }
        }
        let mut seq = head_of(&txn.open_table(LOG)?)?;
        let mut entries = Vec::with_capacity(changes.len());
        let mut created = Vec::new();
        match apply_in(
            &txn,
            holder,
            grant,
            changes,
            &mut seq,
            &mut entries,
            &mut created,
            &mut self.parsed(),
        )? {
            Err(e) => {
                txn.abort()?;
                Ok(Applied::Rejected(e))
            }
            Ok(()) => {
                txn.open_table(OPS)?.insert(op_key, seq)?;
                txn.commit()?;
                Ok(Applied::Accepted {
                    seq,
                    entries,
                    borrows: created,
                })
            }
        }
    }
}
