//! A producer's `origin.instance` and `origin.seq` across restarts, kept in its spool directory.
//!
//! A record lost in a crash (in memory, not yet in Redis or the spool) must show in the
//! writer's `/api/v1/gaps`, which finds missing `origin.seq` numbers per instance. A producer
//! that came back under a new name after a crash would start a new sequence, and the lost tail
//! of the old one would look like the end of a stream, not a gap. So the spool directory names
//! its producer (`DIR/ORIGIN`), and the restarted producer continues that name and sequence.
//!
//! Sequence numbers are reserved ahead, in blocks of [`BLOCK`]: the file says how far numbers
//! may have been used (`reserved_to`), written (and fsync'd) before any number past the old
//! reservation is handed out. A restart continues after `reserved_to`, so a crash skips the
//! unused rest of its block rather than reusing numbers: every lost record lies inside a gap,
//! whose size is then an upper bound of what was lost. A clean shutdown writes the last number
//! used, and the next start continues right after it, with no gap.
//!
//! ```text
//! DIR/ORIGIN   {"instance": "host-a/3f2c", "reserved_to": 8192}
//! ```
//!
//! The spool's lock (`DIR/LOCK`) already gives a directory one producer at a time, so the name
//! is unique per directory (two producers on one host have two directories, two names).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// How many sequence numbers one reservation covers: one fsync'd write per this many records,
/// and at most this many numbers skipped by a crash.
pub(crate) const BLOCK: u64 = 4096;

const FILE: &str = "ORIGIN";

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    instance: String,
    reserved_to: u64,
}

/// The reservation of one running producer.
#[derive(Debug)]
pub(crate) struct Reservation {
    path: PathBuf,
    instance: String,
    /// Numbers up to this one may be handed out.
    reserved_to: AtomicU64,
    /// Held while the file is written: one writer at a time, and a reader of `reserved_to`
    /// that finds it too low waits here for the write in progress.
    writing: Mutex<()>,
}

impl Reservation {
    /// Reads `DIR/ORIGIN`, or makes it. `instance` is the configured name, if any; without
    /// one the file's name is kept (or `default` chosen for a new directory). Returns the
    /// reservation and the last sequence number the previous producer may have used (0 for a
    /// new name): the first record gets the next one.
    pub(crate) fn open(
        dir: &Path,
        instance: Option<&str>,
        default: impl FnOnce() -> String,
    ) -> io::Result<(Reservation, u64)> {
        let path = dir.join(FILE);
        let saved: Option<Saved> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (instance, used) = match (instance, saved) {
            // The configured name is this directory's: continue its sequence.
            (Some(name), Some(saved)) if saved.instance == name => {
                (name.to_owned(), saved.reserved_to)
            }
            (Some(name), _) => (name.to_owned(), 0),
            (None, Some(saved)) => (saved.instance, saved.reserved_to),
            (None, None) => (default(), 0),
        };
        let reservation = Reservation {
            path,
            instance,
            reserved_to: AtomicU64::new(used),
            writing: Mutex::new(()),
        };
        reservation.reserve_through(used + BLOCK)?;
        Ok((reservation, used))
    }

    /// The producer's `origin.instance`.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Makes sure `seq` is reserved before it is used: free unless the flusher fell behind
    /// (see [`Reservation::reserve_ahead`]), when the caller writes the next block itself.
    pub(crate) fn cover(&self, seq: u64) {
        if seq <= self.reserved_to.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.reserve_through(seq + BLOCK) {
            // The number is used all the same: refusing the record would lose it for sure.
            tracing::error!(error = %e, path = %self.path.display(), "cannot reserve origin.seq numbers");
        }
    }

    /// Reserves the next block once half of the current one is used, off the request path
    /// (the flusher calls this every turn).
    pub(crate) fn reserve_ahead(&self, used: u64) {
        let reserved = self.reserved_to.load(Ordering::Acquire);
        if used + BLOCK / 2 >= reserved
            && let Err(e) = self.reserve_through(reserved + BLOCK)
        {
            tracing::error!(error = %e, path = %self.path.display(), "cannot reserve origin.seq numbers");
        }
    }

    /// On a clean shutdown: the last number used is all that is reserved, so the next start
    /// continues right after it.
    pub(crate) fn release(&self, used: u64) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.write(used)?;
        self.reserved_to.store(used, Ordering::Release);
        Ok(())
    }

    fn reserve_through(&self, to: u64) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if to <= self.reserved_to.load(Ordering::Acquire) && self.path.exists() {
            return Ok(());
        }
        self.write(to)?;
        self.reserved_to.store(to, Ordering::Release);
        Ok(())
    }

    /// Writes the file durably: a temporary file, fsync'd, renamed over the old one, and the
    /// directory fsync'd, so a crash leaves the old reservation or the new one, never neither.
    fn write(&self, reserved_to: u64) -> io::Result<()> {
        let saved = Saved {
            instance: self.instance.clone(),
            reserved_to,
        };
        let text = serde_json::to_vec(&saved).map_err(io::Error::other)?;
        let temporary = self.path.with_extension("new");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_data()?;
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_continues_the_name_and_skips_what_a_crash_may_have_used() {
        let dir = tempfile::tempdir().unwrap();
        let (first, used) = Reservation::open(dir.path(), None, || "host/aaaa".into()).unwrap();
        assert_eq!((first.instance(), used), ("host/aaaa", 0));
        first.cover(BLOCK + 10); // past the first block: reserved at once
        drop(first); // a crash: no release

        let (second, used) = Reservation::open(dir.path(), None, || "host/bbbb".into()).unwrap();
        assert_eq!(
            second.instance(),
            "host/aaaa",
            "the directory's name is kept"
        );
        assert!(
            used >= BLOCK + 10,
            "numbers the crash may have used are skipped: {used}"
        );

        second.release(used + 3).unwrap(); // a clean stop after three records
        let (third, used_then) = Reservation::open(dir.path(), None, || "x".into()).unwrap();
        assert_eq!(used_then, used + 3, "a clean stop leaves no gap");

        // A configured name of its own starts its own sequence.
        drop(third);
        let (named, from) = Reservation::open(dir.path(), Some("proxy-1"), || "x".into()).unwrap();
        assert_eq!((named.instance(), from), ("proxy-1", 0));
    }
}
