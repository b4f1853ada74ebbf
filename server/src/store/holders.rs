//! Holder numbers: each client identity gets one on its first connection, bound to the name
//! of the token it connected with (tables `holders`, `holder_tokens`), at most
//! [`crate::Limits::replicas_per_token`] per token.

use super::*;

impl Store {
    /// The holder number of client `client`, assigned (persistently) on first call.
    pub fn holder(&self, client: [u8; 16]) -> Result<u32, ServerError> {
        self.assign_holder(client, None, 0)?
            .map_err(|_| ServerError::Database("a holder number went missing".into()))
    }

    /// The holder number of client `client`, connecting with the token named `token`:
    /// assigned (persistently) on its first connection, together with the token's name
    /// ([`Store::holder_token`]). A holder keeps the name it first connected with; one
    /// without a name (assigned before the server recorded names) gets `token`'s now.
    pub fn connect(&self, client: [u8; 16], token: &str) -> Result<u32, ServerError> {
        self.assign_holder(client, Some(token), 0)?
            .map_err(|refusal| ServerError::Token(refusal.to_string()))
    }

    /// [`Store::connect`] for a client that says it had holder number `claimed` (0: none)
    /// in an earlier history of this server: a client the restored server does not know
    /// gets its number back when no other client has it (numbers assigned after a backup
    /// are never given to others after a restore, see [`RESTORE_HOLDER_GAP`]), so the
    /// borrows recorded on its replica stay its own.
    ///
    /// A client is bound to the name of the token it first connected with: refused
    /// ([`Refusal::ReplicaOfAnotherToken`]) if `client` is a replica that connected with a
    /// token of another name (its identity is not this token's to use), and
    /// ([`Refusal::TooManyReplicas`]) if it is new and the token has registered
    /// [`crate::Limits::replicas_per_token`] replicas already.
    pub fn connect_claiming(
        &self,
        client: [u8; 16],
        token: &str,
        claimed: u32,
    ) -> Result<Result<u32, Refusal>, ServerError> {
        self.assign_holder(client, Some(token), claimed)
    }

    /// The name of the token client `holder` first connected with (`None`: unknown).
    pub fn holder_token(&self, holder: u32) -> Result<Option<String>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HOLDER_TOKENS)?;
        Ok(table.get(holder)?.map(|g| g.value().to_owned()))
    }

    /// The holder number of `client`, assigned if new; refused if it is bound to a token
    /// name other than `token` (checked in the same write transaction that binds it, so
    /// two first hellos with one identity and different tokens cannot both win), or if it
    /// is new and `token` has as many replicas as it may.
    fn assign_holder(
        &self,
        client: [u8; 16],
        token: Option<&str>,
        claimed: u32,
    ) -> Result<Result<u32, Refusal>, ServerError> {
        let key = u128::from_be_bytes(client);
        {
            let txn = self.db.begin_read()?;
            if let Some(n) = txn.open_table(HOLDERS)?.get(key)? {
                let n = n.value();
                match (token, txn.open_table(HOLDER_TOKENS)?.get(n)?) {
                    (None, _) => return Ok(Ok(n)),
                    (Some(t), Some(name)) if name.value() == t => return Ok(Ok(n)),
                    (Some(_), Some(_)) => return Ok(Err(Refusal::ReplicaOfAnotherToken)),
                    (Some(_), None) => {}
                }
            }
        }
        let txn = self.db.begin_write()?;
        let n = {
            let mut holders = txn.open_table(HOLDERS)?;
            if let Some(n) = holders.get(key)? {
                n.value()
            } else {
                if let Some(token) = token {
                    let limit = self
                        .replicas_per_token
                        .load(std::sync::atomic::Ordering::Acquire);
                    let mut count = 0u32;
                    for row in txn.open_table(HOLDER_TOKENS)?.iter()? {
                        if row?.1.value() == token {
                            count += 1;
                        }
                    }
                    if count >= limit {
                        drop(holders);
                        txn.abort()?;
                        return Ok(Err(Refusal::TooManyReplicas { limit }));
                    }
                }
                let mut meta = txn.open_table(META)?;
                let next = meta
                    .get("next_holder")?
                    .map_or(u64::from(FIRST_HOLDER), |g| g.value());
                let free = |n: u32| -> Result<bool, ServerError> {
                    if n < FIRST_HOLDER || u64::from(n) >= next {
                        return Ok(false);
                    }
                    if txn.open_table(HOLDER_TOKENS)?.get(n)?.is_some() {
                        return Ok(false);
                    }
                    for row in holders.iter()? {
                        if row?.1.value() == n {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                };
                if claimed != 0 && free(claimed)? {
                    holders.insert(key, claimed)?;
                    claimed
                } else {
                    let n = u32::try_from(next).map_err(|_| {
                        ServerError::Database("every holder number is taken".into())
                    })?;
                    meta.insert("next_holder", next + 1)?;
                    // Past the high-water mark first: a restored copy starts past it.
                    self.raise_marks(0, next + 1)?;
                    holders.insert(key, n)?;
                    n
                }
            }
        };
        if let Some(token) = token {
            let taken = {
                let mut names = txn.open_table(HOLDER_TOKENS)?;
                let bound = names.get(n)?.map(|g| g.value().to_owned());
                match bound {
                    None => {
                        names.insert(n, token)?;
                        false
                    }
                    Some(name) => name != token,
                }
            };
            if taken {
                txn.abort()?;
                return Ok(Err(Refusal::ReplicaOfAnotherToken));
            }
        }
        txn.commit()?;
        Ok(Ok(n))
    }
}
