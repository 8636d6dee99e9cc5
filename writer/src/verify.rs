//! Checking the evidence: every chain recomputed link by link, every checkpoint's signature,
//! and the first record that was altered, inserted or removed named. `auditgate verify`,
//! `GET /api/v1/verify` and the page's Verify button all report this.
//!
//! ```
//! use auditgate_writer::chain::{self, Canonical, Checkpoint, SigningKey, VerifierKey};
//! use auditgate_writer::store::ChainHead;
//! use auditgate_writer::verify::Verifier;
//!
//! // Three records chained, the head signed.
//! let (private, public) = chain::generate_key("example").unwrap();
//! let mut head = ChainHead::empty("w1");
//! let mut stored = Vec::new();
//! for n in 0..3 {
//!     let canonical = Canonical::of(&format!(r#"{{"id":"r{n}","operation":"tag.add"}}"#)).unwrap();
//!     let link = head.next(canonical.text().as_bytes());
//!     stored.push(canonical.chained(&link));
//!     head.advance(&link);
//! }
//! let note = SigningKey::parse(&private).unwrap().sign(&Checkpoint {
//!     uid: "w1".into(), size: 3, hash: head.hash, time: chrono::Utc::now(), retention: false,
//! });
//! let key = VerifierKey::parse(&public).unwrap();
//!
//! let mut intact = Verifier::bundle();
//! stored.iter().for_each(|json| intact.feed_json(json));
//! assert!(intact.finish(&[], &[note.clone()], &key).intact);
//!
//! // The newest record deleted: the checkpoint still covers it.
//! let mut cut = Verifier::bundle();
//! stored[..2].iter().for_each(|json| cut.feed_json(json));
//! let report = cut.finish(&[], &[note], &key);
//! assert!(!report.intact);
//! assert_eq!(report.problems[0].kind, "removed");
//! assert_eq!((report.problems[0].seq, report.problems[0].to_seq), (Some(3), Some(3)));
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::chain::{self, GENESIS, Stored, VerifierKey};
use crate::store::{ChainHead, Columns, ScannedRow, Store, StoreError};

/// What verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nothing found wrong.
    pub intact: bool,
    /// Records read (superseded ones included).
    pub records: u64,
    /// Records stored before the chain began, which it does not cover.
    pub unchained: u64,
    /// Each chain.
    pub chains: Vec<ChainSummary>,
    /// Checkpoints whose signature holds.
    pub checkpoints_verified: usize,
    /// What is wrong, in chain order; the first one is where tampering begins.
    pub problems: Vec<Problem>,
}

/// One chain, as verified.
#[derive(Debug, Clone, Serialize)]
pub struct ChainSummary {
    /// The chain.
    pub uid: String,
    /// Its first and last links present.
    pub first: Option<u64>,
    /// Its last link present.
    pub last: Option<u64>,
    /// Links present.
    pub links: u64,
    /// The newest signed retention cut: links up to it may be gone.
    pub retention_floor: u64,
    /// The newest checkpoint's size, and when it was signed.
    pub newest_checkpoint: Option<(u64, String)>,
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `altered`, `removed`, `inserted` or `checkpoint`.
    pub kind: &'static str,
    /// The chain.
    pub uid: Option<String>,
    /// The link (or the first of a range).
    pub seq: Option<u64>,
    /// The last link of a range.
    pub to_seq: Option<u64>,
    /// The record's `id`, where there is one.
    pub id: Option<String>,
    /// What was found, in words.
    pub message: String,
}

#[derive(Debug)]
struct Entry {
    prev: [u8; 32],
    hash: [u8; 32],
    id: String,
}

/// Takes stored records one by one, then checks the chains they form.
#[derive(Debug)]
pub struct Verifier {
    /// An export's records: no head, no floors table; a filtered one (`partial`) need not
    /// hold every link.
    partial: bool,
    records: u64,
    unchained: Vec<(i64, String)>,
    unchained_count: u64,
    first_chained_at: Option<i64>,
    chains: BTreeMap<String, BTreeMap<u64, Entry>>,
    problems: Vec<Problem>,
    next_store_seq: i64,
    /// Received records a complete one replaced: `(id, chain, link)`, fed first.
    superseded: Vec<(String, String, u64)>,
    /// For the ids of `superseded`: the live record's chain, link and outcome.
    replacing: HashMap<String, (String, u64, String)>,
    /// The heads read after the scan (links up to them are new, not inserted).
    heads_after: Option<Vec<ChainHead>>,
}

impl Verifier {
    /// For a whole store.
    pub fn store() -> Verifier {
        Verifier::new(false)
    }

    /// For an unfiltered export: every link from the first kept to the last.
    pub fn bundle() -> Verifier {
        Verifier::new(false)
    }

    /// For a filtered export: each record's own hash and the links between neighbours only.
    pub fn partial() -> Verifier {
        Verifier::new(true)
    }

    fn new(partial: bool) -> Verifier {
        Verifier {
            partial,
            records: 0,
            unchained: Vec::new(),
            unchained_count: 0,
            first_chained_at: None,
            chains: BTreeMap::new(),
            problems: Vec::new(),
            next_store_seq: 0,
            superseded: Vec::new(),
            replacing: HashMap::new(),
            heads_after: None,
        }
    }

    /// One record of an export (its stored JSON).
    pub fn feed_json(&mut self, json: &str) {
        self.next_store_seq += 1;
        let chain = Stored::parse(json)
            .ok()
            .map(|s| (s.link.uid, s.link.seq as i64));
        self.feed(&ScannedRow {
            store_seq: self.next_store_seq,
            json: json.to_owned(),
            chain,
            columns: None,
        });
    }

    /// A received record a complete one replaced (`chain_superseded`, or a bundle's
    /// `superseded`): feed these before the live records. It keeps its link, and holds only as
    /// the received record (`stage: received`, outcome `unknown`) of a live complete record
    /// chained after it; any other row there is a record hidden from every reader.
    pub fn feed_superseded(&mut self, json: &str, chain: Option<(String, i64)>) {
        let stored = Stored::parse(json);
        let (id, stage, outcome) = match &stored {
            Ok(s) => (
                s.record
                    .get("id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                s.record
                    .get("stage")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                s.record
                    .get("outcome")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            ),
            Err(_) => Default::default(),
        };
        if stage != "received" || outcome != "unknown" {
            self.problem("altered", chain.as_ref().map(|c| &c.0), chain.as_ref().map(|c| c.1.max(0) as u64), None, Some(id.clone()),
                "a record set aside as replaced is not a received record: it was hidden from every reader".into());
        }
        if let Some((uid, seq)) = &chain {
            self.superseded
                .push((id, uid.clone(), (*seq).max(0) as u64));
        }
        self.feed(&ScannedRow {
            store_seq: i64::MIN,
            json: json.to_owned(),
            chain,
            columns: None,
        });
    }

    /// The chains' heads as read after the records: links past the heads read before are
    /// commits made while verifying, up to these.
    pub fn heads_moved_to(&mut self, heads: Vec<ChainHead>) {
        self.heads_after = Some(heads);
    }

    /// One stored row.
    pub fn feed(&mut self, row: &ScannedRow) {
        self.records += 1;
        let stored = Stored::parse(&row.json);
        let id = match &stored {
            Ok(s) => s
                .record
                .get("id")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            Err(_) => serde_json::from_str::<serde_json::Value>(&row.json)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned)),
        }
        .or_else(|| row.columns.as_ref().map(|c| c.id.clone()));
        if row.store_seq != i64::MIN
            && let Some(id) = &id
            && self.superseded.iter().any(|(s, _, _)| s == id)
            && let (Some((uid, seq)), Ok(s)) = (&row.chain, &stored)
        {
            let outcome = s
                .record
                .get("outcome")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            self.replacing.insert(
                id.clone(),
                (uid.clone(), (*seq).max(0) as u64, outcome.to_owned()),
            );
        }
        let Some((uid, seq)) = &row.chain else {
            if stored.is_ok() {
                self.problem(
                    "altered",
                    None,
                    None,
                    None,
                    id,
                    "the record holds a chain link but its chain columns were cleared".into(),
                );
            } else {
                self.unchained_count += 1;
                self.unchained.push((row.store_seq, id.unwrap_or_default()));
            }
            return;
        };
        let seq = (*seq).max(0) as u64;
        // Superseded rows come with `i64::MIN`: their order is their own table's.
        if row.store_seq != i64::MIN {
            self.first_chained_at = Some(
                self.first_chained_at
                    .map_or(row.store_seq, |f| f.min(row.store_seq)),
            );
        }
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                self.problem(
                    "altered",
                    Some(uid),
                    Some(seq),
                    None,
                    id,
                    format!("the record no longer reads as a chained record ({e})"),
                );
                return;
            }
        };
        if stored.link.uid != *uid || stored.link.seq != seq {
            self.problem(
                "altered",
                Some(uid),
                Some(seq),
                None,
                id.clone(),
                format!(
                    "its chain columns say link {seq} of {uid}, its JSON says link {} of {}",
                    stored.link.seq, stored.link.uid
                ),
            );
        }
        if stored.recomputed != stored.link.hash {
            self.problem(
                "altered",
                Some(uid),
                Some(seq),
                None,
                id.clone(),
                "its content no longer gives its hash: the record was changed after it was stored"
                    .into(),
            );
        }
        if let Some(columns) = &row.columns {
            let from_json =
                serde_json::from_value::<auditgate_rules::AuditRecord>(stored.record.clone())
                    .map(|r| Columns::of(&r, &row.json));
            match from_json {
                Ok(expected) => {
                    if let Some(field) = differing(columns, &expected) {
                        self.problem("altered", Some(uid), Some(seq), None, id.clone(), format!(
                            "its indexed column {field} no longer matches the record: filters would show it wrongly"
                        ));
                    }
                }
                Err(e) => self.problem(
                    "altered",
                    Some(uid),
                    Some(seq),
                    None,
                    id.clone(),
                    format!("the record no longer reads as a record ({e})"),
                ),
            }
        }
        let entries = self.chains.entry(uid.clone()).or_default();
        if let Some(other) = entries.get(&seq) {
            let message = format!(
                "two records claim link {seq}: {} and {}; one was inserted",
                other.id,
                id.clone().unwrap_or_default()
            );
            self.problem("inserted", Some(uid), Some(seq), None, id, message);
            return;
        }
        entries.insert(
            seq,
            Entry {
                prev: stored.link.prev,
                hash: stored.link.hash,
                id: id.unwrap_or_default(),
            },
        );
    }

    fn problem(
        &mut self,
        kind: &'static str,
        uid: Option<&String>,
        seq: Option<u64>,
        to_seq: Option<u64>,
        id: Option<String>,
        message: String,
    ) {
        self.problems.push(Problem {
            kind,
            uid: uid.cloned(),
            seq,
            to_seq,
            id,
            message,
        });
    }

    /// Checks the chains against the stored heads, the checkpoints (signed notes from the
    /// store and from elsewhere) and `key`.
    pub fn finish(self, heads: &[ChainHead], notes: &[String], key: &VerifierKey) -> Report {
        self.finish_with(heads, notes, Some(key))
    }

    /// [`Verifier::finish`] without a key: the chains alone, no checkpoint read.
    pub fn finish_with(
        mut self,
        heads: &[ChainHead],
        notes: &[String],
        key: Option<&VerifierKey>,
    ) -> Report {
        let notes = if key.is_some() { notes } else { &[] };
        let key_given = key.is_some();
        let mut checkpoints: HashMap<String, Vec<chain::Checkpoint>> = HashMap::new();
        let mut verified = 0;
        let mut seen = std::collections::HashSet::new();
        for note in notes {
            if !seen.insert(note.as_str()) {
                continue;
            }
            let Some(key) = key else { break };
            match key.open(note) {
                Ok(c) => {
                    verified += 1;
                    checkpoints.entry(c.uid.clone()).or_default().push(c);
                }
                Err(e) => {
                    let origin = note.lines().next().unwrap_or_default().to_owned();
                    self.problem(
                        "checkpoint",
                        None,
                        None,
                        None,
                        None,
                        format!("{origin}: {e}"),
                    );
                }
            }
        }
        let mut uids: Vec<String> = self.chains.keys().cloned().collect();
        uids.extend(heads.iter().map(|h| h.uid.clone()));
        uids.extend(checkpoints.keys().cloned());
        uids.sort();
        uids.dedup();
        let mut summaries = Vec::new();
        for uid in &uids {
            let empty = BTreeMap::new();
            let entries = self.chains.get(uid).unwrap_or(&empty);
            let signed = checkpoints.get(uid).cloned().unwrap_or_default();
            let floor = signed
                .iter()
                .filter(|c| c.retention)
                .max_by_key(|c| c.size)
                .map(|c| (c.size, c.hash));
            let (floor_seq, floor_hash) = floor.unwrap_or((0, GENESIS));
            let last = entries.keys().next_back().copied();
            let mut found = Vec::new();
            // Every link after the floor, each chained after the one before. The links
            // present are walked, and a gap is found by subtraction: a forged link numbered
            // near 2^63 costs nothing.
            let mut expected: (u64, [u8; 32]) = (floor_seq, floor_hash);
            let mut known = true;
            let upper = last.unwrap_or(0).max(floor_seq);
            for (&seq, entry) in entries.range(floor_seq + 1..) {
                let (at, hash) = expected;
                if seq > at + 1 {
                    if !self.partial {
                        found.push(removed(uid, at + 1, seq - 1, floor_seq));
                    }
                    known = false;
                }
                if known && entry.prev != hash {
                    let before = entries.get(&at).map(|e| e.id.clone());
                    found.push(Problem {
                        kind: "altered",
                        uid: Some(uid.clone()),
                        seq: Some(at),
                        to_seq: Some(seq),
                        id: before.clone(),
                        message: if at == 0 {
                            format!("link {seq} ({}) is not the chain's first: it was chained after another record", entry.id)
                        } else if at == floor_seq && before.is_none() {
                            format!("link {seq} ({}) was not chained after the signed retention cut at link {at}", entry.id)
                        } else {
                            format!(
                                "link {at} ({}) is not the record link {seq} ({}) was chained after: it was replaced or rewritten",
                                before.unwrap_or_default(),
                                entry.id
                            )
                        },
                    });
                }
                expected = (seq, entry.hash);
                known = true;
            }
            if let Some(entry) = entries.get(&0) {
                found.push(Problem {
                    kind: "inserted",
                    uid: Some(uid.clone()),
                    seq: Some(0),
                    to_seq: None,
                    id: Some(entry.id.clone()),
                    message: "a record claims link 0, which no chain has".into(),
                });
            }
            // A chain no signature covers could have been made by anyone with the table.
            if key_given && !entries.is_empty() && signed.is_empty() && !self.partial {
                found.push(Problem {
                    kind: "inserted",
                    uid: Some(uid.clone()),
                    seq: entries.keys().next().copied(),
                    to_seq: last,
                    id: None,
                    message: "no signed checkpoint covers this chain (yet): its records cannot be told from forged ones; a writer signs its chain within checkpoint_seconds of storing".into(),
                });
            }
            let head = heads.iter().find(|h| &h.uid == uid);
            if !self.partial
                && let Some(head) = head
            {
                if head.seq > upper {
                    found.push(Problem {
                        kind: "removed",
                        uid: Some(uid.clone()),
                        seq: Some(upper + 1),
                        to_seq: Some(head.seq),
                        id: None,
                        message: format!(
                            "links {}..{} are missing: the store's head of the chain is link {}, so the newest records were deleted",
                            upper + 1, head.seq, head.seq
                        ),
                    });
                } else if head.seq < upper
                    && self
                        .heads_after
                        .as_ref()
                        .and_then(|after| after.iter().find(|h| &h.uid == uid))
                        .is_none_or(|after| after.seq < upper)
                {
                    found.push(Problem {
                        kind: "inserted",
                        uid: Some(uid.clone()),
                        seq: Some(head.seq + 1),
                        to_seq: Some(upper),
                        id: entries.get(&(head.seq + 1)).map(|e| e.id.clone()),
                        message: format!(
                            "links {}..{upper} lie beyond the chain's head (link {}): they were added outside the writer",
                            head.seq + 1, head.seq
                        ),
                    });
                } else if let Some(entry) = entries.get(&head.seq)
                    && entry.hash != head.hash
                {
                    found.push(Problem {
                        kind: "altered",
                        uid: Some(uid.clone()),
                        seq: Some(head.seq),
                        to_seq: None,
                        id: Some(entry.id.clone()),
                        message: format!("link {} differs from the chain's stored head", head.seq),
                    });
                }
            }
            let mut newest: Option<&chain::Checkpoint> = None;
            for checkpoint in &signed {
                if newest.is_none_or(|n| checkpoint.size > n.size) {
                    newest = Some(checkpoint);
                }
                let when = checkpoint.time.to_rfc3339();
                if checkpoint.size > upper && checkpoint.size > floor_seq {
                    // A filtered export need not hold the newest link.
                    if !self.partial {
                        found.push(Problem {
                            kind: "removed",
                            uid: Some(uid.clone()),
                            seq: Some(upper.max(floor_seq) + 1),
                            to_seq: Some(checkpoint.size),
                            id: None,
                            message: format!(
                                "the checkpoint signed {when} covers link {}, but the chain ends at link {upper}: the newest records were cut off",
                                checkpoint.size
                            ),
                        });
                    }
                } else if let Some(entry) = entries.get(&checkpoint.size)
                    && entry.hash != checkpoint.hash
                {
                    found.push(Problem {
                        kind: "altered",
                        uid: Some(uid.clone()),
                        seq: Some(checkpoint.size),
                        to_seq: None,
                        id: Some(entry.id.clone()),
                        message: format!(
                            "link {} differs from the checkpoint signed {when}: the chain up to it was rewritten",
                            checkpoint.size
                        ),
                    });
                }
            }
            // Only the widest "removed" range from the checkpoints, not one per checkpoint.
            dedup_cuts(&mut found);
            summaries.push(ChainSummary {
                uid: uid.clone(),
                first: entries.keys().next().copied(),
                last,
                links: entries.len() as u64,
                retention_floor: floor_seq,
                newest_checkpoint: newest.map(|c| (c.size, c.time.to_rfc3339())),
            });
            self.problems.extend(found);
        }
        for (id, uid, seq) in std::mem::take(&mut self.superseded) {
            let holds = self
                .replacing
                .get(&id)
                .is_some_and(|(live_uid, live_seq, outcome)| {
                    (live_uid != &uid || *live_seq > seq) && outcome != "unknown"
                });
            if !holds {
                self.problems.push(Problem {
                    kind: "removed",
                    uid: Some(uid),
                    seq: Some(seq),
                    to_seq: None,
                    id: Some(id.clone()),
                    message: format!("record {id} was set aside as replaced, but no complete record replaces it: it was hidden from every reader"),
                });
            }
        }
        if let Some(first) = self.first_chained_at {
            for (store_seq, id) in self.unchained.iter().filter(|(s, _)| *s > first) {
                self.problems.push(Problem {
                    kind: "inserted",
                    uid: None,
                    seq: None,
                    to_seq: None,
                    id: Some(id.clone()),
                    message: format!(
                        "record {id} has no chain link, yet was stored (row {store_seq}) after the chain began: it was added outside the writer"
                    ),
                });
            }
        }
        self.problems
            .sort_by(|a, b| (&a.uid, a.seq).cmp(&(&b.uid, b.seq)));
        Report {
            intact: self.problems.is_empty(),
            records: self.records,
            unchained: self.unchained_count,
            chains: summaries,
            checkpoints_verified: verified,
            problems: self.problems,
        }
    }
}

/// A missing range, said in words.
fn removed(uid: &str, from: u64, to: u64, floor: u64) -> Problem {
    let message = if from == floor + 1 && floor == 0 {
        format!(
            "links {from}..{to} are missing, and no signed retention checkpoint allows it: the oldest records were deleted"
        )
    } else {
        format!("links {from}..{to} are missing: records were deleted from the middle of the chain")
    };
    Problem {
        kind: "removed",
        uid: Some(uid.to_owned()),
        seq: Some(from),
        to_seq: Some(to),
        id: None,
        message,
    }
}

/// Keeps, of the `removed` problems that start at the same link, the widest.
fn dedup_cuts(found: &mut Vec<Problem>) {
    let mut widest: HashMap<Option<u64>, u64> = HashMap::new();
    for p in found.iter().filter(|p| p.kind == "removed") {
        let to = widest.entry(p.seq).or_default();
        *to = (*to).max(p.to_seq.unwrap_or(0));
    }
    let mut kept = std::collections::HashSet::new();
    found.retain(|p| {
        p.kind != "removed"
            || (widest.get(&p.seq) == Some(&p.to_seq.unwrap_or(0)) && kept.insert(p.seq))
    });
}

/// The first indexed column that differs.
fn differing(stored: &Columns, expected: &Columns) -> Option<&'static str> {
    [
        ("id", stored.id == expected.id),
        ("time_us", stored.time_us == expected.time_us),
        ("operation", stored.operation == expected.operation),
        ("actor", stored.actor == expected.actor),
        ("request_id", stored.request_id == expected.request_id),
        ("outcome", stored.outcome == expected.outcome),
        ("tenant", stored.tenant == expected.tenant),
    ]
    .into_iter()
    .find(|(_, same)| !same)
    .map(|(name, _)| name)
}

/// Verifies a whole store: every row, the stored heads and checkpoints, and `extra` notes
/// (the checkpoints kept elsewhere, which a store's own cannot stand in for).
pub async fn verify_store(
    store: &dyn Store,
    extra: &[String],
    key: Option<&VerifierKey>,
) -> Result<Report, StoreError> {
    // What the store said before the scan: commits made while it runs are neither missing
    // nor inserted.
    let heads = store.chain_heads().await?;
    let mut notes = store.checkpoints().await?;
    notes.extend(extra.iter().cloned());
    let mut verifier = Verifier::store();
    for superseded in [true, false] {
        let mut after = i64::MIN;
        loop {
            let rows = store.scan(superseded, after, 5000).await?;
            let Some(last) = rows.last() else { break };
            after = last.store_seq;
            for row in &rows {
                if superseded {
                    verifier.feed_superseded(&row.json, row.chain.clone());
                } else {
                    verifier.feed(row);
                }
            }
        }
    }
    verifier.heads_moved_to(store.chain_heads().await?);
    Ok(verifier.finish_with(&heads, &notes, key))
}

/// Reads every `*.checkpoint` file of a directory (as `checkpoint_dir` holds them), and any
/// file holding several notes one after another.
pub fn read_checkpoint_dir(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "checkpoint"))
        .collect();
    paths.sort();
    for path in paths {
        notes.extend(split_notes(&std::fs::read_to_string(path)?));
    }
    Ok(notes)
}

/// Splits text holding signed notes one after another: each ends with its signature lines.
pub fn split_notes(text: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let mut current = String::new();
    let mut in_signatures = false;
    for line in text.split_inclusive('\n') {
        let is_signature = line.starts_with('\u{2014}');
        if in_signatures && !is_signature {
            notes.push(std::mem::take(&mut current));
            in_signatures = false;
        }
        if current.is_empty() && line.trim().is_empty() {
            continue; // blank lines between notes
        }
        if line == "\n" {
            in_signatures = true;
        }
        current.push_str(line);
    }
    if !current.trim().is_empty() {
        notes.push(current);
    }
    notes
}
