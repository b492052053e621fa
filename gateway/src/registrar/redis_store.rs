//! Bindings in Redis, shared by every gateway pointed at the same server.
//! Each binding is its own key that expires with it (`SET … EXAT`), so
//! Redis enforces expiry whoever wrote it; a set per AOR lists its
//! bindings' keys and is pruned of keys Redis has expired.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::store::{LocationStore, StoreError};
use super::{Binding, Change};

const PREFIX: &str = "switchboard:registrar";

pub struct RedisStore {
    connection: ConnectionManager,
}

fn err(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

fn set_key(aor: &str) -> String {
    format!("{PREFIX}:aor:{aor}")
}

fn binding_key(aor: &str, key: &str) -> String {
    format!("{PREFIX}:binding:{aor}:{key}")
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); reconnects on its own
    /// afterwards.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        let connection = ConnectionManager::new(client).await.map_err(err)?;
        Ok(RedisStore { connection })
    }
}

#[async_trait::async_trait]
impl LocationStore for RedisStore {
    async fn bindings(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = connection.smembers(set_key(aor)).await.map_err(err)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| binding_key(aor, k)).collect();
        let values: Vec<Option<String>> = connection.mget(&full).await.map_err(err)?;
        let mut bindings = Vec::with_capacity(values.len());
        let mut gone = Vec::new();
        for (key, value) in keys.iter().zip(values) {
            match value.and_then(|json| serde_json::from_str::<Binding>(&json).ok()) {
                Some(binding) if binding.expires_at > now => bindings.push(binding),
                _ => gone.push(key.clone()),
            }
        }
        if !gone.is_empty() {
            let _: Result<(), _> = connection.srem(set_key(aor), &gone).await;
        }
        Ok(bindings)
    }

    async fn apply(&self, aor: &str, changes: &[Change], now: u64) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for change in changes {
            match change {
                Change::Put(binding) => {
                    let key = binding.key();
                    let json = serde_json::to_string(binding).map_err(err)?;
                    pipe.cmd("SET")
                        .arg(binding_key(aor, &key))
                        .arg(json)
                        .arg("EXAT")
                        .arg(binding.expires_at.max(now + 1))
                        .ignore();
                    pipe.sadd(set_key(aor), &key).ignore();
                    // The set lives as long as its longest binding.
                    pipe.cmd("EXPIREAT")
                        .arg(set_key(aor))
                        .arg(binding.expires_at.max(now + 1))
                        .arg("GT")
                        .ignore();
                    pipe.cmd("EXPIREAT")
                        .arg(set_key(aor))
                        .arg(binding.expires_at.max(now + 1))
                        .arg("NX")
                        .ignore();
                }
                Change::Remove(key) => {
                    pipe.del(binding_key(aor, key)).ignore();
                    pipe.srem(set_key(aor), key).ignore();
                }
            }
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await.map_err(err)
    }

    async fn all(&self, now: u64) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{PREFIX}:aor:*");
        let mut aors: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(err)?;
            aors.extend(
                keys.iter()
                    .filter_map(|key| key.strip_prefix(&format!("{PREFIX}:aor:")))
                    .map(str::to_string),
            );
            cursor = next;
            if cursor == 0 || aors.len() >= 100_000 {
                break;
            }
        }
        aors.sort();
        let mut all = Vec::with_capacity(aors.len());
        for aor in aors {
            let bindings = self.bindings(&aor, now).await?;
            if !bindings.is_empty() {
                all.push((aor, bindings));
            }
        }
        Ok(all)
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        // Redis expires the bindings itself; count what is left.
        Ok(self.all(now).await?.iter().map(|(_, b)| b.len()).sum())
    }
}
