//! Optimistic trees: edits without borrows, and how concurrent edits are merged.
//!
//! A tree of a synced database becomes *optimistic* with
//! [`SyncConfig::optimistic`](super::SyncConfig::optimistic) and a [`Merge`] strategy, or
//! through its record type: `#[rekord::record(tree = "docs", version = 1, merge =
//! "three-way")]` (`"last-write-wins"`, `"local-wins"`, `"remote-wins"`, `"three-way"`,
//! `"larger-wins:<field>"`; the configuration wins where both name a tree). A strategy given
//! by the type is known once the tree was opened with it (`Db::tree`, a batch) in this run;
//! a conflict met before that, right after a restart, is merged with the strategy the edits
//! were made under (remembered with them).
//! Records in it can be updated and replaced without borrowing them (unless another replica
//! holds the borrow, which still blocks everyone else). Such an edit travels as
//! [`ChangeKind::Edit`](crate::proto::ChangeKind::Edit), stamped with a hybrid logical clock
//! ([`Hlc`]) and based on the last server change this replica had applied. The server
//! accepts it only if no other replica changed the record since; otherwise it answers with
//! its current version (and the base version, while its log holds it), and the replica
//! that lost the race merges:
//!
//! - [`Merge::last_write_wins`]: the side with the later hybrid logical clock timestamp
//!   (ties broken by replica number) wins whole;
//! - [`Merge::local_wins`] / [`Merge::remote_wins`]: this replica's / the server's side wins;
//! - [`Merge::three_way`]: field by field against the base version, using the schema: a
//!   field changed on one side only takes that side's value, a field changed on both sides
//!   the later one's (by clock). Without a base, or across schema versions, it falls back
//!   to last-write-wins (and says so in the event);
//! - [`Merge::larger_wins`]: the side whose named field is larger wins whole (ties and
//!   incomparable values: last-write-wins);
//! - [`Merge::custom`]: a function of the application `(base, mine, theirs) -> merged`.
//!
//! The outcome is written locally (with record events), sent to the server as a new edit
//! based on the version it merged with (unless the server's side won as is), and reported
//! as [`SyncEvent::Conflict`](crate::SyncEvent::Conflict) with both sides and the outcome as
//! RON. With [`Merge::keep_loser`] the losing side is also kept, as a new record of the
//! tree whose key the event names. Every replica applies the server's changes in the
//! server's order, so all of them end with the same state whatever the order in which the
//! edits reached the server; with last-write-wins (and three-way on conflicting fields)
//! the surviving value is even the same for every order: the one with the latest clock.
//!
//! Creating, removing, releasing, new revisions and state changes still need the borrow;
//! a record created in an optimistic tree is borrowed by nobody.

use crate::schema::Schema;
use crate::schema::dynamic::{self, Value};
use crate::{Error, Record, Result};
use std::sync::Arc;

/// A hybrid logical clock timestamp: milliseconds since the Unix epoch in the high 48 bits,
/// a counter in the low 16, so that it never goes backwards and orders causally related
/// edits even when wall clocks disagree.
pub type Hlc = u64;

/// The next timestamp after `last` at wall time `now_ms`.
pub(crate) fn hlc_next(last: Hlc, now_ms: u64) -> Hlc {
    let physical = now_ms << 16;
    physical.max(last.saturating_add(1))
}

/// One side of a conflict, as stored: schema version and record bytes.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// Schema version of `data`.
    pub version: u32,
    /// The record's rkyv bytes.
    pub data: &'a [u8],
}

/// The merge of a custom strategy, type-erased.
type CustomFn = dyn Fn(
        &dyn Fn(Side<'_>) -> Result<Value>,
        Option<Side<'_>>,
        Side<'_>,
        Side<'_>,
    ) -> Result<(u32, Vec<u8>)>
    + Send
    + Sync;

#[derive(Clone)]
enum Kind {
    LastWriteWins,
    LocalWins,
    RemoteWins,
    ThreeWay,
    LargerWins(String),
    Custom(Arc<CustomFn>),
}

/// How the concurrent edits of an optimistic tree are merged (see the [module](self)).
#[derive(Clone)]
pub struct Merge {
    kind: Kind,
    keep_loser: bool,
}

impl std::fmt::Debug for Merge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("strategy", &self.name())
            .field("keep_loser", &self.keep_loser)
            .finish()
    }
}

impl Merge {
    fn of(kind: Kind) -> Self {
        Merge {
            kind,
            keep_loser: false,
        }
    }

    /// The side with the later hybrid logical clock timestamp wins (ties: the higher
    /// replica number).
    pub fn last_write_wins() -> Self {
        Merge::of(Kind::LastWriteWins)
    }

    /// This replica's side wins.
    pub fn local_wins() -> Self {
        Merge::of(Kind::LocalWins)
    }

    /// The server's side wins (this replica's edit is undone locally).
    pub fn remote_wins() -> Self {
        Merge::of(Kind::RemoteWins)
    }

    /// Field-level three-way merge against the base version (see the [module](self)).
    pub fn three_way() -> Self {
        Merge::of(Kind::ThreeWay)
    }

    /// The side whose top-level `field` is larger wins.
    pub fn larger_wins(field: impl Into<String>) -> Self {
        Merge::of(Kind::LargerWins(field.into()))
    }

    /// The application merges: `f(base, mine, theirs)` returns the record to keep. `base`
    /// is the version both sides started from (`None` when the server's log no longer
    /// holds it). Older schema versions are read as `T` the usual way (migration chain or
    /// projection by field name). `f` runs on the sync thread: keep it quick, and do not
    /// call the database from it.
    pub fn custom<T: Record>(f: impl Fn(Option<&T>, &T, &T) -> T + Send + Sync + 'static) -> Self {
        let erased = move |dynamic: &dyn Fn(Side<'_>) -> Result<Value>,
                           base: Option<Side<'_>>,
                           mine: Side<'_>,
                           theirs: Side<'_>|
              -> Result<(u32, Vec<u8>)> {
            let base = base.map(|b| typed::<T>(dynamic, b)).transpose()?;
            let mine = typed::<T>(dynamic, mine)?;
            let theirs = typed::<T>(dynamic, theirs)?;
            let merged = f(base.as_ref(), &mine, &theirs);
            let data = merged.__encode(Vec::new()).map_err(|e| Error::Encode {
                tree: T::TREE.to_owned(),
                reason: e.to_string(),
            })?;
            Ok((T::VERSION, data))
        };
        Merge::of(Kind::Custom(Arc::new(erased)))
    }

    /// Also keep the losing side (for a field-level merge: this replica's side) as a new
    /// record of the tree, created by this replica; [`SyncEvent::Conflict`](crate::SyncEvent::Conflict)
    /// names its key.
    pub fn keep_loser(mut self) -> Self {
        self.keep_loser = true;
        self
    }

    /// Whether [`Merge::keep_loser`] is set.
    pub fn keeps_loser(&self) -> bool {
        self.keep_loser
    }

    /// The strategy named `name` (as [`Merge::name`] gives it; not a custom one).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "last-write-wins" => Merge::last_write_wins(),
            "local-wins" => Merge::local_wins(),
            "remote-wins" => Merge::remote_wins(),
            "three-way" => Merge::three_way(),
            other => Merge::larger_wins(
                other
                    .strip_prefix("larger-wins(")?
                    .strip_suffix(')')?
                    .to_owned(),
            ),
        })
    }

    /// The strategy's name, as in events.
    pub fn name(&self) -> String {
        match &self.kind {
            Kind::LastWriteWins => "last-write-wins".into(),
            Kind::LocalWins => "local-wins".into(),
            Kind::RemoteWins => "remote-wins".into(),
            Kind::ThreeWay => "three-way".into(),
            Kind::LargerWins(f) => format!("larger-wins({f})"),
            Kind::Custom(_) => "custom".into(),
        }
    }
}

/// Decodes one side as `T`.
fn typed<T: Record>(dynamic: &dyn Fn(Side<'_>) -> Result<Value>, side: Side<'_>) -> Result<T> {
    if side.version == T::VERSION {
        let a = T::__access(side.data).map_err(|e| Error::Corrupt {
            tree: T::TREE.to_owned(),
            key: crate::RawKey::new(0, 0),
            reason: format!("a side of a conflict does not decode: {e}"),
        })?;
        return T::__deserialize(a).map_err(|e| Error::Corrupt {
            tree: T::TREE.to_owned(),
            key: crate::RawKey::new(0, 0),
            reason: format!("a side of a conflict does not decode: {e}"),
        });
    }
    let value = dynamic(side)?;
    dynamic::from_value::<T>(value).map_err(|e| Error::Incompatible {
        tree: T::TREE.to_owned(),
        key: crate::RawKey::new(0, 0),
        stored: side.version,
        expected: T::VERSION,
        path: e.path,
        reason: e.message,
    })
}

/// Which side a merge kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Winner {
    /// This replica's side, as it was.
    Mine,
    /// The server's side, as it was.
    Theirs,
    /// A merge of both.
    Merged,
}

/// What a merge decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) winner: Winner,
    /// The merged record (`Winner::Merged`): schema version and bytes.
    pub(crate) merged: Option<(u32, Vec<u8>)>,
    /// Why a strategy fell back to another, if it did.
    pub(crate) note: Option<String>,
}

impl Outcome {
    fn side(winner: Winner) -> Self {
        Outcome {
            winner,
            merged: None,
            note: None,
        }
    }
}

/// A side with its clock and replica, for the merge.
pub(crate) struct Stamped<'a> {
    pub(crate) side: Side<'a>,
    pub(crate) hlc: Hlc,
    pub(crate) replica: u32,
}

/// Whether `mine` is later than `theirs` (clock, then replica number).
fn mine_later(mine: &Stamped<'_>, theirs: &Stamped<'_>) -> bool {
    (mine.hlc, mine.replica) > (theirs.hlc, theirs.replica)
}

fn lww(mine: &Stamped<'_>, theirs: &Stamped<'_>) -> Winner {
    if mine_later(mine, theirs) {
        Winner::Mine
    } else {
        Winner::Theirs
    }
}

impl Merge {
    /// Merges `mine` (this replica's current version) with `theirs` (the server's), given
    /// the base both started from; `schema` gives the stored schema of a version.
    pub(crate) fn merge(
        &self,
        schema: &dyn Fn(u32) -> Result<Arc<Schema>>,
        base: Option<Side<'_>>,
        mine: &Stamped<'_>,
        theirs: &Stamped<'_>,
    ) -> Result<Outcome> {
        let decode = |side: Side<'_>| -> Result<Value> {
            let s = schema(side.version)?;
            dynamic::decode(&s, side.data).map_err(|e| Error::Corrupt {
                tree: s.tree.clone(),
                key: crate::RawKey::new(0, 0),
                reason: format!("a side of a conflict does not decode: {e}"),
            })
        };
        if mine.side.version == theirs.side.version && mine.side.data == theirs.side.data {
            return Ok(Outcome::side(Winner::Theirs));
        }
        match &self.kind {
            Kind::LastWriteWins => Ok(Outcome::side(lww(mine, theirs))),
            Kind::LocalWins => Ok(Outcome::side(Winner::Mine)),
            Kind::RemoteWins => Ok(Outcome::side(Winner::Theirs)),
            Kind::LargerWins(field) => {
                let (m, t) = (decode(mine.side)?, decode(theirs.side)?);
                let order = match (field_of(&m, field), field_of(&t, field)) {
                    (Some(a), Some(b)) => compare(a, b),
                    _ => None,
                };
                Ok(match order {
                    Some(std::cmp::Ordering::Greater) => Outcome::side(Winner::Mine),
                    Some(std::cmp::Ordering::Less) => Outcome::side(Winner::Theirs),
                    Some(std::cmp::Ordering::Equal) => Outcome::side(lww(mine, theirs)),
                    None => Outcome {
                        note: Some(format!(
                            "field `{field}` is missing or not comparable; last-write-wins decided"
                        )),
                        ..Outcome::side(lww(mine, theirs))
                    },
                })
            }
            Kind::ThreeWay => {
                let fallback = |why: &str| Outcome {
                    note: Some(format!("{why}; last-write-wins decided")),
                    ..Outcome::side(lww(mine, theirs))
                };
                let Some(base) = base else {
                    return Ok(fallback("the server no longer has the base version"));
                };
                let version = mine.side.version;
                if base.version != version || theirs.side.version != version {
                    return Ok(fallback("the sides have different schema versions"));
                }
                let (b, m, t) = (decode(base)?, decode(mine.side)?, decode(theirs.side)?);
                let (Value::Struct(b), Value::Struct(m), Value::Struct(t)) = (b, m, t) else {
                    return Ok(fallback("the record is not a struct"));
                };
                let later = mine_later(mine, theirs);
                let mut merged = Vec::with_capacity(m.len());
                for (name, mv) in m {
                    let tv = t.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
                    let bv = b.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
                    let value = match tv {
                        None => mv,
                        Some(tv) if *tv == mv => mv,
                        Some(tv) if bv == Some(&mv) => tv.clone(),
                        Some(tv) if bv == Some(tv) => mv,
                        Some(_) if later => mv,
                        Some(tv) => tv.clone(),
                    };
                    merged.push((name, value));
                }
                let merged = Value::Struct(merged);
                if merged == Value::Struct(t) {
                    return Ok(Outcome::side(Winner::Theirs));
                }
                let s = schema(version)?;
                let data = dynamic::encode(&s, &merged).map_err(|e| Error::Encode {
                    tree: s.tree.clone(),
                    reason: format!("the three-way merge does not encode: {e}"),
                })?;
                if data == mine.side.data {
                    return Ok(Outcome::side(Winner::Mine));
                }
                Ok(Outcome {
                    winner: Winner::Merged,
                    merged: Some((version, data)),
                    note: None,
                })
            }
            Kind::Custom(f) => {
                let (version, data) = f(&decode, base, mine.side, theirs.side)?;
                if version == theirs.side.version && data == theirs.side.data {
                    return Ok(Outcome::side(Winner::Theirs));
                }
                if version == mine.side.version && data == mine.side.data {
                    return Ok(Outcome::side(Winner::Mine));
                }
                Ok(Outcome {
                    winner: Winner::Merged,
                    merged: Some((version, data)),
                    note: None,
                })
            }
        }
    }
}

fn field_of<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match v {
        Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// Orders two values of the same kind (numbers, text, booleans, options of those).
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    use Value as V;
    match (a, b) {
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::U8(x), V::U8(y)) => Some(x.cmp(y)),
        (V::U16(x), V::U16(y)) => Some(x.cmp(y)),
        (V::U32(x), V::U32(y)) => Some(x.cmp(y)),
        (V::U64(x), V::U64(y)) => Some(x.cmp(y)),
        (V::U128(x), V::U128(y)) => Some(x.cmp(y)),
        (V::I8(x), V::I8(y)) => Some(x.cmp(y)),
        (V::I16(x), V::I16(y)) => Some(x.cmp(y)),
        (V::I32(x), V::I32(y)) => Some(x.cmp(y)),
        (V::I64(x), V::I64(y)) => Some(x.cmp(y)),
        (V::I128(x), V::I128(y)) => Some(x.cmp(y)),
        (V::F32(x), V::F32(y)) => x.partial_cmp(y),
        (V::F64(x), V::F64(y)) => x.partial_cmp(y),
        (V::Char(x), V::Char(y)) => Some(x.cmp(y)),
        (V::String(x), V::String(y)) => Some(x.cmp(y)),
        (V::Option(x), V::Option(y)) => match (x, y) {
            (Some(x), Some(y)) => compare(x, y),
            _ => Some(x.is_some().cmp(&y.is_some())),
        },
        (V::Box(x), V::Box(y)) => compare(x, y),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[crate::record(tree = "m")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct M {
        pub a: u32,
        pub b: u32,
        pub c: String,
    }

    fn bytes(m: &M) -> Vec<u8> {
        crate::Record::__encode(m, Vec::new()).unwrap()
    }

    /// Merges `mine` into `theirs` with `merge`; the resulting record.
    fn run(merge: &Merge, base: &M, mine: (&M, u64, u32), theirs: (&M, u64, u32)) -> M {
        let schema = |_| Ok(Arc::new(Schema::of::<M>()));
        let (b, m, t) = (bytes(base), bytes(mine.0), bytes(theirs.0));
        fn side(data: &[u8]) -> Side<'_> {
            Side { version: 1, data }
        }
        let out = merge
            .merge(
                &schema,
                Some(side(&b)),
                &Stamped {
                    side: side(&m),
                    hlc: mine.1,
                    replica: mine.2,
                },
                &Stamped {
                    side: side(&t),
                    hlc: theirs.1,
                    replica: theirs.2,
                },
            )
            .unwrap();
        match out.winner {
            Winner::Mine => mine.0.clone(),
            Winner::Theirs => theirs.0.clone(),
            Winner::Merged => {
                let (_, data) = out.merged.unwrap();
                let a = M::__access(&data).unwrap();
                M::__deserialize(a).unwrap()
            }
        }
    }

    fn edit() -> impl Strategy<Value = (Option<u32>, Option<u32>, Option<String>)> {
        (
            proptest::option::of(0u32..4),
            proptest::option::of(0u32..4),
            proptest::option::of("[a-c]{0,3}"),
        )
    }

    fn apply(base: &M, e: &(Option<u32>, Option<u32>, Option<String>)) -> M {
        M {
            a: e.0.unwrap_or(base.a),
            b: e.1.unwrap_or(base.b),
            c: e.2.clone().unwrap_or_else(|| base.c.clone()),
        }
    }

    proptest! {
        /// Three-way merge against a per-field model: a field changed on one side takes
        /// that side's value, on both sides the later clock's; and it does not matter which
        /// replica merges (the outcome is the same from either side).
        #[test]
        fn three_way_follows_the_field_model_from_either_side(
            base in (0u32..4, 0u32..4, "[a-c]{0,3}"),
            em in edit(),
            et in edit(),
            hm in 1u64..5,
            ht in 1u64..5,
        ) {
            let base = M { a: base.0, b: base.1, c: base.2 };
            let (mine, theirs) = (apply(&base, &em), apply(&base, &et));
            let mine_later = (hm, 1) > (ht, 2);
            let field = |b: &u32, m: &u32, t: &u32| -> u32 {
                if m == t || t == b { *m } else if m == b || !mine_later { *t } else { *m }
            };
            let c = if mine.c == theirs.c || theirs.c == base.c {
                mine.c.clone()
            } else if mine.c == base.c || !mine_later {
                theirs.c.clone()
            } else {
                mine.c.clone()
            };
            let model = M {
                a: field(&base.a, &mine.a, &theirs.a),
                b: field(&base.b, &mine.b, &theirs.b),
                c,
            };
            let merge = Merge::three_way();
            let here = run(&merge, &base, (&mine, hm, 1), (&theirs, ht, 2));
            prop_assert_eq!(&here, &model);
            let there = run(&merge, &base, (&theirs, ht, 2), (&mine, hm, 1));
            prop_assert_eq!(&there, &model);
        }

        /// Last-write-wins keeps the side with the later clock (then the higher replica),
        /// from either side.
        #[test]
        fn last_write_wins_keeps_the_later_side(
            em in edit(), et in edit(), hm in 1u64..5, ht in 1u64..5,
        ) {
            let base = M { a: 0, b: 0, c: String::new() };
            let (mine, theirs) = (apply(&base, &em), apply(&base, &et));
            let later = if (hm, 1) > (ht, 2) { &mine } else { &theirs };
            let merge = Merge::last_write_wins();
            prop_assert_eq!(&run(&merge, &base, (&mine, hm, 1), (&theirs, ht, 2)), later);
            prop_assert_eq!(&run(&merge, &base, (&theirs, ht, 2), (&mine, hm, 1)), later);
        }
    }

    #[test]
    fn named_strategies_round_trip() {
        for m in [
            Merge::last_write_wins(),
            Merge::local_wins(),
            Merge::remote_wins(),
            Merge::three_way(),
            Merge::larger_wins("points"),
        ] {
            assert_eq!(
                Merge::from_name(&m.name()).map(|m| m.name()),
                Some(m.name())
            );
        }
        assert!(Merge::from_name("custom").is_none());
        assert!(Merge::from_name("larger-wins(x").is_none());
    }

    #[test]
    fn hlc_is_monotonic_and_follows_the_wall_clock() {
        assert_eq!(hlc_next(0, 5), 5 << 16);
        // The wall clock went back: the counter moves on.
        assert_eq!(hlc_next(10 << 16, 5), (10 << 16) + 1);
        assert_eq!(hlc_next(u64::MAX, 5), u64::MAX);
    }

    #[test]
    fn values_order_within_a_kind_only() {
        use std::cmp::Ordering::*;
        assert_eq!(compare(&Value::U32(3), &Value::U32(2)), Some(Greater));
        assert_eq!(compare(&Value::U32(3), &Value::I32(2)), None);
        assert_eq!(
            compare(
                &Value::Option(None),
                &Value::Option(Some(Box::new(Value::I8(0))))
            ),
            Some(Less)
        );
        assert_eq!(compare(&Value::F64(f64::NAN), &Value::F64(1.0)), None);
    }
}
