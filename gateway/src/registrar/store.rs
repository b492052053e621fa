//! Where bindings live: in this process by default, or in Redis so that
//! several gateways share one registrar's bindings.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Binding, Change};

#[derive(Debug, thiserror::Error)]
#[error("location store: {0}")]
pub struct StoreError(pub String);

/// Bindings by address-of-record (the username: one domain's users).
#[async_trait::async_trait]
pub trait LocationStore: Send + Sync {
    /// The AOR's bindings; lapsed ones may be included (callers filter by
    /// `now`, Unix seconds) but are never returned once swept.
    async fn bindings(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError>;
    /// Applies a REGISTER's changes.
    async fn apply(&self, aor: &str, changes: &[Change], now: u64) -> Result<(), StoreError>;
    /// The AOR's bindings with the version they were read at, for
    /// [`LocationStore::apply_if`]. One process's registrar task never
    /// races itself, so a store only it writes has a single version.
    async fn snapshot(&self, aor: &str, now: u64) -> Result<(Vec<Binding>, u64), StoreError> {
        Ok((self.bindings(aor, now).await?, 0))
    }
    /// Applies the changes only if nobody changed the AOR since `version`
    /// was read (another gateway sharing the store); `false` when somebody
    /// did, and nothing was written.
    async fn apply_if(
        &self,
        aor: &str,
        changes: &[Change],
        now: u64,
        _version: u64,
    ) -> Result<bool, StoreError> {
        self.apply(aor, changes, now).await.map(|()| true)
    }
    /// Every AOR with live bindings (for the API).
    async fn all(&self, now: u64) -> Result<Vec<(String, Vec<Binding>)>, StoreError>;
    /// Removes lapsed bindings; returns how many are left in all.
    async fn sweep(&self, now: u64) -> Result<usize, StoreError>;
}

/// Bindings in this process.
#[derive(Default)]
pub struct MemoryStore {
    aors: Mutex<HashMap<String, Vec<Binding>>>,
}

#[async_trait::async_trait]
impl LocationStore for MemoryStore {
    async fn bindings(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
        let aors = self.aors.lock().unwrap();
        Ok(aors
            .get(aor)
            .map(|bindings| {
                bindings
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn apply(&self, aor: &str, changes: &[Change], _now: u64) -> Result<(), StoreError> {
        let mut aors = self.aors.lock().unwrap();
        let bindings = aors.entry(aor.to_string()).or_default();
        for change in changes {
            match change {
                Change::Put(binding) => {
                    let key = binding.key();
                    bindings.retain(|b| b.key() != key);
                    bindings.push(binding.clone());
                }
                Change::Remove(key) => bindings.retain(|b| &b.key() != key),
            }
        }
        if bindings.is_empty() {
            aors.remove(aor);
        }
        Ok(())
    }

    async fn all(&self, now: u64) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
        let aors = self.aors.lock().unwrap();
        let mut all: Vec<(String, Vec<Binding>)> = aors
            .iter()
            .map(|(aor, bindings)| {
                let live: Vec<Binding> = bindings
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect();
                (aor.clone(), live)
            })
            .filter(|(_, live)| !live.is_empty())
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let mut aors = self.aors.lock().unwrap();
        aors.retain(|_, bindings| {
            bindings.retain(|b| b.expires_at > now);
            !bindings.is_empty()
        });
        if aors.capacity() > 64 && aors.len() < aors.capacity() / 4 {
            aors.shrink_to_fit();
        }
        Ok(aors.values().map(Vec::len).sum())
    }
}
