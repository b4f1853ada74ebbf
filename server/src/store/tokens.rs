//! Access tokens: issued, revoked, listed and checked. Only each token's SHA-256 is stored
//! (the key of table `tokens`); its name and rights are the value.

use super::*;

/// A token as listed (the token itself is not stored and cannot be listed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    /// The name given at issue (unique).
    pub name: String,
    /// Trees the token may read.
    pub read: Trees,
    /// Trees the token may write.
    pub write: Trees,
    /// The holder numbers of the clients that connected with a token of this name, in
    /// increasing order. Filled by [`Store::list`]; not part of the stored token record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u32>,
}

fn hash(token: &str) -> String {
    rekord::net::fingerprint(token.as_bytes())
}

fn encode(info: &TokenInfo) -> Result<String, ServerError> {
    toml::to_string(info).map_err(|e| ServerError::Database(format!("cannot encode a token: {e}")))
}

fn decode(text: &str) -> Result<TokenInfo, ServerError> {
    toml::from_str(text)
        .map_err(|e| ServerError::Database(format!("a stored token record is corrupt: {e}")))
}

impl Store {
    /// Issues a new token named `name` (unique) granting `read` and `write`; returns the
    /// token, which is shown once and never stored.
    pub fn issue(&self, name: &str, read: Trees, write: Trees) -> Result<String, ServerError> {
        if name.is_empty() || name.len() > MAX_TOKEN_NAME {
            return Err(ServerError::Token(format!(
                "a token name must be 1 to {MAX_TOKEN_NAME} bytes"
            )));
        }
        // Two v4 UUIDs: 244 bits from the operating system's random number generator.
        let token = format!(
            "rk1_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let digest = hash(&token);
        let record = encode(&TokenInfo {
            name: name.to_owned(),
            read,
            write,
            holders: Vec::new(),
        })?;
        let txn = self.db.begin_write()?;
        {
            let mut names = txn.open_table(TOKEN_NAMES)?;
            if names.get(name)?.is_some() {
                return Err(ServerError::Token(format!(
                    "a token named `{name}` exists already; revoke it first or choose another name"
                )));
            }
            names.insert(name, digest.as_str())?;
            txn.open_table(TOKENS)?
                .insert(digest.as_str(), record.as_str())?;
        }
        txn.commit()?;
        Ok(token)
    }

    /// Revokes a token, given either the token itself or its name; returns the name.
    pub fn revoke(&self, token_or_name: &str) -> Result<String, ServerError> {
        let txn = self.db.begin_write()?;
        let name = {
            let mut names = txn.open_table(TOKEN_NAMES)?;
            let mut tokens = txn.open_table(TOKENS)?;
            let by_name = names.get(token_or_name)?.map(|g| g.value().to_owned());
            let digest = by_name.unwrap_or_else(|| hash(token_or_name));
            let record = tokens
                .remove(digest.as_str())?
                .map(|g| g.value().to_owned());
            let Some(record) = record else {
                return Err(ServerError::Token(
                    "no token has this name or value (already revoked?)".into(),
                ));
            };
            let info = decode(&record)?;
            names.remove(info.name.as_str())?;
            info.name
        };
        txn.commit()?;
        Ok(name)
    }

    /// Every token's name and permissions, with the holder numbers that connected with it
    /// ([`TokenInfo::holders`]), sorted by name.
    pub fn list(&self) -> Result<Vec<TokenInfo>, ServerError> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for entry in tokens.iter()? {
            let (_, record) = entry?;
            out.push(decode(record.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in txn.open_table(HOLDER_TOKENS)?.iter()? {
            let (holder, name) = entry?;
            if let Ok(i) = out.binary_search_by(|t| t.name.as_str().cmp(name.value())) {
                // Holder numbers come in increasing order.
                out[i].holders.push(holder.value());
            }
        }
        Ok(out)
    }

    /// The name and permissions of `token`; `None` if it is unknown or revoked.
    pub fn token(&self, token: &str) -> Result<Option<TokenInfo>, ServerError> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let Some(record) = tokens.get(hash(token).as_str())? else {
            return Ok(None);
        };
        decode(record.value()).map(Some)
    }

    /// What `token` grants; `None` if it is unknown or revoked.
    pub fn grant(&self, token: &str) -> Result<Option<Grant>, ServerError> {
        Ok(self.token(token)?.map(|info| Grant {
            read: info.read,
            write: info.write,
        }))
    }
}
