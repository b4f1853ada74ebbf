//! The B-tree rkyv builds for `BTreeMap`/`BTreeSet` (`serialize_from_ordered_iter` in
//! `rkyv/src/collections/btree/map/mod.rs`, E = 5 entries per node), ported so the bytes are
//! identical. Entries must be in key order.
//!
//! Node layout: `kind: u8 (0 leaf, 1 inner) | keys: [K; E] | values: [V; E]`, then
//! `len: u32` for a leaf or `lesser: [RelPtr; E] | greater: RelPtr` for an inner node.

use super::DynError;
use super::decode::BTREE_E as E;
use super::encode::{Encoder, Entry, Inline};
use super::layout::{add, mul};
use crate::schema::Type;

/// The types and sizes every node of one tree shares.
struct Shape<'a> {
    kty: &'a Type,
    vty: Option<&'a Type>,
    ks: usize,
    vs: usize,
    /// Size of the common node part (kind, keys, values).
    node: usize,
}

impl<'a> Encoder<'a> {
    /// Writes the tree of `entries` (non-empty, sorted); returns the root node's position.
    pub(super) fn btree(
        &mut self,
        kty: &'a Type,
        vty: Option<&'a Type>,
        entries: &[Entry<'_>],
    ) -> Result<usize, DynError> {
        let ks = self.size(kty)?;
        let vs = match vty {
            Some(t) => self.size(t)?,
            None => 0,
        };
        let node = self.checked(add(ks, vs).and_then(|s| mul(E, s)).and_then(|s| add(1, s)))?;
        let shape = Shape {
            kty,
            vty,
            ks,
            vs,
            node,
        };

        let len = entries.len();
        let internal = || self.err("internal error: B-tree construction");
        let height = 1 + len.checked_ilog(E + 1).ok_or_else(internal)?;
        let full = (E + 1).checked_pow(height - 1).ok_or_else(internal)?;
        // Entries in the leaves of the last level.
        let last_level = len + 1 - full;

        let mut open_inners: Vec<Vec<(usize, Option<usize>)>> =
            (0..height - 1).map(|_| Vec::new()).collect();
        let mut open_leaf: Vec<usize> = Vec::new();
        let mut next = 0usize;
        let mut child: Option<usize> = None;
        let mut leaf_entries = 0usize;
        while next < len {
            open_leaf.push(next);
            next += 1;
            leaf_entries += 1;
            if leaf_entries == last_level || open_leaf.len() == E {
                child = Some(self.close_leaf(&shape, entries, &open_leaf)?);
                open_leaf.clear();
                if leaf_entries == last_level
                    && let Some(mut inner) = open_inners.pop()
                {
                    while inner.len() < E && next < len {
                        inner.push((next, child.take()));
                        next += 1;
                    }
                    child = Some(self.close_inner(&shape, entries, &inner, child)?);
                }
                let mut popped = 0;
                while let Some(last) = open_inners.last_mut() {
                    if last.len() == E {
                        let items = std::mem::take(last);
                        child = Some(self.close_inner(&shape, entries, &items, child)?);
                        open_inners.pop();
                        popped += 1;
                    } else {
                        if next >= len {
                            return Err(self.err("internal error: B-tree construction"));
                        }
                        last.push((next, child.take()));
                        next += 1;
                        for _ in 0..popped {
                            open_inners.push(Vec::new());
                        }
                        break;
                    }
                }
            }
        }
        if !open_leaf.is_empty() {
            child = Some(self.close_leaf(&shape, entries, &open_leaf)?);
        }
        while let Some(inner) = open_inners.pop() {
            child = Some(self.close_inner(&shape, entries, &inner, child)?);
        }
        child.ok_or_else(|| self.err("internal error: B-tree construction"))
    }

    /// Fills entry `n` of a node from `entries[i]`.
    fn node_entry(
        &mut self,
        s: &Shape<'a>,
        entries: &[Entry<'_>],
        i: usize,
        n: usize,
        out: &mut Inline,
    ) -> Result<(), DynError> {
        let e = *entries
            .get(i)
            .ok_or_else(|| self.err("internal error: B-tree entry"))?;
        self.entry(s.kty, s.vty, e, out, 1 + n * s.ks, 1 + E * s.ks + n * s.vs)
    }

    fn close_leaf(
        &mut self,
        s: &Shape<'a>,
        entries: &[Entry<'_>],
        items: &[usize],
    ) -> Result<usize, DynError> {
        let mut out = Inline::zeroed(s.node + 4);
        for (n, &i) in items.iter().enumerate() {
            self.node_entry(s, entries, i, n, &mut out)?;
        }
        // kind 0 = leaf (already zero).
        self.put(&mut out, s.node, &(items.len() as u32).to_le_bytes())?;
        self.emit(out)
    }

    fn close_inner(
        &mut self,
        s: &Shape<'a>,
        entries: &[Entry<'_>],
        items: &[(usize, Option<usize>)],
        greater: Option<usize>,
    ) -> Result<usize, DynError> {
        if items.len() != E {
            return Err(self.err("internal error: B-tree inner node not full"));
        }
        let mut out = Inline::zeroed(s.node + 4 * E + 4);
        self.put(&mut out, 0, &[1])?;
        for (n, &(i, lesser)) in items.iter().enumerate() {
            self.node_entry(s, entries, i, n, &mut out)?;
            self.child(&mut out, s.node + 4 * n, lesser)?;
        }
        self.child(&mut out, s.node + 4 * E, greater)?;
        self.emit(out)
    }

    fn child(
        &mut self,
        out: &mut Inline,
        at: usize,
        target: Option<usize>,
    ) -> Result<(), DynError> {
        match target {
            Some(t) => {
                self.pointer(out, at, at, t);
                Ok(())
            }
            // An invalid pointer: no child.
            None => self.put(out, at, &1i32.to_le_bytes()),
        }
    }
}
