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
//! The file also says whether its producer stopped cleanly (`clean`), and where its run's
//! numbers began (`run_from`). A start that finds an unclean stop knows the previous run
//! crashed, and says so on its records (`origin.after_crash: {from: run_from, to:
//! reserved_to}`) until Redis has acknowledged one of them: the writer then marks the gaps in
//! that range as left by a crash, upper bounds rather than counts. Until that acknowledgement
//! the new run writes the old `run_from`, so that a second crash before it widens the next
//! announcement instead of losing the first.
//!
//! ```text
//! DIR/ORIGIN   {"instance": "host-a/3f2c", "reserved_to": 8192, "run_from": 1, "clean": false}
//! ```
//!
//! The spool's lock (`DIR/LOCK`) already gives a directory one producer at a time, so the name
//! is unique per directory (two producers on one host have two directories, two names).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use auditgate_rules::SeqRange;
use serde::{Deserialize, Serialize};

/// How many sequence numbers one reservation covers: one fsync'd write per this many records,
/// and at most this many numbers skipped by a crash.
pub(crate) const BLOCK: u64 = 4096;

const FILE: &str = "ORIGIN";

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    instance: String,
    reserved_to: u64,
    /// Written `true` by a clean shutdown only; a file without it (an older version's) is
    /// taken as a crash, which at worst marks its gaps as upper bounds.
    #[serde(default)]
    clean: bool,
    /// The first number of the range whose crash, if any, is not yet announced.
    #[serde(default)]
    run_from: u64,
}

/// What a starting producer learns of the run before it in the same directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Previous {
    /// The last sequence number the previous run may have used (0 for a new name): the first
    /// record gets the next one.
    pub(crate) used: u64,
    /// When the previous run did not stop cleanly: the numbers it may have used.
    pub(crate) after_crash: Option<SeqRange>,
}

/// The reservation of one running producer.
#[derive(Debug)]
pub(crate) struct Reservation {
    path: PathBuf,
    instance: String,
    /// Numbers up to this one may be handed out.
    reserved_to: AtomicU64,
    /// Written as `run_from`: the start of the numbers a crash now would leave unannounced.
    run_from: AtomicU64,
    /// Held while the file is written: one writer at a time, and a reader of `reserved_to`
    /// that finds it too low waits here for the write in progress.
    writing: Mutex<()>,
}

impl Reservation {
    /// Reads `DIR/ORIGIN`, or makes it. `instance` is the configured name, if any; without
    /// one the file's name is kept (or `default` chosen for a new directory). Returns the
    /// reservation and what the previous run of this name left.
    pub(crate) fn open(
        dir: &Path,
        instance: Option<&str>,
        default: impl FnOnce() -> String,
    ) -> io::Result<(Reservation, Previous)> {
        let path = dir.join(FILE);
        let saved: Option<Saved> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let fresh = Previous {
            used: 0,
            after_crash: None,
        };
        let continued = |saved: &Saved| Previous {
            used: saved.reserved_to,
            after_crash: (!saved.clean).then_some(SeqRange {
                from: saved.run_from.clamp(1, saved.reserved_to.max(1)),
                to: saved.reserved_to,
            }),
        };
        let (instance, previous) = match (instance, saved) {
            // The configured name is this directory's: continue its sequence.
            (Some(name), Some(saved)) if saved.instance == name => {
                (name.to_owned(), continued(&saved))
            }
            (Some(name), _) => (name.to_owned(), fresh),
            (None, Some(saved)) => (saved.instance.clone(), continued(&saved)),
            (None, None) => (default(), fresh),
        };
        let used = previous.used;
        let reservation = Reservation {
            path,
            instance,
            reserved_to: AtomicU64::new(used),
            // An unannounced crash keeps its start; otherwise this run's numbers start here.
            run_from: AtomicU64::new(previous.after_crash.map_or(used + 1, |c| c.from)),
            writing: Mutex::new(()),
        };
        reservation.reserve_through(used + BLOCK)?;
        Ok((reservation, previous))
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

    /// The previous run's crash has reached Redis (a record saying so was acknowledged): from
    /// the next write on, a crash of this run announces this run's numbers only.
    pub(crate) fn crash_announced(&self, first_of_run: u64) {
        self.run_from.store(first_of_run, Ordering::Relaxed);
    }

    /// On a clean shutdown: the last number used is all that is reserved, so the next start
    /// continues right after it.
    pub(crate) fn release(&self, used: u64) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.write(used, true)?;
        self.reserved_to.store(used, Ordering::Release);
        Ok(())
    }

    fn reserve_through(&self, to: u64) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if to <= self.reserved_to.load(Ordering::Acquire) && self.path.exists() {
            return Ok(());
        }
        self.write(to, false)?;
        self.reserved_to.store(to, Ordering::Release);
        Ok(())
    }

    /// Writes the file durably: a temporary file, fsync'd, renamed over the old one, and the
    /// directory fsync'd, so a crash leaves the old reservation or the new one, never neither.
    fn write(&self, reserved_to: u64, clean: bool) -> io::Result<()> {
        let saved = Saved {
            instance: self.instance.clone(),
            reserved_to,
            clean,
            run_from: self.run_from.load(Ordering::Relaxed),
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
        let (first, previous) = Reservation::open(dir.path(), None, || "host/aaaa".into()).unwrap();
        assert_eq!(first.instance(), "host/aaaa");
        assert_eq!(
            previous,
            Previous {
                used: 0,
                after_crash: None
            }
        );
        first.cover(BLOCK + 10); // past the first block: reserved at once
        drop(first); // a crash: no release

        let (second, previous) =
            Reservation::open(dir.path(), None, || "host/bbbb".into()).unwrap();
        let used = previous.used;
        assert_eq!(
            previous.after_crash,
            Some(SeqRange { from: 1, to: used }),
            "the crash is known, and what it may have used"
        );
        assert!(used >= BLOCK + 10);

        // A second crash before the first was announced widens the announcement.
        second.cover(used + BLOCK + 5);
        drop(second);
        let (second, previous) = Reservation::open(dir.path(), None, || "y".into()).unwrap();
        assert_eq!(previous.after_crash.map(|c| c.from), Some(1));
        let used = previous.used;
        // Announced this time: a third crash would announce this run's numbers only.
        second.crash_announced(used + 1);
        second.cover(used + BLOCK + 5);
        drop(second);
        let (second, previous) = Reservation::open(dir.path(), None, || "y".into()).unwrap();
        assert_eq!(previous.after_crash.map(|c| c.from), Some(used + 1));
        let used = previous.used;
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
        let (third, then) = Reservation::open(dir.path(), None, || "x".into()).unwrap();
        assert_eq!(then.used, used + 3, "a clean stop leaves no gap");
        assert_eq!(then.after_crash, None, "and is no crash");

        // A configured name of its own starts its own sequence.
        drop(third);
        let (named, from) = Reservation::open(dir.path(), Some("proxy-1"), || "x".into()).unwrap();
        assert_eq!((named.instance(), from.used), ("proxy-1", 0));
    }
}
