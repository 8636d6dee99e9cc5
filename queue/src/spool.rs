//! The disk spool: where records wait while Redis is unreachable or the buffer is full.
//!
//! # Design
//!
//! The spool is a directory of append-only segment files, oldest first. Records are appended to
//! the newest (*active*) segment; replay reads the oldest *sealed* segment, sends its records to
//! Redis in order and deletes the file once every record in it is confirmed. A spool directory
//! belongs to one producer process at a time: an advisory lock on `LOCK` refuses a second one,
//! because two processes appending to one segment would interleave their entries.
//!
//! ## On-disk format
//!
//! ```text
//! DIR/LOCK                       advisory lock, held while a producer runs
//! DIR/00000000000000000007.seg   segment 7
//!
//! segment := MAGIC entry*
//! MAGIC   := "AGSPOOL1"                       8 bytes
//! entry   := len:u32le crc:u32le payload      payload: len bytes, the record's JSON
//!                                              crc: CRC-32 (IEEE) of payload
//! ```
//!
//! Segment numbers only grow; a segment rolls over once it passes [`SEGMENT_BYTES`].
//!
//! ## Invariants
//!
//! - Entries are written with one `write_all` each, header and payload together, and only at
//!   the end of the active segment. A crash can therefore leave at most a torn *last* entry.
//! - Every entry is checked on read: a length running past the end of the file or a CRC that
//!   does not match ends the segment there. What follows is counted as corrupt and skipped —
//!   never replayed as garbage. Earlier entries of the same segment are still replayed.
//! - Replay only reads sealed segments; the active one is sealed first. A reader therefore
//!   never races a writer on the same file.
//! - A segment is deleted only after Redis acknowledged every record in it. A crash during
//!   replay replays the segment again from its start on the next run: records may then reach
//!   the stream twice, which the writer absorbs (it ignores an `id` it already stored).
//! - The total size of all segments never exceeds `max_bytes`: an append that would pass it is
//!   refused, and the caller counts the record as dropped (or refuses the request).
//!
//! ## fsync policy
//!
//! Appends go to the page cache at once, so a record in the spool survives the producer
//! process being killed. The flusher calls `fdatasync` after every batch it spools; a record
//! spooled directly by a request thread (buffer full) is synced by the flusher's next pass, at
//! most one linger interval later, and a sealed segment with the next sync. A power loss can
//! thus lose the last few milliseconds of spooled records, never corrupt older ones.
//!
//! ## Who waits for the disk
//!
//! The spool sits behind one mutex, which request threads take to append when the buffer is
//! full. Nothing slow happens under it: [`Spool::take_unsynced`] hands out the files to sync
//! and [`Spool::oldest_segment`] the segment to read, and the flusher does the `fdatasync` and
//! the read after it has let go of the lock. Appends (page-cache writes) are all that a request
//! thread can wait behind.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::QueueError;

/// A segment rolls over once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"AGSPOOL1";
const HEADER: usize = 8;

/// An append-only, checksummed, size-bounded record spool in one directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Held for the spool's lifetime: the advisory lock on `DIR/LOCK`.
    _lock: File,
    /// Sealed segments, oldest first.
    sealed: VecDeque<Segment>,
    active: Option<Active>,
    /// Sealed segments written since their last `fdatasync`.
    unsynced: Vec<Arc<File>>,
    next_number: u64,
    total_bytes: u64,
    entries: u64,
    /// When the file system last refused a write (ENOSPC, EIO), until a write succeeds.
    write_failed_at: Option<std::time::Instant>,
}

/// After a refused write, how long the spool counts as unable to keep records for callers that
/// must know (`closed` rules) before one of them may try again.
const WRITE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Segment {
    number: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Active {
    segment: Segment,
    /// Shared with a [`PendingSync`] that syncs it outside the spool's lock.
    file: Arc<File>,
    dirty: bool,
}

/// Files holding appends not yet on disk, taken from the spool ([`Spool::take_unsynced`]) so
/// that the `fdatasync` runs after the spool's lock is released.
#[derive(Debug, Default)]
#[must_use = "the appends are not on disk until `run` syncs them"]
pub struct PendingSync(Vec<Arc<File>>);

impl PendingSync {
    /// `fdatasync`s each file. An error means some appends may not be on disk.
    pub fn run(self) -> io::Result<()> {
        for file in self.0 {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// The oldest sealed segment, to be read ([`SegmentFile::read`]) outside the spool's lock: a
/// sealed segment is never written again.
#[derive(Debug)]
pub struct SegmentFile {
    number: u64,
    path: PathBuf,
}

impl SegmentFile {
    /// Reads the segment's records, skipping a torn or damaged end.
    pub fn read(self) -> Result<SegmentRecords, QueueError> {
        let bytes = std::fs::read(&self.path).map_err(|source| QueueError::Spool {
            path: self.path.clone(),
            source,
        })?;
        let (records, corrupt_bytes) = decode_segment(&bytes);
        Ok(SegmentRecords {
            number: self.number,
            records,
            corrupt_bytes,
        })
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The spool holds `max_bytes` already.
    #[error("spool is full ({max_bytes} bytes)")]
    Full {
        /// The configured bound.
        max_bytes: u64,
    },
    /// The file system refused the write.
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
}

/// The records of one sealed segment, read back for replay.
#[derive(Debug)]
pub struct SegmentRecords {
    /// Which segment; pass it to [`Spool::remove`] once every record is confirmed.
    pub number: u64,
    /// The records' JSON, in the order they were appended.
    pub records: Vec<Vec<u8>>,
    /// Bytes at the end of the segment that did not form a valid entry (a torn or damaged
    /// write); skipped.
    pub corrupt_bytes: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, taking its lock and finding the
    /// segments an earlier run left behind.
    pub fn open(dir: impl AsRef<Path>, max_bytes: u64) -> Result<Spool, QueueError> {
        let dir = dir.as_ref().to_path_buf();
        let io_err = |source| QueueError::Spool {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_err)?;
        if lock.try_lock().is_err() {
            return Err(QueueError::SpoolInUse { path: dir });
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map_err(io_err)?.len();
            found.push(Segment { number, bytes });
        }
        found.sort_by_key(|s| s.number);
        let next_number = found.last().map_or(1, |s| s.number + 1);
        let total_bytes = found.iter().map(|s| s.bytes).sum();
        Ok(Spool {
            dir,
            max_bytes,
            _lock: lock,
            sealed: found.into(),
            active: None,
            unsynced: Vec::new(),
            next_number,
            total_bytes,
            entries: 0,
            write_failed_at: None,
        })
    }

    /// The directory this spool lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes held in all segments, headers included.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether nothing waits for replay.
    pub fn is_empty(&self) -> bool {
        // An active segment holding only its header has no records.
        self.sealed.is_empty()
            && self
                .active
                .as_ref()
                .is_none_or(|a| a.segment.bytes <= MAGIC.len() as u64)
    }

    /// Whether an entry of `payload_len` bytes would fit within `max_bytes`.
    pub fn has_room_for(&self, payload_len: usize) -> bool {
        self.total_bytes + entry_bytes(payload_len) + self.rollover_cost() <= self.max_bytes
    }

    /// Whether an entry of `payload_len` bytes would be kept: it fits, and the file system did
    /// not refuse the last write (a full disk is full whatever `max_bytes` says). A second
    /// after a refusal this is true again, so that one caller tries, and learns whether the
    /// disk has room now.
    pub fn would_keep(&self, payload_len: usize) -> bool {
        self.has_room_for(payload_len)
            && self
                .write_failed_at
                .is_none_or(|at| at.elapsed() >= WRITE_RETRY_AFTER)
    }

    /// Entries appended since the spool was opened.
    pub fn appended(&self) -> u64 {
        self.entries
    }

    /// Appends one record's JSON to the active segment (page cache only; see [`Spool::sync`]).
    pub fn append(&mut self, payload: &[u8]) -> Result<(), AppendError> {
        if !self.has_room_for(payload.len()) {
            return Err(AppendError::Full {
                max_bytes: self.max_bytes,
            });
        }
        self.append_past_limit(payload)
    }

    /// Appends even when that takes the spool past `max_bytes`. A producer that must drop
    /// records at shutdown keeps its last one this way (one record over the limit): the
    /// writer then sees the dropped `origin.seq`s as a gap before it, where a dropped tail
    /// would leave no trace.
    pub fn append_past_limit(&mut self, payload: &[u8]) -> Result<(), AppendError> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.segment.bytes >= SEGMENT_BYTES)
        {
            self.seal();
        }
        let active = match &mut self.active {
            Some(active) => active,
            None => self.start_segment()?,
        };
        let len = u32::try_from(payload.len()).map_err(|_| {
            AppendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than 4 GiB",
            ))
        })?;
        let mut entry = Vec::with_capacity(HEADER + payload.len());
        entry.extend_from_slice(&len.to_le_bytes());
        entry.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        entry.extend_from_slice(payload);
        if let Err(e) = (&*active.file).write_all(&entry) {
            // A partial write leaves a torn entry that readers skip; start a fresh segment so
            // later entries are not hidden behind it.
            self.seal();
            self.write_failed_at = Some(std::time::Instant::now());
            return Err(e.into());
        }
        active.segment.bytes += entry.len() as u64;
        active.dirty = true;
        self.total_bytes += entry.len() as u64;
        self.entries += 1;
        self.write_failed_at = None;
        Ok(())
    }

    /// Makes what was appended durable, here and now (`fdatasync`). A caller that shares the
    /// spool behind a lock uses [`Spool::take_unsynced`] instead, and syncs after unlocking.
    pub fn sync(&mut self) -> io::Result<()> {
        self.take_unsynced().run()
    }

    /// The files holding appends not yet on disk (the active segment, segments sealed since
    /// the last sync), for the caller to sync once it has released the spool. Every append
    /// made before this call is on disk when the returned [`PendingSync`] has run.
    pub fn take_unsynced(&mut self) -> PendingSync {
        let mut files = std::mem::take(&mut self.unsynced);
        if let Some(active) = &mut self.active
            && active.dirty
        {
            files.push(active.file.clone());
            active.dirty = false;
        }
        PendingSync(files)
    }

    /// Reads the oldest segment for replay, sealing the active one first when it is the only
    /// one. `None` when the spool is empty.
    pub fn oldest(&mut self) -> Result<Option<SegmentRecords>, QueueError> {
        self.oldest_segment()?.map(SegmentFile::read).transpose()
    }

    /// The oldest segment, to read outside the spool's lock ([`SegmentFile::read`]); the
    /// active one is sealed first when it is the only one. `None` when the spool is empty.
    pub fn oldest_segment(&mut self) -> Result<Option<SegmentFile>, QueueError> {
        if self.sealed.is_empty() {
            if self.is_empty() {
                return Ok(None);
            }
            self.seal();
        }
        Ok(self.sealed.front().map(|segment| SegmentFile {
            number: segment.number,
            path: self.segment_path(segment.number),
        }))
    }

    /// Deletes a segment whose records are all confirmed.
    pub fn remove(&mut self, number: u64) -> Result<(), QueueError> {
        let Some(index) = self.sealed.iter().position(|s| s.number == number) else {
            return Ok(());
        };
        let path = self.segment_path(number);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(QueueError::Spool { path, source }),
        }
        if let Some(segment) = self.sealed.remove(index) {
            self.total_bytes = self.total_bytes.saturating_sub(segment.bytes);
        }
        Ok(())
    }

    fn start_segment(&mut self) -> Result<&mut Active, AppendError> {
        let number = self.next_number;
        let path = self.segment_path(number);
        let created = OpenOptions::new().create_new(true).append(true).open(&path);
        let mut file = match created {
            Ok(file) => file,
            Err(e) => {
                self.write_failed_at = Some(std::time::Instant::now());
                return Err(e.into());
            }
        };
        if let Err(e) = file.write_all(MAGIC) {
            // A segment without its header would be in the way of the next one, which takes
            // the same number once the disk has room again.
            drop(file);
            let _ = std::fs::remove_file(&path);
            self.write_failed_at = Some(std::time::Instant::now());
            return Err(e.into());
        }
        self.next_number += 1;
        self.total_bytes += MAGIC.len() as u64;
        Ok(self.active.insert(Active {
            segment: Segment {
                number,
                bytes: MAGIC.len() as u64,
            },
            file: Arc::new(file),
            dirty: true,
        }))
    }

    /// Closes the active segment so that replay may read it. Its `fdatasync` comes with the
    /// next sync, outside the lock (a request thread's append can be the one that seals).
    fn seal(&mut self) {
        if let Some(active) = self.active.take() {
            if active.dirty {
                self.unsynced.push(active.file);
            }
            self.sealed.push_back(active.segment);
        }
    }

    /// The bytes a new segment's header costs when the next append starts one.
    fn rollover_cost(&self) -> u64 {
        match &self.active {
            Some(a) if a.segment.bytes < SEGMENT_BYTES => 0,
            _ => MAGIC.len() as u64,
        }
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:020}.seg"))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Best effort: what is in the page cache survives a process exit anyway.
        let _ = self.sync();
    }
}

/// The size an entry with a payload of `len` bytes takes on disk.
pub(crate) fn entry_bytes(len: usize) -> u64 {
    (HEADER + len) as u64
}

/// Splits a segment's bytes into its valid entries and the count of bytes after the first
/// invalid one.
fn decode_segment(bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
    let mut records = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return (records, bytes.len() as u64);
    };
    while !rest.is_empty() {
        let Some((len, crc, after)) = read_header(rest) else {
            break;
        };
        let Some(payload) = after.get(..len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        rest = &after[len..];
    }
    (records, rest.len() as u64)
}

fn read_header(bytes: &[u8]) -> Option<(usize, u32, &[u8])> {
    let (header, rest) = bytes.split_first_chunk::<HEADER>()?;
    let (len, crc) = header.split_at(4);
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    Some((len, crc, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect()
    }

    #[test]
    fn appends_read_back_in_order_and_removal_frees_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        for p in payloads(3) {
            spool.append(&p).unwrap();
        }
        spool.sync().unwrap();
        assert!(!spool.is_empty());
        let seg = spool.oldest().unwrap().unwrap();
        assert_eq!(seg.records, payloads(3));
        assert_eq!(seg.corrupt_bytes, 0);
        spool.remove(seg.number).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(spool.oldest().unwrap().is_none());
    }

    #[test]
    fn a_new_process_finds_what_an_earlier_one_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            for p in payloads(5) {
                spool.append(&p).unwrap();
            }
        }
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!spool.is_empty());
        spool.append(b"{\"n\":5}").unwrap();
        let first = spool.oldest().unwrap().unwrap();
        assert_eq!(first.records, payloads(5));
        spool.remove(first.number).unwrap();
        let second = spool.oldest().unwrap().unwrap();
        assert_eq!(second.records, vec![b"{\"n\":5}".to_vec()]);
    }

    #[test]
    fn a_second_producer_cannot_share_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1 << 20).unwrap();
        let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, QueueError::SpoolInUse { .. }), "{err}");
    }

    #[test]
    fn a_torn_last_entry_is_skipped_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            for p in payloads(2) {
                spool.append(&p).unwrap();
            }
        }
        // A crash mid-write: the header of a third entry and half its payload.
        let seg = dir.path().join(format!("{:020}.seg", 1));
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        let payload = b"{\"n\":2,\"more\":true}";
        file.write_all(&(payload.len() as u32).to_le_bytes())
            .unwrap();
        file.write_all(&crc32fast::hash(payload).to_le_bytes())
            .unwrap();
        file.write_all(&payload[..5]).unwrap();
        drop(file);

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let read = spool.oldest().unwrap().unwrap();
        assert_eq!(read.records, payloads(2));
        assert_eq!(read.corrupt_bytes, 8 + 5);
    }

    #[test]
    fn a_damaged_entry_ends_the_segment_there() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            for p in payloads(3) {
                spool.append(&p).unwrap();
            }
        }
        let seg = dir.path().join(format!("{:020}.seg", 1));
        let mut bytes = std::fs::read(&seg).unwrap();
        // Flip one byte in the second entry's payload.
        let second_payload = 8 + (8 + payloads(3)[0].len()) + 8;
        bytes[second_payload] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let read = spool.oldest().unwrap().unwrap();
        assert_eq!(read.records, payloads(1));
        assert!(read.corrupt_bytes > 0);
    }

    #[test]
    fn refuses_appends_beyond_max_bytes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let payload = [b'x'; 92]; // 100 bytes an entry with its header
        let max = 8 + 3 * 100;
        let mut spool = Spool::open(dir.path(), max).unwrap();
        for _ in 0..3 {
            spool.append(&payload).unwrap();
        }
        assert!(matches!(
            spool.append(&payload),
            Err(AppendError::Full { .. })
        ));
        assert_eq!(spool.bytes(), max);
        let seg = spool.oldest().unwrap().unwrap();
        spool.remove(seg.number).unwrap();
        spool.append(&payload).unwrap();
    }

    #[test]
    fn segments_roll_over_and_replay_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 64 * SEGMENT_BYTES).unwrap();
        let big = vec![b'a'; (SEGMENT_BYTES / 2) as usize];
        for _ in 0..3 {
            spool.append(&big).unwrap();
        }
        spool.append(b"last").unwrap();
        // The segment sealed by the rollover waits for the next sync, with the active one.
        let unsynced = spool.take_unsynced();
        assert_eq!(unsynced.0.len(), 2, "the sealed segment and the active one");
        unsynced.run().unwrap();
        assert_eq!(spool.take_unsynced().0.len(), 0, "nothing appended since");
        let first = spool.oldest().unwrap().unwrap();
        // The first segment takes entries until it has passed 8 MiB.
        assert_eq!(first.records.len(), 2);
        spool.remove(first.number).unwrap();
        let second = spool.oldest().unwrap().unwrap();
        assert_eq!(second.records.len(), 2);
        assert_eq!(second.records[1], b"last".to_vec());
    }
}
