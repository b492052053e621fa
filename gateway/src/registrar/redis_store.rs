//! Bindings in Redis, shared by every gateway pointed at the same server.
//! Each binding is its own key that expires with it (`SET … EXAT`), so
//! Redis enforces expiry whoever wrote it; a set per AOR lists its
//! bindings' keys and is pruned of keys Redis has expired. A version per
//! AOR, bumped by every write, lets a gateway write only what it decided on
//! the bindings it read (the registrar's rules, `max_contacts` and CSeq
//! order, hold across gateways). Needs Redis 7 (`EXPIREAT … GT|NX`).

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

fn version_key(aor: &str) -> String {
    format!("{PREFIX}:version:{aor}")
}

/// Writes an AOR's changes if its version is still `ARGV[1]` (`*`: in any
/// case), then bumps the version. A script, so that nothing runs between
/// the check and the writes. KEYS: the AOR's set, its version. ARGV: the
/// version read, the binding key prefix, then `put KEY JSON EXAT` or
/// `del KEY`. The version outlives the set, so it never restarts from 0
/// while bindings remain.
const APPLY_SCRIPT: &str = r#"
if ARGV[1] ~= '*' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then
  return 0
end
local i = 3
while i <= #ARGV do
  if ARGV[i] == 'put' then
    local key, exat = ARGV[i + 1], ARGV[i + 3]
    redis.call('SET', ARGV[2] .. key, ARGV[i + 2], 'EXAT', exat)
    redis.call('SADD', KEYS[1], key)
    redis.call('EXPIREAT', KEYS[1], exat, 'GT')
    redis.call('EXPIREAT', KEYS[1], exat, 'NX')
    i = i + 4
  else
    redis.call('DEL', ARGV[2] .. ARGV[i + 1])
    redis.call('SREM', KEYS[1], ARGV[i + 1])
    i = i + 2
  end
end
redis.call('INCR', KEYS[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl + 60000)
else
  redis.call('EXPIRE', KEYS[2], 86400)
end
return 1
"#;

impl RedisStore {
    async fn write(
        &self,
        aor: &str,
        changes: &[Change],
        now: u64,
        version: Option<u64>,
    ) -> Result<bool, StoreError> {
        // EVAL rather than the crate's `Script` (EVALSHA), which needs
        // another dependency for a few hundred bytes per REGISTER.
        let mut eval = redis::cmd("EVAL");
        eval.arg(APPLY_SCRIPT)
            .arg(2)
            .arg(set_key(aor))
            .arg(version_key(aor))
            .arg(version.map_or("*".to_string(), |v| v.to_string()))
            .arg(binding_key(aor, ""));
        for change in changes {
            match change {
                Change::Put(binding) => {
                    let json = serde_json::to_string(binding).map_err(err)?;
                    eval.arg("put")
                        .arg(binding.key())
                        .arg(json)
                        .arg(binding.expires_at.max(now + 1));
                }
                Change::Remove(key) => {
                    eval.arg("del").arg(key);
                }
            }
        }
        let mut connection = self.connection.clone();
        let written: i64 = eval.query_async(&mut connection).await.map_err(err)?;
        Ok(written == 1)
    }

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
        Ok(self.snapshot(aor, now).await?.0)
    }

    async fn snapshot(&self, aor: &str, now: u64) -> Result<(Vec<Binding>, u64), StoreError> {
        let mut connection = self.connection.clone();
        let (version, keys): (Option<u64>, Vec<String>) = redis::pipe()
            .atomic()
            .get(version_key(aor))
            .smembers(set_key(aor))
            .query_async(&mut connection)
            .await
            .map_err(err)?;
        let version = version.unwrap_or(0);
        if keys.is_empty() {
            return Ok((Vec::new(), version));
        }
        // Read after the version: a write in between bumps it, and the
        // apply_if this read leads to then fails.
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
        Ok((bindings, version))
    }

    async fn apply(&self, aor: &str, changes: &[Change], now: u64) -> Result<(), StoreError> {
        self.write(aor, changes, now, None).await.map(|_| ())
    }

    async fn apply_if(
        &self,
        aor: &str,
        changes: &[Change],
        now: u64,
        version: u64,
    ) -> Result<bool, StoreError> {
        self.write(aor, changes, now, Some(version)).await
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
