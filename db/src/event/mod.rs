//! Change events: every committed change, delivered after commit, in commit order, to every
//! subscriber.
//!
//! Each [`Subscription`] has its own unbounded queue: an event is never dropped because a
//! subscriber is slow (memory grows instead; drop the subscription to stop receiving). Poll it
//! without blocking from a GUI frame loop ([`Subscription::try_iter`]), block on it
//! ([`Subscription::recv_blocking`], [`Subscription::recv_timeout`]), or await it ([`Subscription::recv`], or as a
//! `futures_core::Stream`).

use crate::{Key, RawKey, Record};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A change to a record (made here, or by another replica and synced here).
    Record(RecordEvent),
    /// News from the sync client of a synced database (connection, progress, refusals).
    Sync(SyncEvent),
}

impl Event {
    /// The record event, if this is one.
    pub fn as_record(&self) -> Option<&RecordEvent> {
        match self {
            Event::Record(r) => Some(r),
            Event::Sync(_) => None,
        }
    }

    /// The sync event, if this is one.
    pub fn as_sync(&self) -> Option<&SyncEvent> {
        match self {
            Event::Sync(s) => Some(s),
            Event::Record(_) => None,
        }
    }
}

/// What the sync client of a synced database reports (see `Db::open_synced`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SyncEvent {
    /// Connected and authenticated; catch-up from the local cursor starts.
    Connected {
        /// The server's latest sequence number at connection time.
        head: u64,
    },
    /// The connection was lost (or could not be made); the client retries after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt is made.
        retry_in: std::time::Duration,
    },
    /// The server refused this client, or this client refused the server (wrong identity,
    /// application, token); the client keeps retrying with backoff, but it will not
    /// succeed until the cause (named in `reason`) is fixed.
    Refused {
        /// Why.
        reason: String,
    },
    /// Server changes up to `cursor` are applied locally (sent during catch-up).
    Progress {
        /// The last applied server sequence number.
        cursor: u64,
        /// The server's head when the connection was made.
        head: u64,
    },
    /// Every server change up to `cursor` is applied; live changes follow.
    CaughtUp {
        /// The last applied server sequence number.
        cursor: u64,
    },
    /// The server was restored from a backup: its history parted from the one this replica
    /// synced with after sequence number `common`, so the server lost every change after
    /// it. The replica reconciled before going on (nothing of its own is lost):
    ///
    /// - its own changes after `common` (accepted by the lost history, or still in the
    ///   outbox) are sent again: the current local state of each record it changed, with
    ///   the borrows it held taken again (`resent` records);
    /// - records other replicas changed after `common` are made what the restored server
    ///   has (`lost` lists those whose local copy differed; their authors send their
    ///   changes again when they reconnect, and every replica receives them then);
    /// - the id ranges it holds are registered with the restored server again;
    /// - it then receives the restored server's changes from `common` on.
    ///
    /// `incomplete` is true when the replica's journal of changed records
    /// ([`crate::sync::SyncConfig::journal_retention`]) no longer reaches back to `common`:
    /// records changed before the oldest journal entry were not reconciled.
    Restored {
        /// The last sequence number both histories share.
        common: u64,
        /// This replica's cursor before.
        cursor: u64,
        /// Records whose local state was sent again as this replica's.
        resent: u64,
        /// Records changed by other replicas whose local copy was replaced by the
        /// server's (at most the first 1,000; `lost_count` counts them all).
        lost: Vec<(String, u64)>,
        /// How many records `lost` would list without its bound.
        lost_count: u64,
        /// Whether the journal did not reach back to `common`.
        incomplete: bool,
    },
    /// The oldest local write waiting in the outbox is older than
    /// `SyncConfig::max_outbox_age` (reported once until the outbox moves again). Nothing
    /// is dropped; it is a prompt to reconnect.
    OutboxStale {
        /// The oldest entry's age.
        age: std::time::Duration,
        /// Entries waiting.
        entries: u64,
    },
    /// An administrator took back the borrow of a record this replica held
    /// (`rekord-server borrow force-return`). Local changes to it not yet accepted will be
    /// refused by the server ([`SyncEvent::Rejected`], kept aside) and the record resynced.
    BorrowRevoked {
        /// Tree.
        tree: String,
        /// Record id.
        id: u64,
    },
    /// A local write (outbox entry) was accepted by the server.
    Pushed {
        /// The server sequence number of its last change (0 for a borrow return).
        seq: u64,
        /// Outbox entries still waiting.
        outbox: u64,
    },
    /// An optimistic edit of this replica met a concurrent edit of another (see
    /// [`crate::sync::merge`]) and the two were merged: `outcome` is what the record is now
    /// here and, once the server accepted it, everywhere. Both sides and the outcome are
    /// RON text (as the viewer shows records).
    Conflict(Box<Conflict>),
    /// The server refused a local write for good. Its changes stay in the local database
    /// and the refused entry is kept in the `rekord.outbox_rejected` table; nothing is
    /// dropped silently.
    Rejected {
        /// The outbox entry number.
        entry: u64,
        /// The server's reason.
        reason: String,
    },
    /// A record this replica waited to take back after the server was restored from a
    /// backup ([`SyncEvent::Restored`]: it held the record, or changed it last) was
    /// borrowed by another replica first. That borrow stands: the local copy, with the
    /// changes made here after the backup and while waiting, is replaced by the server's
    /// version once caught up.
    Superseded {
        /// The tree.
        tree: String,
        /// The record id.
        id: u64,
        /// Holder number of the replica that borrowed it.
        holder: u32,
    },
    /// A change from the server could not be applied here and was skipped: its record data
    /// does not decode with this replica's schema of its version (two builds of the
    /// application that disagree about a tree). The rest keeps syncing; the record stays as
    /// it was here until a change this replica can read arrives.
    Skipped {
        /// The tree.
        tree: String,
        /// The record revision.
        key: crate::RawKey,
        /// The change's server sequence number.
        seq: u64,
        /// Why it could not be applied.
        reason: String,
    },
}

/// A merged conflict ([`SyncEvent::Conflict`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Conflict {
    /// Tree.
    pub tree: String,
    /// The record revision.
    pub key: crate::RawKey,
    /// The strategy that decided (with the reason if it fell back to last-write-wins).
    pub strategy: String,
    /// Which side won.
    pub winner: crate::sync::Winner,
    /// This replica's side.
    pub mine: String,
    /// The server's side (the other replica's edit).
    pub theirs: String,
    /// The record as merged.
    pub outcome: String,
    /// Holder number of the replica that made the server's side.
    pub other: u32,
    /// The losing side kept as a new record ([`crate::sync::Merge::keep_loser`]).
    pub kept: Option<crate::RawKey>,
}

/// A change to one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEvent {
    /// The local commit number the change belongs to (increasing, gap-free per database).
    pub commit: u64,
    /// The tree.
    pub tree: Arc<str>,
    /// The record.
    pub key: RawKey,
    /// What happened.
    pub kind: EventKind,
    /// The holder number of the replica that made the change ([`crate::Db::replica`] for
    /// changes made here).
    pub origin: u32,
}

impl RecordEvent {
    /// Whether another replica made the change (it arrived through sync).
    pub fn is_remote(&self, db: &crate::Db) -> bool {
        self.origin != db.replica()
    }

    /// The key, typed, if the event is about tree `T`.
    pub fn key_of<T: Record>(&self) -> Option<Key<T>> {
        (&*self.tree == T::TREE).then(|| Key::new(self.key.id, self.key.rev))
    }
}

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The record was created (revision 0).
    Created,
    /// The draft's data changed.
    Updated,
    /// The revision was removed.
    Removed,
    /// A new revision (draft) was made from the previous one.
    RevisionCreated,
    /// The revision was released (frozen).
    Released,
    /// The state of a released revision changed.
    StateChanged {
        /// Previous state.
        old: u32,
        /// New state.
        new: u32,
    },
    /// The record's borrow was granted.
    Borrowed {
        /// The replica now holding it.
        holder: u32,
    },
    /// The record's bytes were rewritten to a newer schema version by `Tree::migrate` (the
    /// value is the same record, in the current layout).
    Migrated {
        /// The version it was stored with.
        from: u32,
        /// The version it is stored with now.
        to: u32,
    },
    /// The record's borrow was returned.
    Returned {
        /// The replica that held it.
        holder: u32,
    },
}

/// A stream of events; see the [module docs](self).
#[derive(Debug)]
pub struct Subscription {
    rx: Pin<Box<async_channel::Receiver<Event>>>,
}

impl Subscription {
    pub(crate) fn new(rx: async_channel::Receiver<Event>) -> Self {
        Subscription { rx: Box::pin(rx) }
    }

    /// The next event if one is waiting; never blocks.
    pub fn try_next(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// All events waiting now; never blocks (for a GUI frame loop).
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.try_next())
    }

    /// Waits for the next event (blocking the thread); `None` once the database is closed and
    /// all events were taken. Do not call from async code: use [`recv`](Self::recv).
    /// (Not on wasm32, where blocking is not allowed.)
    #[cfg(not(target_arch = "wasm32"))]
    pub fn recv_blocking(&self) -> Option<Event> {
        self.rx.recv_blocking().ok()
    }

    /// Waits for the next event at most `timeout` (blocking the thread); `None` if none came
    /// in time, or once the database is closed and all events were taken. Do not call from
    /// async code. (Not on wasm32, where blocking is not allowed.)
    #[cfg(not(target_arch = "wasm32"))]
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        // (A timeout past what an instant can say is none.)
        let deadline = std::time::Instant::now().checked_add(timeout);
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let recv = self.rx.recv();
        let mut recv = std::pin::pin!(recv);
        loop {
            if let Poll::Ready(r) = recv.as_mut().poll(&mut cx) {
                return r.ok();
            }
            let left = deadline.map_or(std::time::Duration::MAX, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() {
                return None;
            }
            // A wake-up unparks this thread; a spurious one just polls again.
            std::thread::park_timeout(left);
        }
    }

    /// Waits for the next event; `None` once the database is closed and all events were taken.
    pub async fn recv(&self) -> Option<Event> {
        self.rx.recv().await.ok()
    }

    /// Number of events waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl futures_core::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.as_mut().poll_next(cx)
    }
}

/// Wakes a thread parked in [`Subscription::recv_timeout`].
#[cfg(not(target_arch = "wasm32"))]
struct Unpark(std::thread::Thread);

#[cfg(not(target_arch = "wasm32"))]
impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// The set of subscribers of one database.
#[derive(Default)]
pub(crate) struct Subscribers {
    senders: std::sync::Mutex<Vec<async_channel::Sender<Event>>>,
}

impl Subscribers {
    pub(crate) fn subscribe(&self) -> Subscription {
        let (tx, rx) = async_channel::unbounded();
        lock(&self.senders).push(tx);
        Subscription::new(rx)
    }

    pub(crate) fn any(&self) -> bool {
        !lock(&self.senders).is_empty()
    }

    /// Delivers events to every live subscriber, in order.
    pub(crate) fn send_all(&self, events: &[Event]) {
        let mut senders = lock(&self.senders);
        // Unbounded channels only fail when the receiver is gone: forget those subscribers.
        senders.retain(|tx| events.iter().all(|e| tx.try_send(e.clone()).is_ok()));
    }

    pub(crate) fn close(&self) {
        for tx in lock(&self.senders).drain(..) {
            tx.close();
        }
    }
}

/// Locks a mutex, recovering from poisoning: the data guarded in rekord (queues, lists of
/// handles) stays consistent even if a holder panicked, because every critical section either
/// completes or leaves the structure as it was.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sync events go between browser tabs as RON: every kind comes back as it was.
    #[test]
    fn sync_events_round_trip_through_ron() {
        let key = crate::RawKey::new(7, 1);
        let events = vec![
            SyncEvent::Connected { head: 3 },
            SyncEvent::Disconnected {
                reason: "gone \"quoted\"".into(),
                retry_in: std::time::Duration::from_millis(1500),
            },
            SyncEvent::Refused {
                reason: "bad token".into(),
            },
            SyncEvent::Progress { cursor: 1, head: 9 },
            SyncEvent::CaughtUp { cursor: 9 },
            SyncEvent::Restored {
                common: 2,
                cursor: 5,
                resent: 1,
                lost: vec![("parts".into(), 4)],
                lost_count: 1,
                incomplete: false,
            },
            SyncEvent::OutboxStale {
                age: std::time::Duration::from_secs(60),
                entries: 2,
            },
            SyncEvent::BorrowRevoked {
                tree: "parts".into(),
                id: 4,
            },
            SyncEvent::Pushed { seq: 10, outbox: 0 },
            SyncEvent::Conflict(Box::new(Conflict {
                tree: "docs".into(),
                key,
                strategy: "three-way".into(),
                winner: crate::sync::Winner::Merged,
                mine: "(a: 1)".into(),
                theirs: "(a: 2)".into(),
                outcome: "(a: 2)".into(),
                other: 3,
                kept: Some(key),
            })),
            SyncEvent::Rejected {
                entry: 4,
                reason: "no".into(),
            },
            SyncEvent::Superseded {
                tree: "parts".into(),
                id: 4,
                holder: 2,
            },
            SyncEvent::Skipped {
                tree: "parts".into(),
                key,
                seq: 11,
                reason: "schema".into(),
            },
        ];
        for e in events {
            let text = ron::to_string(&e).unwrap();
            let back: SyncEvent = ron::from_str(&text).unwrap();
            assert_eq!(back, e, "{text}");
        }
    }
}
