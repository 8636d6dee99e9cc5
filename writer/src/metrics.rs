//! The writer's metrics, exported on `/metrics`.

use std::time::Duration;

/// Records stored.
pub const WRITTEN: &str = "auditgate_writer_records_written_total";
/// Records that were already stored (redelivered), ignored.
pub const DUPLICATES: &str = "auditgate_writer_duplicates_total";
/// Seconds per committed batch.
pub const BATCH_SECONDS: &str = "auditgate_writer_batch_seconds";
/// Entries moved to the dead-letter stream.
pub const DEAD_LETTERS: &str = "auditgate_writer_dead_letters_total";
/// Entries delivered to the group's consumers and not acknowledged.
pub const PENDING: &str = "auditgate_writer_pending";
/// Entries in the stream not yet delivered to the group.
pub const LAG: &str = "auditgate_writer_lag";
/// Records deleted by retention.
pub const RETAINED_DELETED: &str = "auditgate_writer_retention_deleted_total";

pub(crate) fn batch(new: usize, duplicates: usize, took: Duration) {
    metrics::counter!(WRITTEN).increment(new as u64);
    metrics::counter!(DUPLICATES).increment(duplicates as u64);
    metrics::histogram!(BATCH_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn dead_letters(n: u64) {
    if n > 0 {
        metrics::counter!(DEAD_LETTERS).increment(n);
    }
}

/// Checkpoints that could not be signed, stored or written to `checkpoint_dir`.
pub const CHECKPOINT_FAILURES: &str = "auditgate_writer_checkpoint_failures_total";

pub(crate) fn checkpoint_failed() {
    metrics::counter!(CHECKPOINT_FAILURES).increment(1);
}
