//! Record schemas (table `schemas`): stored once per `(tree, version)`, never changed, at
//! most [`crate::Limits::max_schemas`].

use super::*;

impl Store {
    /// Stores the schema (RON text) of `tree` at `version`. The text must parse as a
    /// [`rekord::Schema`] naming the same tree and version; the same schema again is fine,
    /// a different one for an existing `(tree, version)` is refused (the outer `Ok` holds
    /// the refusal).
    pub fn put_schema(
        &self,
        tree: &str,
        version: u32,
        ron: &str,
    ) -> Result<Result<(), RemoteError>, ServerError> {
        let schema = match rekord::Schema::from_ron(ron) {
            Ok(schema) => schema,
            Err(e) => {
                return Ok(Err(RemoteError::Invalid(format!(
                    "the schema of tree `{tree}` version {version} is not valid RON: {e}"
                ))));
            }
        };
        if schema.tree != tree || schema.version != version {
            return Ok(Err(RemoteError::Invalid(format!(
                "the schema describes tree `{}` version {}, not tree `{tree}` version {version}",
                schema.tree, schema.version
            ))));
        }
        let txn = self.db.begin_write()?;
        {
            let mut schemas = txn.open_table(SCHEMAS)?;
            let existing = schemas.get((tree, version))?.map(|g| g.value().to_owned());
            let limit = self.max_schemas.load(std::sync::atomic::Ordering::Acquire);
            if existing.is_none() && redb::ReadableTableMetadata::len(&schemas)? >= u64::from(limit)
            {
                return Ok(Err(RemoteError::Invalid(format!(
                    "the server stores {limit} schemas, as many as it may \
                     (limits.max_schemas); ask its administrator"
                ))));
            }
            if let Some(existing) = existing {
                let same =
                    rekord::Schema::from_ron(&existing).is_ok_and(|old| old.same_shape(&schema));
                return Ok(if same {
                    Ok(())
                } else {
                    Err(RemoteError::Invalid(format!(
                        "tree `{tree}` has a different schema for version {version} already; \
                         a schema version never changes, use a new version"
                    )))
                });
            }
            schemas.insert((tree, version), ron)?;
        }
        txn.commit()?;
        Ok(Ok(()))
    }

    /// The stored schema (RON text) of `tree` at `version`.
    pub fn schema(&self, tree: &str, version: u32) -> Result<Option<String>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SCHEMAS)?;
        Ok(table.get((tree, version))?.map(|g| g.value().to_owned()))
    }
}
