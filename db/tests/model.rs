//! Model-based property test: random sequences of operations (single writes, batches that
//! commit, fail, are dropped or aborted, reopening the file) run against a database file and
//! against a simple in-memory model. After every operation these must agree with the model:
//! the result (Ok, or which error), the events delivered to a subscriber (kinds, keys, commit
//! numbers), and the full contents as seen through iteration, ranges, point reads (repeated,
//! so the hot cache serves them), metadata, and an indexer's mirror of the tree.
//!
//! 64 cases of up to 40 operations by default; set `PROPTEST_CASES` for more.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use rekord::{
    Archived, Batch, BatchTree, Change, Db, Error, Event, EventKind, IndexerStatus, Key,
    LOCAL_REPLICA, RawKey, RecordMeta, Subscription, Tree,
};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

/// The payload of the panics the tests cause on purpose (not printed).
struct IntendedPanic;

fn quiet_intended_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<IntendedPanic>() {
                prev(info);
            }
        }));
    });
}

#[rekord::record(tree = "model_items", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub name: String,
    pub n: u32,
    pub blob: Vec<u8>,
}

const ME: u32 = LOCAL_REPLICA;
/// Ids from here on are never allocated in these tests (they start at 1 and grow by one).
const MISSING_ID: u64 = 1 << 40;

/// What `update` does to a record (the same closure runs on the database and on the model).
fn mutate(it: &mut Item, add: u32, push: u8) -> u32 {
    let old = it.n;
    it.n = it.n.wrapping_add(add);
    it.blob.push(push);
    if it.blob.len() > 24 {
        it.blob.remove(0);
    }
    old
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Clone, Debug)]
enum Target {
    /// Any stored revision (index modulo the number of revisions).
    Any(usize),
    /// The latest revision of a record.
    Latest(usize),
    /// The revision after the latest of a record (never exists).
    NextRev(usize),
    /// An id that does not exist.
    Missing(u64),
}

#[derive(Clone, Debug)]
enum Single {
    Create(Item),
    Update(Target, u32, u8),
    /// `update` whose closure panics: no effect.
    UpdatePanics(Target),
    Replace(Target, Item),
    Remove(Target),
    Release(Target),
    SetState(Target, u32),
    NewRevision(Target),
    Borrow(Target),
    ReturnBorrow(Target),
    Read(Target),
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// `commit()` (ops that failed inside the batch left no trace and the batch goes on).
    Commit,
    /// `db.write(..)` with `?` on every op: the first error aborts the whole batch.
    Write,
    /// The batch is dropped.
    Drop,
    /// `abort()`.
    Abort,
}

#[derive(Clone, Debug)]
enum Op {
    One(Single),
    Batch {
        ops: Vec<Single>,
        end: End,
        /// Use one `BatchTree` for all ops (else the `Batch` shorthands).
        tree_handle: bool,
        /// Check, while the batch is open, that readers still see the committed state.
        check_isolation: bool,
    },
    Reopen,
}

fn item() -> impl Strategy<Value = Item> {
    (
        "[a-z]{0,6}",
        0u32..1000,
        proptest::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(name, n, blob)| Item { name, n, blob })
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        5 => any::<usize>().prop_map(Target::Any),
        8 => any::<usize>().prop_map(Target::Latest),
        1 => any::<usize>().prop_map(Target::NextRev),
        1 => (0u64..4).prop_map(Target::Missing),
    ]
}

fn single() -> impl Strategy<Value = Single> {
    prop_oneof![
        4 => item().prop_map(Single::Create),
        3 => (target(), 0u32..5, any::<u8>()).prop_map(|(t, a, p)| Single::Update(t, a, p)),
        1 => target().prop_map(Single::UpdatePanics),
        2 => (target(), item()).prop_map(|(t, i)| Single::Replace(t, i)),
        2 => target().prop_map(Single::Remove),
        4 => target().prop_map(Single::Release),
        3 => (target(), 0u32..3).prop_map(|(t, s)| Single::SetState(t, s)),
        4 => target().prop_map(Single::NewRevision),
        2 => target().prop_map(Single::Borrow),
        2 => target().prop_map(Single::ReturnBorrow),
        1 => target().prop_map(Single::Read),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        3 => Just(End::Commit),
        2 => Just(End::Write),
        1 => Just(End::Drop),
        1 => Just(End::Abort),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => single().prop_map(Op::One),
        3 => (
            proptest::collection::vec(single(), 1..6),
            end(),
            any::<bool>(),
            proptest::bool::weighted(0.3),
        )
            .prop_map(|(ops, end, tree_handle, check_isolation)| Op::Batch {
                ops,
                end,
                tree_handle,
                check_isolation,
            }),
        1 => Just(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Clone, Debug, PartialEq)]
struct Rev {
    item: Item,
    released: bool,
    state: u32,
}

#[derive(Clone, Debug, Default)]
struct Model {
    revs: BTreeMap<(u64, u32), Rev>,
    /// Borrow holder per existing record id.
    holders: BTreeMap<u64, u32>,
    /// Every id ever created (in committed changes, or earlier in the current batch).
    used_ids: BTreeSet<u64>,
    /// The last commit number.
    commit: u64,
}

/// The error an operation is expected to fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fail {
    NotFound(RawKey),
    NotBorrowed { id: u64, holder: u32 },
    AlreadyBorrowed { id: u64, holder: u32 },
    Released(RawKey),
    NotReleased(RawKey),
    DraftExists(RawKey),
    Other(String),
}

fn fail_of(e: &Error) -> Fail {
    match e {
        Error::NotFound { key, .. } => Fail::NotFound(*key),
        Error::NotBorrowed { key, holder, .. } => Fail::NotBorrowed {
            id: key.id,
            holder: *holder,
        },
        Error::AlreadyBorrowed { key, holder, .. } => Fail::AlreadyBorrowed {
            id: key.id,
            holder: *holder,
        },
        Error::Released { key, .. } => Fail::Released(*key),
        Error::NotReleased { key, .. } => Fail::NotReleased(*key),
        Error::DraftExists { key, .. } => Fail::DraftExists(*key),
        other => Fail::Other(format!("{other:?}")),
    }
}

/// The successful result of an operation.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Unit,
    Key(RawKey),
    N(u32),
    /// The closure panicked (and the panic came through).
    Panicked,
    /// A read: the record, released, state, and the holder (compared on latest revisions only).
    Read(Item, bool, u32, Option<u32>),
}

type Ev = (RawKey, EventKind);

impl Model {
    fn latest(&self, id: u64) -> Option<(RawKey, &Rev)> {
        self.revs
            .range((id, 0)..=(id, u32::MAX))
            .next_back()
            .map(|(&(id, rev), r)| (RawKey::new(id, rev), r))
    }

    fn is_latest(&self, k: RawKey) -> bool {
        self.latest(k.id).is_some_and(|(lk, _)| lk == k)
    }

    fn holder(&self, id: u64) -> u32 {
        self.holders.get(&id).copied().unwrap_or(0)
    }

    fn resolve(&self, t: &Target) -> RawKey {
        let ids: Vec<u64> = self.holders.keys().copied().collect();
        match t {
            Target::Any(i) if !self.revs.is_empty() => {
                let (&(id, rev), _) = self.revs.iter().nth(i % self.revs.len()).unwrap();
                RawKey::new(id, rev)
            }
            Target::Latest(i) if !ids.is_empty() => self.latest(ids[i % ids.len()]).unwrap().0,
            Target::NextRev(i) if !ids.is_empty() => {
                let lk = self.latest(ids[i % ids.len()]).unwrap().0;
                RawKey::new(lk.id, lk.rev + 1)
            }
            Target::Missing(x) => RawKey::new(MISSING_ID + x, 0),
            _ => RawKey::new(MISSING_ID + 7, 3),
        }
    }

    /// A draft that this replica may change: `k`'s revision exists, is a draft, and the record is
    /// borrowed by us.
    fn check_draft(&self, k: RawKey) -> Result<(), Fail> {
        let r = self.revs.get(&(k.id, k.rev)).ok_or(Fail::NotFound(k))?;
        if r.released {
            return Err(Fail::Released(k));
        }
        match self.holder(k.id) {
            ME => Ok(()),
            holder => Err(Fail::NotBorrowed { id: k.id, holder }),
        }
    }

    /// The expected result of `op` on `k`, applied to the model. `created` is the key the
    /// database returned for a create.
    fn apply(
        &mut self,
        op: &Single,
        k: RawKey,
        created: Option<RawKey>,
    ) -> Result<(Val, Vec<Ev>), Fail> {
        let kid = (k.id, k.rev);
        match op {
            Single::Create(it) => {
                let nk = created.ok_or_else(|| Fail::Other("create must succeed".into()))?;
                self.revs.insert(
                    (nk.id, 0),
                    Rev {
                        item: it.clone(),
                        released: false,
                        state: 0,
                    },
                );
                self.holders.insert(nk.id, ME);
                self.used_ids.insert(nk.id);
                Ok((Val::Key(nk), vec![(nk, EventKind::Created)]))
            }
            Single::Update(_, add, push) => {
                self.check_draft(k)?;
                let r = self.revs.get_mut(&kid).unwrap();
                let old = mutate(&mut r.item, *add, *push);
                Ok((Val::N(old), vec![(k, EventKind::Updated)]))
            }
            Single::UpdatePanics(_) => {
                self.check_draft(k)?;
                Ok((Val::Panicked, vec![]))
            }
            Single::Replace(_, it) => {
                self.check_draft(k)?;
                self.revs.get_mut(&kid).unwrap().item = it.clone();
                Ok((Val::Unit, vec![(k, EventKind::Updated)]))
            }
            Single::Remove(_) => {
                self.check_draft(k)?;
                self.revs.remove(&kid);
                if self.latest(k.id).is_none() {
                    self.holders.remove(&k.id);
                }
                Ok((Val::Unit, vec![(k, EventKind::Removed)]))
            }
            Single::Release(_) => {
                self.check_draft(k)?;
                self.revs.get_mut(&kid).unwrap().released = true;
                Ok((Val::Unit, vec![(k, EventKind::Released)]))
            }
            Single::SetState(_, s) => {
                let r = self.revs.get(&kid).ok_or(Fail::NotFound(k))?;
                if !r.released {
                    return Err(Fail::NotReleased(k));
                }
                let holder = self.holder(k.id);
                if holder != ME {
                    return Err(Fail::NotBorrowed { id: k.id, holder });
                }
                let r = self.revs.get_mut(&kid).unwrap();
                if r.state == *s {
                    return Ok((Val::Unit, vec![]));
                }
                let old = std::mem::replace(&mut r.state, *s);
                Ok((
                    Val::Unit,
                    vec![(k, EventKind::StateChanged { old, new: *s })],
                ))
            }
            Single::NewRevision(_) => {
                let (lk, lr) = self.latest(k.id).ok_or(Fail::NotFound(k))?;
                if !lr.released {
                    return Err(Fail::DraftExists(lk));
                }
                let holder = self.holder(k.id);
                if holder != ME {
                    return Err(Fail::NotBorrowed { id: k.id, holder });
                }
                let nk = RawKey::new(lk.id, lk.rev + 1);
                let rev = Rev {
                    item: lr.item.clone(),
                    released: false,
                    state: 0,
                };
                self.revs.insert((nk.id, nk.rev), rev);
                Ok((Val::Key(nk), vec![(nk, EventKind::RevisionCreated)]))
            }
            Single::Borrow(_) => {
                let (lk, _) = self.latest(k.id).ok_or(Fail::NotFound(k))?;
                match self.holder(k.id) {
                    ME => Ok((Val::Unit, vec![])),
                    0 => {
                        self.holders.insert(k.id, ME);
                        Ok((Val::Unit, vec![(lk, EventKind::Borrowed { holder: ME })]))
                    }
                    holder => Err(Fail::AlreadyBorrowed { id: k.id, holder }),
                }
            }
            Single::ReturnBorrow(_) => {
                let (lk, _) = self.latest(k.id).ok_or(Fail::NotFound(k))?;
                let holder = self.holder(k.id);
                if holder != ME {
                    return Err(Fail::NotBorrowed { id: k.id, holder });
                }
                self.holders.insert(k.id, 0);
                Ok((Val::Unit, vec![(lk, EventKind::Returned { holder: ME })]))
            }
            Single::Read(_) => {
                let r = self.revs.get(&kid).ok_or(Fail::NotFound(k))?;
                let holder = self.is_latest(k).then(|| self.holder(k.id));
                Ok((
                    Val::Read(r.item.clone(), r.released, r.state, holder),
                    vec![],
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The database side: the same operation through `Tree`, `BatchTree` or the `Batch` shorthands.

trait Api {
    fn create(&mut self, it: &Item) -> rekord::Result<Key<Item>>;
    fn update(&mut self, k: Key<Item>, add: u32, push: u8) -> rekord::Result<u32>;
    /// `Ok(true)` if the closure ran (and panicked).
    fn update_panics(&mut self, k: Key<Item>) -> rekord::Result<bool>;
    fn replace(&mut self, k: Key<Item>, it: &Item) -> rekord::Result<()>;
    fn remove(&mut self, k: Key<Item>) -> rekord::Result<()>;
    fn release(&mut self, k: Key<Item>) -> rekord::Result<()>;
    fn set_state(&mut self, k: Key<Item>, s: u32) -> rekord::Result<()>;
    fn new_revision(&mut self, k: Key<Item>) -> rekord::Result<Key<Item>>;
    fn borrow(&mut self, k: Key<Item>) -> rekord::Result<()>;
    fn return_borrow(&mut self, k: Key<Item>) -> rekord::Result<()>;
    fn read(&mut self, k: Key<Item>) -> rekord::Result<(Item, RecordMeta)>;
}

macro_rules! api_impl {
    ($ty:ty, $s:ident => $target:expr, $read:expr) => {
        impl Api for $ty {
            fn create(&mut $s, it: &Item) -> rekord::Result<Key<Item>> {
                $target.create(it)
            }
            fn update(&mut $s, k: Key<Item>, add: u32, push: u8) -> rekord::Result<u32> {
                $target.update(k, |it: &mut Item| mutate(it, add, push))
            }
            fn update_panics(&mut $s, k: Key<Item>) -> rekord::Result<bool> {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    $target.update(k, |_: &mut Item| -> () { std::panic::panic_any(IntendedPanic) })
                }));
                match r {
                    Ok(r) => r.map(|()| false),
                    Err(p) if p.is::<IntendedPanic>() => Ok(true),
                    Err(p) => resume_unwind(p),
                }
            }
            fn replace(&mut $s, k: Key<Item>, it: &Item) -> rekord::Result<()> {
                $target.replace(k, it)
            }
            fn remove(&mut $s, k: Key<Item>) -> rekord::Result<()> {
                $target.remove(k)
            }
            fn release(&mut $s, k: Key<Item>) -> rekord::Result<()> {
                $target.release(k)
            }
            fn set_state(&mut $s, k: Key<Item>, st: u32) -> rekord::Result<()> {
                $target.set_state(k, st)
            }
            fn new_revision(&mut $s, k: Key<Item>) -> rekord::Result<Key<Item>> {
                $target.new_revision(k)
            }
            fn borrow(&mut $s, k: Key<Item>) -> rekord::Result<()> {
                $target.borrow(k)
            }
            fn return_borrow(&mut $s, k: Key<Item>) -> rekord::Result<()> {
                $target.return_borrow(k)
            }
            fn read(&mut $s, k: Key<Item>) -> rekord::Result<(Item, RecordMeta)> {
                let f: fn(&mut Self, Key<Item>) -> rekord::Result<(Item, RecordMeta)> = $read;
                f($s, k)
            }
        }
    };
}

struct TreeApi<'a>(&'a Tree<Item>);

api_impl!(TreeApi<'_>, self => self.0, |t, k| {
    let item = t.0.get(k)?;
    // The zero-copy path must agree with the owned copy.
    let n = t.0.with(k, |a| a.n.to_native())?;
    assert_eq!(n, item.n, "Tree::with and Tree::get disagree on {k}");
    Ok((item, t.0.meta(k)?))
});
api_impl!(BatchTree<'_, Item>, self => self, |t, k| {
    let item = t.get(k)?;
    let n = t.with(k, |a| a.n.to_native())?;
    assert_eq!(n, item.n, "BatchTree::with and BatchTree::get disagree on {k}");
    Ok((item, t.meta(k)?))
});
api_impl!(Batch<'_>, self => self, |b, k| {
    let item = b.get(k)?;
    let meta = b.tree::<Item>()?.meta(k)?;
    Ok((item, meta))
});

fn exec(api: &mut impl Api, op: &Single, k: RawKey) -> rekord::Result<Val> {
    let key = Key::<Item>::new(k.id, k.rev);
    Ok(match op {
        Single::Create(it) => Val::Key(api.create(it)?.raw()),
        Single::Update(_, add, push) => Val::N(api.update(key, *add, *push)?),
        Single::UpdatePanics(_) => {
            if api.update_panics(key)? {
                Val::Panicked
            } else {
                Val::Unit
            }
        }
        Single::Replace(_, it) => {
            api.replace(key, it)?;
            Val::Unit
        }
        Single::Remove(_) => {
            api.remove(key)?;
            Val::Unit
        }
        Single::Release(_) => {
            api.release(key)?;
            Val::Unit
        }
        Single::SetState(_, s) => {
            api.set_state(key, *s)?;
            Val::Unit
        }
        Single::NewRevision(_) => Val::Key(api.new_revision(key)?.raw()),
        Single::Borrow(_) => {
            api.borrow(key)?;
            Val::Unit
        }
        Single::ReturnBorrow(_) => {
            api.return_borrow(key)?;
            Val::Unit
        }
        Single::Read(_) => {
            let (item, meta) = api.read(key)?;
            assert_eq!(meta.version, 1, "schema version of {k}");
            Val::Read(item, meta.released, meta.state, Some(meta.holder))
        }
    })
}

fn target_of(op: &Single) -> Option<&Target> {
    match op {
        Single::Create(_) => None,
        Single::Update(t, ..)
        | Single::UpdatePanics(t)
        | Single::Replace(t, _)
        | Single::Remove(t)
        | Single::Release(t)
        | Single::SetState(t, _)
        | Single::NewRevision(t)
        | Single::Borrow(t)
        | Single::ReturnBorrow(t)
        | Single::Read(t) => Some(t),
    }
}

/// Runs one operation on the database (through `api`) and on the model; compares the results.
/// Returns the events the model predicts if the operation succeeded, `None` if it failed (as
/// predicted).
fn step(m: &mut Model, api: &mut impl Api, op: &Single) -> Result<Option<Vec<Ev>>, String> {
    let k = target_of(op)
        .map(|t| m.resolve(t))
        .unwrap_or(RawKey::new(0, 0));
    let got = exec(api, op, k);
    let created = match (op, &got) {
        (Single::Create(_), Ok(Val::Key(nk))) => {
            if nk.rev != 0 || nk.id == 0 || nk.id >= MISSING_ID || m.used_ids.contains(&nk.id) {
                return Err(format!(
                    "create returned {nk}, not a fresh id (used: {:?})",
                    m.used_ids
                ));
            }
            Some(*nk)
        }
        _ => None,
    };
    let before = m.clone();
    let expected = m.apply(op, k, created);
    let mut got = got.map_err(|e| fail_of(&e));
    // Holders of non-latest revisions are not part of the model.
    if let (Ok((Val::Read(_, _, _, None), _)), Ok(Val::Read(_, _, _, h))) = (&expected, &mut got) {
        *h = None;
    }
    let expected_val = expected
        .as_ref()
        .map(|(v, _)| v.clone())
        .map_err(Clone::clone);
    if expected_val != got {
        return Err(format!(
            "{op:?} on {k}: database gave {got:?}, model expects {expected_val:?}\nmodel before: {before:#?}"
        ));
    }
    Ok(expected.ok().map(|(_, ev)| ev))
}

// ---------------------------------------------------------------------------------------------
// The test driver

/// What an indexer sees: a copy of the tree built from replay and change notifications.
type Mirror = Arc<Mutex<BTreeMap<(u64, u32), (Item, RecordMeta)>>>;

fn item_of(a: &Archived<Item>) -> Item {
    Item {
        name: a.name.as_str().to_owned(),
        n: a.n.to_native(),
        blob: a.blob.to_vec(),
    }
}

/// An indexer that mirrors the tree and asserts that every change is consistent with what it
/// saw before (a failed assertion disables it, which `full_check` reports).
fn mirror_indexer(mirror: Mirror) -> impl FnMut(&Change<'_, Item>) + Send + 'static {
    move |c: &Change<'_, Item>| {
        let mut m = mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = (c.key.id(), c.key.rev());
        let before = m.get(&k).cloned();
        if c.kind == EventKind::Removed {
            let before = before.unwrap_or_else(|| panic!("removal of unknown {k:?}"));
            assert_eq!(
                c.old.map(item_of),
                Some(before.0),
                "old value of removed {k:?}"
            );
            assert!(
                c.new.is_none() && c.meta.is_none(),
                "removal of {k:?} with a new value"
            );
            m.remove(&k);
            return;
        }
        let new = item_of(
            c.new
                .unwrap_or_else(|| panic!("{:?} of {k:?} without new value", c.kind)),
        );
        let meta = c
            .meta
            .unwrap_or_else(|| panic!("{:?} of {k:?} without meta", c.kind));
        match (c.kind, before) {
            (EventKind::Created, None) => {}
            (EventKind::Created, Some(_)) => panic!("created {k:?} again (replay: {})", c.replay),
            (EventKind::RevisionCreated, None) => {
                let prev = m.get(&(k.0, k.1.wrapping_sub(1)));
                assert_eq!(
                    prev.map(|p| &p.0),
                    Some(&new),
                    "revision {k:?} is not a copy"
                );
            }
            (EventKind::Updated, Some(b)) => {
                assert_eq!(c.old.map(item_of), Some(b.0), "old value of updated {k:?}");
            }
            (kind, Some(b)) => {
                assert!(c.old.is_none(), "{kind:?} of {k:?} with an old value");
                assert_eq!(new, b.0, "{kind:?} changed the data of {k:?}");
            }
            (kind, None) => panic!("{kind:?} of unknown {k:?}"),
        }
        m.insert(k, (new, meta));
    }
}

struct Live {
    sub: Subscription,
    tree: Tree<Item>,
    mirror: Mirror,
    indexer: IndexerStatus,
    db: Db,
}

fn open(path: &Path) -> Result<Live, String> {
    let db = Db::open(path).map_err(|e| format!("open: {e}"))?;
    let tree = db.tree::<Item>().map_err(|e| format!("tree: {e}"))?;
    let mirror = Mirror::default();
    let indexer = tree
        .register_indexer(mirror_indexer(mirror.clone()))
        .map_err(|e| format!("register_indexer: {e}"))?;
    let sub = db.subscribe();
    Ok(Live {
        sub,
        tree,
        mirror,
        indexer,
        db,
    })
}

fn err(e: Error) -> String {
    format!("unexpected error: {e} ({e:?})")
}

/// Checks the events delivered since the last call: exactly `expected`, all with the next
/// commit number (or nothing at all if `expected` is empty).
fn check_events(live: &Live, m: &mut Model, expected: &[Ev]) -> Result<(), String> {
    let got: Vec<(u64, String, RawKey, EventKind)> = live
        .sub
        .try_iter()
        .map(|e| match e {
            Event::Record(r) => (r.commit, r.tree.to_string(), r.key, r.kind),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    if !expected.is_empty() {
        m.commit += 1;
    }
    let want: Vec<(u64, String, RawKey, EventKind)> = expected
        .iter()
        .map(|(k, kind)| (m.commit, "model_items".to_string(), *k, *kind))
        .collect();
    if got != want {
        return Err(format!("events: got {got:?}, expected {want:?}"));
    }
    if live.db.last_commit() != m.commit {
        return Err(format!(
            "last_commit {} but model says {}",
            live.db.last_commit(),
            m.commit
        ));
    }
    Ok(())
}

/// Compares everything readable from the tree with the model.
fn full_check(live: &Live, m: &Model) -> Result<(), String> {
    let tree = &live.tree;
    // The indexer's mirror.
    if let Some(f) = live.indexer.failure() {
        return Err(format!("the indexer failed: {f}"));
    }
    {
        let mirror = live
            .mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys: Vec<_> = mirror.keys().copied().collect();
        let want: Vec<_> = m.revs.keys().copied().collect();
        if keys != want {
            return Err(format!(
                "indexer mirror has keys {keys:?}, model has {want:?}"
            ));
        }
        for (kid, (item, meta)) in mirror.iter() {
            let want = &m.revs[kid];
            let k = RawKey::new(kid.0, kid.1);
            if *item != want.item
                || meta.released != want.released
                || meta.state != want.state
                || (m.is_latest(k) && meta.holder != m.holder(k.id))
            {
                return Err(format!(
                    "indexer mirror has {k} = {item:?} {meta:?}, model has {want:?} holder {}",
                    m.holder(k.id)
                ));
            }
        }
    }
    // Iteration, forward and backward.
    let mut seen: BTreeMap<(u64, u32), (Rev, u32)> = BTreeMap::new();
    for r in tree.iter().map_err(err)? {
        let r = r.map_err(err)?;
        let k = r.key();
        let meta = r.meta();
        let item = r.to_owned().map_err(err)?;
        if r.name.as_str() != item.name
            || r.n.to_native() != item.n
            || r.blob.as_slice() != item.blob.as_slice()
        {
            return Err(format!("zero-copy view and owned copy of {k} differ"));
        }
        if meta.version != 1 {
            return Err(format!("{k} has schema version {}", meta.version));
        }
        let rev = Rev {
            item,
            released: meta.released,
            state: meta.state,
        };
        if seen.insert((k.id(), k.rev()), (rev, meta.holder)).is_some() {
            return Err(format!("{k} iterated twice"));
        }
    }
    let got_keys: Vec<_> = seen.keys().copied().collect();
    let want_keys: Vec<_> = m.revs.keys().copied().collect();
    if got_keys != want_keys {
        return Err(format!("stored keys {got_keys:?}, model has {want_keys:?}"));
    }
    let listed: Vec<(u64, u32)> = tree
        .keys()
        .map_err(err)?
        .into_iter()
        .map(|k| (k.id(), k.rev()))
        .collect();
    if listed != want_keys {
        return Err(format!("keys() gave {listed:?}, model has {want_keys:?}"));
    }
    let back: Vec<(u64, u32)> = tree
        .iter()
        .map_err(err)?
        .rev()
        .map(|r| r.map(|r| (r.key().id(), r.key().rev())))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    if back.iter().rev().ne(want_keys.iter()) {
        return Err(format!("backward iteration gave {back:?}"));
    }
    for (kid, (rev, holder)) in &seen {
        let want = &m.revs[kid];
        if rev != want {
            return Err(format!("{kid:?}: stored {rev:?}, model has {want:?}"));
        }
        let k = RawKey::new(kid.0, kid.1);
        if m.is_latest(k) && *holder != m.holder(k.id) {
            return Err(format!(
                "{k}: holder {holder}, model has {}",
                m.holder(k.id)
            ));
        }
    }
    if tree.len().map_err(err)? != m.revs.len() as u64 {
        return Err(format!(
            "len {} but model has {}",
            tree.len().map_err(err)?,
            m.revs.len()
        ));
    }
    // Point reads, repeated so that the hot cache serves them (and must not serve stale data).
    for (&(id, rev), want) in &m.revs {
        let key = Key::<Item>::new(id, rev);
        for _ in 0..3 {
            let got = tree.get(key).map_err(err)?;
            if got != want.item {
                return Err(format!(
                    "get({key}) gave {got:?}, model has {:?}",
                    want.item
                ));
            }
            let n = tree.with(key, |a| a.n.to_native()).map_err(err)?;
            if n != want.item.n {
                return Err(format!(
                    "with({key}) gave n = {n}, model has {}",
                    want.item.n
                ));
            }
        }
        let meta = tree.meta(key).map_err(err)?;
        if meta.released != want.released || meta.state != want.state {
            return Err(format!("meta({key}) = {meta:?}, model has {want:?}"));
        }
        if !tree.contains(key).map_err(err)? {
            return Err(format!("contains({key}) is false"));
        }
    }
    // Per record.
    for &id in m.holders.keys() {
        let latest = tree.latest(id).map_err(err)?.map(Key::raw);
        let want = m.latest(id).map(|(k, _)| k);
        if latest != want {
            return Err(format!("latest({id}) = {latest:?}, model has {want:?}"));
        }
        let revs: Vec<RawKey> = tree
            .revisions(id)
            .map_err(err)?
            .into_iter()
            .map(Key::raw)
            .collect();
        let want: Vec<RawKey> = m
            .revs
            .range((id, 0)..=(id, u32::MAX))
            .map(|(&(i, r), _)| RawKey::new(i, r))
            .collect();
        if revs != want {
            return Err(format!("revisions({id}) = {revs:?}, model has {want:?}"));
        }
        let ranged: Vec<RawKey> = tree
            .range(id..=id)
            .map_err(err)?
            .map(|r| r.map(|r| r.key().raw()))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        if ranged != want {
            return Err(format!(
                "range({id}..={id}) = {ranged:?}, model has {want:?}"
            ));
        }
    }
    // Ranges with every kind of bound, around every id (and at the ends of the id space).
    let ids: Vec<u64> = m.holders.keys().copied().chain([0, u64::MAX]).collect();
    for &id in &ids {
        type Keys = Vec<(u64, u32)>;
        let keys_of = |r: rekord::Result<rekord::Iter<Item>>| -> Result<Keys, String> {
            r.map_err(err)?
                .map(|r| r.map(|r| (r.key().id(), r.key().rev())))
                .collect::<Result<_, _>>()
                .map_err(err)
        };
        let want = |f: &dyn Fn(u64) -> bool| -> Keys {
            m.revs.keys().copied().filter(|k| f(k.0)).collect()
        };
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let cases: [(&str, Keys, Keys); 5] = [
            ("..id", keys_of(tree.range(..id))?, want(&|x| x < id)),
            ("..=id", keys_of(tree.range(..=id))?, want(&|x| x <= id)),
            ("id..", keys_of(tree.range(id..))?, want(&|x| x >= id)),
            (
                "(Excluded(id), Unbounded)",
                keys_of(tree.range((Excluded(id), Unbounded)))?,
                want(&|x| x > id),
            ),
            (
                "(Excluded(id), Included(id + 1))",
                keys_of(tree.range((Excluded(id), Included(id.saturating_add(1)))))?,
                want(&|x| x > id && x <= id.saturating_add(1)),
            ),
        ];
        for (what, got, want) in cases {
            if got != want {
                return Err(format!(
                    "range {what} with id = {id}: {got:?}, model has {want:?}"
                ));
            }
        }
    }
    // Things that do not exist.
    let missing = Key::<Item>::new(MISSING_ID, 0);
    if tree.contains(missing).map_err(err)? || tree.latest(MISSING_ID).map_err(err)?.is_some() {
        return Err("a missing record is visible".into());
    }
    if !matches!(tree.get(missing), Err(Error::NotFound { .. })) {
        return Err("get of a missing record is not NotFound".into());
    }
    for (&id, _) in m.holders.iter().take(3) {
        let next = m.latest(id).unwrap().0.rev + 1;
        if !matches!(tree.get(Key::new(id, next)), Err(Error::NotFound { .. })) {
            return Err(format!("get({id}@{next}) is not NotFound"));
        }
    }
    Ok(())
}

/// Runs `ops` in one batch, then ends it as `end` says. Returns the model as it is after the
/// batch and the predicted events (both only meaningful if the batch commits).
fn run_batch(
    live: &Live,
    m: &Model,
    ops: &[Single],
    end: End,
    tree_handle: bool,
    check_isolation: bool,
) -> Result<(Model, Vec<Ev>, bool), String> {
    let mut work = m.clone();
    let mut events = Vec::new();
    if let End::Write = end {
        // db.write: every op is `?`-ed; the first error aborts the batch.
        let mut mismatch = None;
        let mut failed = false;
        let r = live.db.write(|b| {
            for op in ops {
                match step(&mut work, b, op) {
                    Ok(Some(ev)) => events.extend(ev),
                    Ok(None) => {
                        failed = true;
                        return Err(Error::IdsExhausted);
                    }
                    Err(e) => {
                        mismatch = Some(e);
                        return Err(Error::IdsExhausted);
                    }
                }
            }
            if check_isolation {
                full_check(live, m).map_err(|e| {
                    mismatch = Some(format!("during an open batch: {e}"));
                    Error::IdsExhausted
                })?;
            }
            Ok(())
        });
        if let Some(e) = mismatch {
            return Err(e);
        }
        return match r {
            Ok(()) if !failed => Ok((work, events, true)),
            Err(Error::IdsExhausted) if failed => Ok((m.clone(), vec![], false)),
            other => Err(format!(
                "db.write returned {other:?} (an op failed: {failed})"
            )),
        };
    }
    let mut b = live.db.batch().map_err(err)?;
    if tree_handle {
        let mut t = b.tree::<Item>().map_err(err)?;
        for op in ops {
            if let Some(ev) = step(&mut work, &mut t, op)? {
                events.extend(ev);
            }
        }
    } else {
        for op in ops {
            if let Some(ev) = step(&mut work, &mut b, op)? {
                events.extend(ev);
            }
        }
    }
    if check_isolation {
        full_check(live, m).map_err(|e| format!("during an open batch: {e}"))?;
    }
    match end {
        End::Commit => {
            b.commit().map_err(err)?;
            Ok((work, events, true))
        }
        End::Drop => {
            drop(b);
            Ok((m.clone(), vec![], false))
        }
        End::Abort => {
            b.abort();
            Ok((m.clone(), vec![], false))
        }
        End::Write => unreachable!(),
    }
}

fn run(ops: &[Op]) -> Result<(), String> {
    quiet_intended_panics();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("model.rekord");
    let mut live = open(&path)?;
    let mut m = Model::default();
    full_check(&live, &m)?;
    for (i, op) in ops.iter().enumerate() {
        let ctx = |e: String| format!("op #{i} {op:?}: {e}");
        match op {
            Op::One(single) => {
                let ev = step(&mut m, &mut TreeApi(&live.tree), single).map_err(ctx)?;
                check_events(&live, &mut m, &ev.unwrap_or_default()).map_err(ctx)?;
            }
            Op::Batch {
                ops,
                end,
                tree_handle,
                check_isolation,
            } => {
                let (next, events, committed) =
                    run_batch(&live, &m, ops, *end, *tree_handle, *check_isolation).map_err(ctx)?;
                // Ids allocated in an aborted batch may be handed out again, so `used_ids` is
                // only taken from committed batches (which `next` is only then).
                m = next;
                if !committed && !events.is_empty() {
                    return Err(ctx("aborted batch with events".into()));
                }
                check_events(&live, &mut m, &events).map_err(ctx)?;
            }
            Op::Reopen => {
                let last = live.db.last_commit();
                drop(live);
                live = open(&path).map_err(ctx)?;
                if live.db.last_commit() != last {
                    return Err(ctx(format!(
                        "last_commit {} after reopen, was {last}",
                        live.db.last_commit()
                    )));
                }
            }
        }
        full_check(&live, &m).map_err(ctx)?;
    }
    drop(live);
    // Everything committed survives a final reopen.
    let live = open(&path)?;
    full_check(&live, &m).map_err(|e| format!("after the final reopen: {e}"))?;
    if live.db.last_commit() != m.commit {
        return Err(format!(
            "last_commit {} after the final reopen, model says {}",
            live.db.last_commit(),
            m.commit
        ));
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // No regression files next to the sources; a failure prints the minimal case.
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn database_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A fixed scenario through the same driver: the model test's own plumbing works and covers
/// the main paths even if the random cases happen to miss some.
#[test]
fn scripted_scenario_matches_model() {
    let it = |name: &str, n: u32| Item {
        name: name.into(),
        n,
        blob: vec![1, 2, 3],
    };
    let l = Target::Latest;
    let ops = vec![
        Op::One(Single::Create(it("a", 1))),
        Op::One(Single::Create(it("b", 2))),
        Op::One(Single::Update(l(0), 3, 9)),
        Op::One(Single::Release(l(0))),
        Op::One(Single::Update(l(0), 3, 9)),
        Op::One(Single::Remove(l(0))),
        Op::One(Single::SetState(l(0), 2)),
        Op::One(Single::SetState(l(0), 2)),
        Op::One(Single::SetState(l(1), 2)),
        Op::One(Single::NewRevision(l(0))),
        Op::One(Single::NewRevision(l(0))),
        Op::One(Single::SetState(Target::Any(0), 1)),
        Op::One(Single::ReturnBorrow(l(0))),
        Op::One(Single::ReturnBorrow(l(0))),
        Op::One(Single::SetState(Target::Any(0), 0)),
        Op::One(Single::Update(l(0), 1, 1)),
        Op::One(Single::Borrow(l(0))),
        Op::One(Single::Borrow(l(0))),
        Op::One(Single::Read(Target::Any(0))),
        Op::One(Single::UpdatePanics(l(0))),
        Op::One(Single::UpdatePanics(Target::Any(0))),
        Op::One(Single::Replace(l(0), it("a2", 5))),
        Op::Reopen,
        Op::One(Single::Remove(l(0))),
        Op::One(Single::Read(l(0))),
        Op::One(Single::Remove(Target::Missing(0))),
        Op::One(Single::Borrow(Target::NextRev(0))),
        Op::Batch {
            ops: vec![
                Single::Create(it("c", 3)),
                Single::Update(l(2), 1, 1),
                Single::Remove(l(1)),
                Single::Read(l(1)),
            ],
            end: End::Drop,
            tree_handle: true,
            check_isolation: true,
        },
        Op::Batch {
            ops: vec![
                Single::Create(it("c", 3)),
                Single::Update(l(2), 1, 1),
                Single::UpdatePanics(l(2)),
                Single::Release(l(2)),
                Single::Update(l(2), 1, 1),
                Single::NewRevision(l(2)),
                Single::Read(l(2)),
            ],
            end: End::Commit,
            tree_handle: false,
            check_isolation: true,
        },
        Op::Batch {
            ops: vec![
                Single::Create(it("d", 4)),
                Single::Remove(Target::Missing(1)),
            ],
            end: End::Write,
            tree_handle: false,
            check_isolation: false,
        },
        Op::Batch {
            ops: vec![Single::Create(it("d", 4)), Single::ReturnBorrow(l(0))],
            end: End::Write,
            tree_handle: false,
            check_isolation: false,
        },
        Op::Reopen,
    ];
    run(&ops).unwrap();
}

/// The hot cache under concurrent readers: once a commit returned, no reader may see (or leave
/// behind in the cache) the value from before it. Readers hammer the same keys the writer
/// changes, so that values read before a commit are offered to the cache after it.
#[test]
fn concurrent_readers_never_see_stale_values() {
    let db = Db::memory().unwrap();
    let tree = db.tree::<Item>().unwrap();
    let keys: Vec<Key<Item>> = (0..2)
        .map(|i| {
            tree.create(&Item {
                name: format!("k{i}"),
                n: 0,
                blob: vec![],
            })
            .unwrap()
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for &k in &keys {
                        let _ = tree.with(k, |a| a.n.to_native()).unwrap();
                    }
                }
            });
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Bounded in time as well: the writer competes with the readers for the CPU.
            let until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
            for i in (1..=2000u32).take_while(|_| std::time::Instant::now() < until) {
                let k = keys[i as usize % keys.len()];
                tree.update(k, |it| it.n = i).unwrap();
                for _ in 0..3 {
                    assert_eq!(
                        tree.get(k).unwrap().n,
                        i,
                        "stale read of {k} after commit {i}"
                    );
                }
            }
        }));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
}
