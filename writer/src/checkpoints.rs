//! Signing the chain: a checkpoint of this writer's chain every `checkpoint_seconds` (when it
//! has moved) and at shutdown, and a retention checkpoint at each cut retention makes. Each is
//! kept in the store and, when `checkpoint_dir` is set, written there as a file of its own for
//! the operator to ship off the box: the newest records cannot be cut off unnoticed while one
//! checkpoint lives elsewhere.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::chain::{Checkpoint, SigningKey};
use crate::store::{ChainHead, Store, StoreError};

/// What this writer signs with and where it puts the result.
#[derive(Debug)]
pub struct Evidence {
    /// This writer's chain.
    pub uid: String,
    /// The signing key; without one the chain is kept but nothing is signed.
    pub key: Option<SigningKey>,
    /// Where each checkpoint is also written.
    pub dir: Option<PathBuf>,
}

impl Evidence {
    /// Signs this writer's chain head unless it is empty or signed already; the checkpoint's
    /// size, if one was made.
    pub async fn sign_head(&self, store: &dyn Store) -> Result<Option<u64>, StoreError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let Some(head) = store
            .chain_heads()
            .await?
            .into_iter()
            .find(|h| h.uid == self.uid)
        else {
            return Ok(None);
        };
        if head.seq == 0 || self.last_signed(store).await? == Some(head.seq) {
            return Ok(None);
        }
        self.keep(store, key, &head, Utc::now(), false).await?;
        Ok(Some(head.seq))
    }

    /// The size of the newest checkpoint of this writer's chain.
    async fn last_signed(&self, store: &dyn Store) -> Result<Option<u64>, StoreError> {
        let prefix = format!("auditgate/{}\n", self.uid);
        Ok(store
            .checkpoints()
            .await?
            .iter()
            .filter_map(|note| note.strip_prefix(&prefix))
            .filter_map(|rest| rest.lines().next()?.parse::<u64>().ok())
            .max())
    }

    /// Signs a retention checkpoint at each chain's cut for `before`; the cuts retention may
    /// make. Without a signing key, none: chained records are then kept.
    pub async fn sign_cuts(
        &self,
        store: &dyn Store,
        before: DateTime<Utc>,
    ) -> Result<Vec<ChainHead>, StoreError> {
        let Some(key) = &self.key else {
            return Ok(Vec::new());
        };
        let cuts = store.retention_cuts(before).await?;
        for cut in &cuts {
            self.keep(store, key, cut, Utc::now(), true).await?;
        }
        Ok(cuts)
    }

    async fn keep(
        &self,
        store: &dyn Store,
        key: &SigningKey,
        head: &ChainHead,
        time: DateTime<Utc>,
        retention: bool,
    ) -> Result<(), StoreError> {
        let checkpoint = Checkpoint {
            uid: head.uid.clone(),
            size: head.seq,
            hash: head.hash,
            time,
            retention,
        };
        let note = key.sign(&checkpoint);
        store.save_checkpoint(&checkpoint, &note).await?;
        if let Some(dir) = &self.dir {
            write_file(dir, &checkpoint.file_name(), &note).map_err(|e| {
                StoreError::Other(format!(
                    "cannot write the checkpoint into {}: {e}",
                    dir.display()
                ))
            })?;
        }
        Ok(())
    }
}

/// Writes `name` in `dir` whole or not at all (a temporary file renamed into place).
fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Signs the head every `period` until `stop`.
pub async fn every(
    store: Arc<dyn Store>,
    evidence: Arc<Evidence>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(period) => {}
        }
        if let Err(e) = evidence.sign_head(&*store).await {
            crate::metrics::checkpoint_failed();
            tracing::warn!(error = %e, "signing a checkpoint failed; retrying at the next one");
        }
    }
}
