//! Id ranges: one global allocator (`meta.next_id`), ranges recorded per client (table
//! `ranges`) in the transaction that grants them.

use super::*;

impl Store {
    /// Grants client `holder` a new range of `want` ids, clamped to `1..=`[`MAX_RANGE`],
    /// from the global allocator; returns `(start, end)`, `end` exclusive. The range is
    /// recorded and the allocator advanced in one durable write transaction: no id is ever
    /// granted twice, also across crashes and restarts.
    pub fn grant_range(&self, holder: u32, want: u64) -> Result<(u64, u64), ServerError> {
        let n = want.clamp(1, MAX_RANGE);
        let txn = self.db.begin_write()?;
        let range = {
            let mut meta = txn.open_table(META)?;
            let start = meta.get("next_id")?.map_or(FIRST_ID, |g| g.value());
            let end = start
                .checked_add(n)
                .ok_or_else(|| ServerError::Database("every record id is taken".into()))?;
            meta.insert("next_id", end)?;
            txn.open_table(RANGES)?.insert((holder, start), end)?;
            (start, end)
        };
        // Past the high-water mark first: a restored copy starts past it.
        self.raise_marks(range.1, 0)?;
        txn.commit()?;
        Ok(range)
    }

    /// Every range granted to client `holder`, in id order.
    pub fn ranges(&self, holder: u32) -> Result<Vec<(u64, u64)>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RANGES)?;
        let mut out = Vec::new();
        for entry in table.range((holder, 0)..=(holder, u64::MAX))? {
            let (k, end) = entry?;
            out.push((k.value().1, end.value()));
        }
        Ok(out)
    }

    /// Whether `id` lies in a range granted to client `holder` (for validating creates).
    pub fn owns(&self, holder: u32, id: u64) -> Result<bool, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RANGES)?;
        let last = table.range((holder, 0)..=(holder, id))?.next_back();
        match last {
            Some(entry) => {
                let (_, end) = entry?;
                Ok(id < end.value())
            }
            None => Ok(false),
        }
    }
}
