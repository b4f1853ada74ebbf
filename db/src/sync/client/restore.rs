//! Reconciling with a server restored from a backup (native targets).
//!
//! The server tells every client the lineage of its history ([`crate::proto::ServerHello::history`]);
//! a replica that synced with a history the server no longer descends from computes the
//! last sequence number both share ([`crate::sync::diverged`]) and reconciles before it goes on:
//!
//! 1. the id ranges it holds are registered again ([`Request::Reclaim`]);
//! 2. every record its journal (`rekord.journal`) says a change after that point touched
//!    is fetched from the server and compared with the local copy: records this replica
//!    holds (or changed last, with nobody holding them) are sent again as they are here,
//!    their borrows taken again first; the others become what the server has;
//! 3. in one local transaction: those records' entries join the outbox, the cursor goes
//!    back to the shared point (and with it the subscription coverage, optimistic edits'
//!    bases and floors), journal rows past it go, and the new lineage is stored. A crash
//!    before this commit reconciles again at the next connection; after it, the outbox
//!    holds the work.
//!
//! The client then reconnects, to receive the restored server's changes from the shared
//! point on.

use super::{Client, End};
use crate::event::SyncEvent;
use crate::net::Session;
use crate::proto::{Change, ChangeKind, RemoteError, Request, Response, Revision};
use crate::sync::local::{Journal, LocalRevision, Released, Write, digest};
use std::collections::HashSet;

/// What [`Client::reclaim_taken`] found in a batch of pushed changes, reported by
/// [`Client::report_taken`] once the batch committed.
#[derive(Default)]
pub(crate) struct Taken {
    /// Whether another replica took a record this one waited to take back.
    pub(crate) took: bool,
    superseded: Vec<SyncEvent>,
    released: Released,
}

/// The most records a [`SyncEvent::Restored`] lists by name.
const LOST_LISTED: usize = 1000;

/// What to do with one record.
enum Step {
    /// Send these changes (and return the borrow after them if `ret`).
    Resend {
        tree: String,
        id: u64,
        changes: Vec<Change>,
        ret: bool,
    },
    /// Make it what the server has.
    Adopt {
        tree: String,
        id: u64,
        holder: u32,
        revisions: Vec<Revision>,
        differed: bool,
    },
    /// Return the borrow the server (from before the backup) says this replica holds.
    Return { tree: String, id: u64 },
    /// Held here (`held`), or changed here last, but the restored server gives the borrow
    /// to a replica that returned it after the backup (or the record's creator has not
    /// made it again yet): sent again once the borrow is free (`rekord.reclaim`), and the
    /// borrow returned after it unless this replica held it.
    Wait { tree: String, id: u64, held: bool },
}

impl Client {
    /// Reconciles with a server whose history shares this replica's up to `common`, then
    /// stores `lineage`. Returns whether the session must be started again (the cursor
    /// went back).
    pub(crate) async fn reconcile(
        &mut self,
        s: &mut Session,
        common: u64,
        lineage: &[(u64, u64)],
    ) -> std::result::Result<bool, End> {
        let db = self.db()?;
        let me = db.replica();
        let cursor = self.cursor;
        let Journal {
            touched,
            own,
            floor,
            ranges,
            seen,
        } = db.journal_since(common)?;

        // The id ranges first: records created with them (sent again below, or waiting in
        // the outbox) are accepted only from their owner.
        for chunk in ranges.chunks(crate::proto::MAX_RECLAIM) {
            match s
                .request(Request::Reclaim {
                    ranges: chunk.to_vec(),
                })
                .await?
            {
                Response::Reclaimed { refused } => {
                    for (start, end) in refused {
                        tracing::warn!(
                            start,
                            end,
                            "rekord sync: the restored server refused an id range this replica \
                             holds (another client holds it, or no history of the server \
                             granted it)"
                        );
                    }
                }
                Response::Error(e) => {
                    tracing::warn!(error = ?e, "rekord sync: cannot reclaim id ranges");
                }
                other => {
                    return Err(End::Lost(format!(
                        "the server answered a reclaim with {other:?}"
                    )));
                }
            }
        }

        if touched.is_empty() && cursor <= common {
            // A new history that lost nothing this replica knows of (the server restarted,
            // or was restored from a backup newer than anything this replica saw). Ranges
            // granted after the backup may still be unused here: registered above.
            let b = db.write()?;
            b.store_history(lineage)?;
            b.commit_for_sync()?;
            return Ok(false);
        }
        tracing::warn!(
            common,
            cursor,
            records = touched.len(),
            "rekord sync: the server was restored from a backup; reconciling"
        );
        let mut steps = Vec::new();
        let none = HashSet::new();
        for (tree, id) in touched {
            let changed_here = own.contains(&(tree.clone(), id));
            // The states of it this replica saw since the shared point (`None`: not
            // known, a database from before they were kept).
            let saw = seen
                .as_ref()
                .map(|m| m.get(&(tree.clone(), id)).unwrap_or(&none));
            steps.extend(
                self.decide(s, tree, id, changed_here, None, saw, me, common)
                    .await?,
            );
        }

        let versions: Vec<(String, u32)> = steps
            .iter()
            .filter_map(|st| match st {
                Step::Adopt {
                    tree, revisions, ..
                } => Some(revisions.iter().map(|r| (tree.clone(), r.version))),
                _ => None,
            })
            .flatten()
            .collect();
        self.fetch_schemas(s, &versions).await?;

        let back = cursor.min(common);
        let mut resent = 0u64;
        let mut lost = Vec::new();
        let mut lost_count = 0u64;
        let mut waiting = 0u64;
        // Records edited here since they were fetched: kept, fetched again later.
        let mut kept = 0u64;
        let (mut entries, mut bytes) = (0u64, 0u64);
        let db = self.db()?;
        let mut b = db.write()?;
        // What is sent again goes before what waits in the outbox (which may change the
        // same records further): the waiting entries get new numbers after it.
        let waiting_entries = b.take_outbox()?;
        for step in steps {
            match step {
                Step::Resend {
                    tree,
                    id,
                    changes,
                    ret,
                } => {
                    b.note_recheck(&tree, id)?;
                    let returns = if ret { vec![(tree, id)] } else { Vec::new() };
                    let (n, by) = b.enqueue(&changes, &returns)?;
                    (entries, bytes) = (entries + n, bytes + by);
                    resent += 1;
                }
                Step::Return { tree, id } => {
                    let (n, by) = b.enqueue(&[], &[(tree, id)])?;
                    (entries, bytes) = (entries + n, bytes + by);
                }
                Step::Wait { tree, id, held } => {
                    b.note_reclaim(&tree, id, held)?;
                    waiting += 1;
                }
                Step::Adopt {
                    tree,
                    id,
                    holder,
                    revisions,
                    differed,
                } => {
                    if edited_since(&*b, &tree, id)? {
                        b.note_recheck(&tree, id)?;
                        kept += 1;
                        continue;
                    }
                    b.replace_record(&tree, id, holder, &revisions)?;
                    if differed {
                        lost_count += 1;
                        if lost.len() < LOST_LISTED {
                            lost.push((tree, id));
                        }
                    }
                }
            }
        }
        b.append_outbox(&waiting_entries)?;
        // Writes that waited for records no longer waiting (a second restore) go again.
        let released = self.release_deferred(&*b, &[])?;
        b.rewind(common, back, lineage, waiting > 0)?;
        b.commit_for_sync()?;
        self.link.enqueued(entries, bytes);
        self.report_released(released);
        self.reclaiming |= waiting > 0;
        self.rechecking |= resent > 0 || kept > 0;
        self.cursor = back;
        self.link.update(|st| st.cursor = back);
        let incomplete = floor > common;
        tracing::warn!(
            common,
            cursor,
            resent,
            waiting,
            lost = lost_count,
            incomplete,
            "rekord sync: reconciled with the restored server"
        );
        self.emit(SyncEvent::Restored {
            common,
            cursor,
            resent,
            lost,
            lost_count,
            incomplete,
        });
        Ok(cursor > back)
    }

    /// What to do with record `id` of `tree`, which a change after the shared point
    /// touched (`changed_here`: one of this replica's): fetched from the server, compared
    /// with the local copy, its borrow taken back where this replica holds it (`waited`:
    /// a record this replica waited to take back, see [`Step::Wait`]).
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &mut self,
        s: &mut Session,
        tree: String,
        id: u64,
        changed_here: bool,
        waited: Option<bool>,
        seen: Option<&HashSet<(u64, u32)>>,
        me: u32,
        common: u64,
    ) -> std::result::Result<Vec<Step>, End> {
        let (mut holder, revisions) = match s
            .request(Request::Fetch {
                tree: tree.clone(),
                id,
            })
            .await?
        {
            Response::Record { holder, revisions } => (holder, revisions),
            Response::Error(e) => {
                tracing::warn!(%tree, id, error = ?e, "rekord sync: cannot fetch a record to reconcile");
                return Ok(Vec::new());
            }
            other => {
                return Err(End::Lost(format!(
                    "the server answered a fetch with {other:?}"
                )));
            }
        };
        // An optimistic record with edits waiting in the outbox: they carry this replica's
        // version, and the server merges them with its own (three-way, from the version
        // they started from); nothing to send or take here.
        if self.db()?.optimistic_pending(&tree, id)? {
            tracing::debug!(%tree, id, "rekord sync: reconciling a record: left to the merge");
            return Ok(Vec::new());
        }
        let local = self.db()?.revisions(&tree, id)?;
        let stored_holder = local.last().map_or(0, |l| l.holder);
        let mut local_holder = stored_holder;
        let same = local.len() == revisions.len()
            && local.iter().zip(&revisions).all(|(l, r)| l.same_as(r));
        // A record held here that the server shows changed since the shared point by
        // another replica: a stale holder's resend of a state this replica saw (and built
        // on) before it took the record, or a change made in the restored history after
        // another replica borrowed it, which is newer and stands. Told apart by the states
        // this replica saw (`rekord.journal_states`); with none known, the first.
        let superseded = waited.is_none()
            && local_holder == me
            && !same
            && revisions.iter().any(|r| r.changed > common && r.by != me)
            && seen.is_some_and(|seen| {
                // Made by the replica the server names as the last to change it: one state
                // that another replica made again later is not what this replica saw.
                let by = revisions
                    .iter()
                    .max_by_key(|r| r.changed)
                    .map_or(0, |r| r.by);
                let digest = digest(&revisions);
                !seen.contains(&(digest, by)) && !seen.contains(&(digest, 0))
            });
        if superseded {
            tracing::info!(%tree, id, "rekord sync: a record held here was changed since the restore by another replica; its version stands");
            local_holder = 0;
        }
        // Whether this replica held the record before the restore (then it keeps holding
        // it after sending it again; else it returns the borrow it takes to send it).
        // (Nobody keeps the borrow of an optimistic record: it is taken only to send it.)
        let optimistic = self.db()?.is_optimistic(&tree)?;
        let held = !optimistic && waited.unwrap_or(local_holder == me);
        if waited.is_some() {
            // Waited for: the stale holder's return reached this replica as a push (holder
            // 0), or its creator made it again.
            local_holder = me;
        }
        // Another replica changed the record in the server's history after the shared
        // point (it reconciled first, or worked after the restore): that version is newer
        // than anything here.
        let newer_there = revisions.iter().any(|r| r.changed > common && r.by != me);
        // This replica's version is the one to keep: it holds the record, or changed it
        // last with nobody holding it (a removal, an optimistic edit, a returned borrow),
        // and nobody changed it since on the server.
        // (A record held here whose server state is newer was either resent by a stale
        // holder, older, or changed after the restore by a replica that borrowed it since:
        // `superseded` above, then it is not held here any more.)
        // The creator of a record the server lost makes it again, whoever held it since
        // (ids of its ranges are its own: no other replica may re-make them).
        let creator = revisions.is_empty() && changed_here && self.db()?.owns_id(id)?;
        let mine = local_holder == me
            || creator
            || (!newer_there && changed_here && local_holder == 0 && !superseded);
        // (Also before re-making a record the server lost: its id may be from the range of a
        // replica that is not back, which the server accepts from the record's holder.)
        // An optimistic record changed here since the shared point: sent again as
        // optimistic edits based on that point, without a borrow (which would refuse the
        // others' edits meanwhile). The server takes them when nobody else changed the
        // record since (re-making it if it lost it); else it answers with a conflict,
        // merged like any (the other side's change, made after the restore, is the newer
        // one).
        if optimistic && !same && changed_here {
            let base = match waited {
                Some(_) => self.db()?.reclaim_common()?,
                None => common,
            };
            if let Some(changes) = as_edits(resend_changes(&tree, id, &local, &revisions), base) {
                tracing::debug!(%tree, id, base, "rekord sync: reconciling a record: sent again as an edit");
                return Ok(vec![Step::Resend {
                    tree,
                    id,
                    changes,
                    ret: false,
                }]);
            }
        }
        // (An optimistic record's borrow is taken only to re-make it: holding it refuses
        // everyone's optimistic edits meanwhile.)
        let needs_borrow = holder != me
            && if optimistic {
                mine && !same
            } else {
                local_holder == me || (mine && !same)
            };
        tracing::debug!(
            %tree, id, holder, local_holder, mine, same, newer_there, changed_here, creator,
            "rekord sync: reconciling a record"
        );
        if needs_borrow {
            match s
                .request(Request::Borrow {
                    tree: tree.clone(),
                    id,
                })
                .await?
            {
                Response::Granted { .. } => holder = me,
                // Held by a replica the restored server thinks holds it (it returned it
                // after the backup, and will return it again when it reconciles).
                Response::Error(RemoteError::AlreadyBorrowed { .. }) if mine => {
                    return Ok(vec![Step::Wait { tree, id, held }]);
                }
                // A record of another replica's range the server lost: its creator makes
                // it again when it reconciles (then this replica takes it back).
                Response::Error(RemoteError::NotFound) if mine => {
                    return Ok(vec![Step::Wait { tree, id, held }]);
                }
                Response::Error(e) => {
                    tracing::warn!(%tree, id, error = ?e, "rekord sync: cannot take back a borrow after the restore");
                    return Ok(vec![Step::Adopt {
                        tree,
                        id,
                        holder,
                        revisions,
                        differed: !same,
                    }]);
                }
                other => {
                    return Err(End::Lost(format!(
                        "the server answered a borrow with {other:?}"
                    )));
                }
            }
        }
        if mine && !same {
            let changes = resend_changes(&tree, id, &local, &revisions);
            return Ok(vec![Step::Resend {
                tree,
                id,
                changes,
                ret: !held,
            }]);
        }
        let mut steps = Vec::new();
        // The server (as of the backup) says this replica holds a record it returned
        // since, or it took the borrow above without holding it before (an optimistic
        // record, or a record it waited for only to send it again, which the server has
        // now): return it, so the replica that took it next can take it back.
        let give_back = holder == me && !held;
        let holder = if give_back { 0 } else { holder };
        if !same || holder != stored_holder {
            steps.push(Step::Adopt {
                tree: tree.clone(),
                id,
                holder,
                revisions,
                differed: !same,
            });
        }
        if give_back {
            steps.push(Step::Return { tree, id });
        }
        Ok(steps)
    }

    /// Sends again the records this replica waits to take back (`rekord.reclaim`) whose
    /// borrow it now gets (a record another replica borrowed meanwhile is forgotten when
    /// that borrow arrives, see [`Client::reclaim_taken`]).
    pub(crate) async fn retry_reclaims(&mut self, s: &mut Session) -> std::result::Result<(), End> {
        let keys = self.db()?.reclaims()?;
        self.reclaiming = !keys.is_empty();
        let me = self.db()?.replica();
        for (tree, id, held) in keys {
            // A tree outside the subscription stays waiting: this replica does not see who
            // borrows its records meanwhile, so it cannot tell whether its copy still stands.
            if !(self.config.trees.is_empty() || self.config.trees.contains(&tree)) {
                continue;
            }
            // Pushes received meanwhile first: a borrow another replica took since shows
            // (`reclaim_taken` then forgets the record here, its version stands).
            self.apply_received(s).await?;
            if !self.waits_to_take_back(&tree, id)? {
                continue;
            }
            let steps = self
                .decide(s, tree.clone(), id, true, Some(held), None, me, u64::MAX)
                .await?;
            if steps.iter().any(|st| matches!(st, Step::Wait { .. })) {
                continue;
            }
            // The server sends every push committed before it answers a request: what
            // happened to the record between the fetch and the borrow is here now. Another
            // replica that borrowed it meanwhile (and maybe edited and returned it) wins:
            // nothing of this replica's copy is sent, and a borrow taken for the resend is
            // given back (a return of what it does not hold changes nothing).
            self.apply_received(s).await?;
            if !self.waits_to_take_back(&tree, id)? {
                let db = self.db()?;
                let b = db.write()?;
                let (n, by) = b.enqueue(&[], &[(tree.clone(), id)])?;
                b.commit_for_sync()?;
                self.link.enqueued(n, by);
                tracing::info!(%tree, id, "rekord sync: another replica took the record while this one took it back; giving the borrow back");
                continue;
            }
            let db = self.db()?;
            let mut b = db.write()?;
            let (mut entries, mut bytes) = (0u64, 0u64);
            // The server's version replaced this replica's: its waiting writes are refused.
            let mut lost = false;
            for step in steps {
                match step {
                    Step::Resend {
                        tree,
                        id,
                        changes,
                        ret,
                    } => {
                        // Fetched again after catching up (the recheck below), like the
                        // resends of the reconciliation: the catch-up may replay older
                        // changes over it.
                        let returns = if ret { vec![(tree, id)] } else { Vec::new() };
                        let (n, by) = b.enqueue(&changes, &returns)?;
                        (entries, bytes) = (entries + n, bytes + by);
                    }
                    Step::Return { tree, id } => {
                        let (n, by) = b.enqueue(&[], &[(tree, id)])?;
                        (entries, bytes) = (entries + n, bytes + by);
                    }
                    Step::Adopt {
                        tree,
                        id,
                        holder,
                        revisions,
                        differed,
                    } => {
                        let versions: Vec<(String, u32)> = revisions
                            .iter()
                            .map(|r| (tree.clone(), r.version))
                            .collect();
                        drop(b);
                        self.fetch_schemas(s, &versions).await?;
                        b = db.write()?;
                        // (Fetched again anyway: the recheck below.)
                        if !edited_since(&*b, &tree, id)? {
                            b.replace_record(&tree, id, holder, &revisions)?;
                            lost |= differed;
                        }
                    }
                    Step::Wait { .. } => {}
                }
            }
            b.clear_reclaim(&tree, id)?;
            // Fetched again once the outbox settles, whatever the steps: the stale holder
            // can resend and return the record between the fetch and the borrow (it held it
            // already, so no borrow announces it), and its push replaced this replica's
            // copy; the writes that waited here are sent again over it now, and this
            // replica skips their echo. (A fault run ended with a revision this replica had
            // removed back in its copy only.)
            b.note_recheck(&tree, id)?;
            self.rechecking = true;
            let released = if lost {
                self.release_deferred(&*b, &[(tree.clone(), id)])?
            } else {
                self.release_deferred(&*b, &[])?
            };
            b.commit_for_sync()?;
            self.link.enqueued(entries, bytes);
            self.report_released(released);
            tracing::info!(%tree, id, "rekord sync: took back a borrow after the restore");
        }
        Ok(())
    }

    /// Fetches once more the records sent again after a restore (`rekord.recheck`): the
    /// catch-up from the shared point replays older changes of other replicas over them
    /// (and skips this replica's own resend, as changes of its own are).
    pub(crate) async fn recheck(&mut self, s: &mut Session) -> std::result::Result<(), End> {
        let keys = self.db()?.rechecks()?;
        if keys.is_empty() {
            self.rechecking = false;
            return Ok(());
        }
        // Each row goes when its record is fetched; a record with writes waiting in the
        // outbox stays (fetching it would undo them here only), and `rechecking` is set
        // again, to fetch it once nothing waits for it.
        self.rechecking = false;
        self.resync(s, keys).await
    }

    /// Forgets the records of `rekord.reclaim` that another replica borrowed (pushed
    /// `entries`, applied in batch `b`): its version stands, so the copy kept here while
    /// waiting to take the record back is fetched again (`rekord.recheck`) once caught up.
    /// A borrow push carries no data: without the fetch, this replica would keep its own
    /// version under the other's borrow for good. Returns whether any was forgotten.
    pub(crate) fn reclaim_taken(
        &mut self,
        b: &dyn Write,
        entries: &[crate::proto::Sequenced],
    ) -> std::result::Result<Taken, End> {
        if !self.reclaiming {
            return Ok(Taken::default());
        }
        let me = self.db()?.replica();
        let taken = b.forget_taken(entries, me)?;
        let took = !taken.is_empty();
        let mut superseded = Vec::new();
        let mut keys = Vec::new();
        for (tree, id, holder) in taken {
            tracing::info!(%tree, id, holder,
                "rekord sync: another replica took the record this one waited to take back; fetching its version");
            keys.push((tree.clone(), id));
            superseded.push(SyncEvent::Superseded { tree, id, holder });
        }
        let released = if keys.is_empty() {
            Released::default()
        } else {
            self.release_deferred(b, &keys)?
        };
        self.rechecking |= took;
        Ok(Taken {
            took,
            superseded,
            released,
        })
    }

    /// Reports what [`Client::reclaim_taken`] found, once its batch committed.
    pub(crate) fn report_taken(&mut self, taken: Taken) {
        for event in taken.superseded {
            self.emit(event);
        }
        self.report_released(taken.released);
    }

    /// Goes through the writes waiting with records to be taken back (`rekord.deferred`),
    /// in batch `b`: one that changes a record of `superseded` (another replica's version
    /// of it stands) is set aside as rejected, its other records fetched again once caught
    /// up (except those still waiting); one none of whose records waits any more is sent
    /// again, under a new number.
    pub(crate) fn release_deferred(
        &mut self,
        b: &dyn Write,
        superseded: &[(String, u64)],
    ) -> std::result::Result<Released, End> {
        let released = b.release_deferred(superseded)?;
        self.rechecking |= released.recheck;
        Ok(released)
    }

    /// Reports the waiting writes [`Client::release_deferred`] rejected (once committed).
    pub(crate) fn report_released(&mut self, released: Released) {
        let count = released.rejected.len() as u64;
        if count + released.again > 0 {
            self.link.update(|st| {
                st.waiting = st.waiting.saturating_sub(count + released.again);
            });
        }
        if released.rejected.is_empty() {
            return;
        }
        self.link.update(|st| {
            st.outbox = st.outbox.saturating_sub(count);
            st.outbox_bytes = st.outbox_bytes.saturating_sub(released.bytes);
            st.rejected += count;
        });
        let reason = "another replica borrowed a record of this write before this replica took \
                      it back after the server was restored from a backup; its version stands"
            .to_owned();
        for entry in released.rejected {
            self.link.note_refusal(entry, &reason);
            tracing::warn!(entry, %reason, "rekord sync: a waiting write was rejected");
            self.emit(SyncEvent::Rejected {
                entry,
                reason: reason.clone(),
            });
        }
    }

    /// Applies every push received so far (without waiting for more).
    async fn apply_received(&mut self, s: &mut Session) -> std::result::Result<(), End> {
        if let Some(push) = s.try_next_push()? {
            Box::pin(self.apply_ready(s, push)).await?;
        }
        Ok(())
    }

    /// Whether record `id` of `tree` still waits in `rekord.reclaim`.
    fn waits_to_take_back(&self, tree: &str, id: u64) -> std::result::Result<bool, End> {
        Ok(self.db()?.waits_to_take_back(tree, id)?)
    }

    /// Whether `rekord.reclaim` holds records waiting to be taken back.
    pub(crate) fn has_reclaims(&self) -> std::result::Result<bool, End> {
        Ok(self.db()?.has_reclaims()?)
    }

    /// Prunes journal rows older than [`crate::sync::SyncConfig::journal_retention`];
    /// `head`: the server's, as this session's hello gave it.
    pub(crate) fn prune_journal(&mut self, head: u64) -> std::result::Result<(), End> {
        let horizon = crate::rt::now_ms().saturating_sub(
            u64::try_from(self.config.journal_retention.as_millis()).unwrap_or(u64::MAX),
        );
        let db = self.db()?;
        let old = db.journal_rows_before(horizon)?;
        if old.is_empty() {
            return Ok(());
        }
        let unknown = crate::sync::UNKNOWN_SEQ;
        let top = old
            .iter()
            .map(|k| k.0)
            .filter(|&seq| seq != unknown)
            .max()
            .unwrap_or(0);
        // A row of an unknown number (a tab that took over) stands for a change the server
        // settled before the row was made, in this history (a reconciliation would have
        // removed the row): numbered at most its head now. Of a tree this replica receives,
        // the change comes back with its number (this session's catch-up, or one before it
        // whose rows are here); of another tree, the journal is complete only after the
        // head.
        let coverage = db.coverage()?;
        let unknown_top = if old
            .iter()
            .any(|(seq, tree, _)| *seq == unknown && !self.receives(coverage.as_ref(), tree))
        {
            head
        } else {
            0
        };
        let b = self.lazy_write(&*db)?;
        b.prune_journal(&old, top, unknown_top)?;
        b.commit()?;
        Ok(())
    }
}

/// The changes that make the server's record `id` of `tree` (`server`) what it is here
/// (`local`): each differing revision put again (released and its state set if so), and
/// draft revisions removed here removed there.
/// `changes` as optimistic edits based on sequence number `base` (`None` unless they all
/// put data into drafts: releases, states and removals need the borrow).
fn as_edits(changes: Vec<Change>, base: u64) -> Option<Vec<Change>> {
    changes
        .into_iter()
        .map(|c| match c.kind {
            ChangeKind::Put { version, data } => Some(Change {
                kind: ChangeKind::Edit {
                    base,
                    hlc: 0,
                    version,
                    data,
                },
                ..c
            }),
            _ => None,
        })
        .collect()
}

fn resend_changes(
    tree: &str,
    id: u64,
    local: &[LocalRevision],
    server: &[Revision],
) -> Vec<Change> {
    let change = |rev: u32, kind: ChangeKind| Change {
        tree: tree.to_owned(),
        id,
        rev,
        kind,
    };
    let mut out = Vec::new();
    for l in local {
        let theirs = server.iter().find(|r| r.rev == l.rev);
        if theirs.is_some_and(|r| l.same_as(r)) {
            continue;
        }
        match theirs {
            // Released there with the same data: only the state can differ.
            Some(r) if r.released && r.data == l.data && r.version == l.version => {
                if l.released && l.state != r.state {
                    out.push(change(l.rev, ChangeKind::SetState(l.state)));
                }
                continue;
            }
            // Released there with other data: nothing can change it (the server refuses,
            // and the refusal is reported).
            _ => {}
        }
        if !theirs.is_some_and(|r| r.released) {
            out.push(change(
                l.rev,
                ChangeKind::Put {
                    version: l.version,
                    data: l.data.clone(),
                },
            ));
        }
        if l.released && !theirs.is_some_and(|r| r.released) {
            out.push(change(l.rev, ChangeKind::Release));
        }
        if l.released && l.state != 0 {
            out.push(change(l.rev, ChangeKind::SetState(l.state)));
        }
    }
    for r in server.iter().rev() {
        if !r.released && !local.iter().any(|l| l.rev == r.rev) {
            out.push(change(r.rev, ChangeKind::Remove));
        }
    }
    out
}

/// Whether record `id` of `tree` has optimistic edits waiting in the outbox, read in the
/// transaction about to adopt the server's version of it. `decide` leaves such a record to
/// the merge, so one that has them now was edited after it was fetched (the application
/// keeps writing while a reconciliation fetches): the edit goes to the server next, which
/// merges it (re-making a record it lost). Adopting would undo it here only, and its echo,
/// being this replica's own, is never applied back; the record is fetched again once the
/// outbox settled instead (`rekord.recheck`, inserted by the caller). (A fault run ended
/// with a note missing on the one replica that had edited it.)
fn edited_since(b: &dyn Write, tree: &str, id: u64) -> std::result::Result<bool, End> {
    Ok(b.edited(tree, id)?)
}
