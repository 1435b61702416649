//! The hand-off of counts to the usage flusher: entries with counts not yet written wait in the
//! dirty list; the flusher takes the oldest ([`Verifier::take_usage`]), writes them, and puts
//! back what it could not write ([`Verifier::restore_usage`]). Also the addresses each key is
//! known to have been seen from, for `new_source`.
//!
//! Invariants:
//! - An entry is in the dirty list at most once (`Entry::queued`, cleared when taken); one with
//!   counts is put there when they change, and when it takes over an older entry's counts.
//! - Taking resets the entry's counts; putting back adds them to the entry that holds the key's
//!   state now, so a failed write loses none, even across a reload.
//! - A key that is gone leaves its counts in the dirty list: they are still written.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyward_core::time::Timestamp;
use keyward_core::verify::Code;
use keyward_store::{MinuteCount, SourceSeen, UsageDelta};

use super::live::{Notice, NEVER, SOURCE_WRITE_MS};
use super::{lock, Entry, Verifier};

/// A valid use of a key after a long silence, found on the verification path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reactivation {
    pub(crate) key_id: String,
    pub(crate) keyspace_id: String,
    pub(crate) previous_use: Timestamp,
    pub(crate) at: Timestamp,
}

/// What [`Verifier::take_usage`] took: the deltas to write, and the entries they came from (to
/// put them back when the write fails).
pub struct Usage {
    pub deltas: Vec<UsageDelta>,
    pub(crate) reactivations: Vec<Reactivation>,
    /// Thresholds crossed: the key's entry and what it crossed.
    pub(crate) notices: Vec<(Arc<Entry>, Notice)>,
    cells: Vec<Arc<Entry>>,
    taken: usize,
}

impl Usage {
    /// Entries taken from the dirty list (some may have had nothing left to write).
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// The keyspace of the key of `deltas[i]`.
    pub(crate) fn keyspace_of(&self, i: usize) -> &str {
        self.cells.get(i).map(|c| c.keyspace_id()).unwrap_or("")
    }
}

/// The entries with counts not yet written, first in first out, in chunks of a fixed size: a
/// list of a million keys grows without copying itself or leaving the smaller copies behind
/// (a `VecDeque` doubling to 2^20 pointers would hold 16 bytes per key, not 8), and the chunks
/// go back to the allocator as the flusher drains them.
#[derive(Default)]
pub(super) struct DirtyList {
    chunks: std::collections::VecDeque<std::collections::VecDeque<Arc<Entry>>>,
    len: usize,
}

impl DirtyList {
    const CHUNK: usize = 4096;

    // Called from `Verifier::mark_dirty`, compiled with `mod.rs` (see there).
    #[inline]
    fn push(&mut self, e: Arc<Entry>) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < Self::CHUNK => c.push_back(e),
            _ => {
                let mut c = std::collections::VecDeque::with_capacity(Self::CHUNK);
                c.push_back(e);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    /// The oldest `max` entries (or all).
    // Called from `Verifier::take_usage`, compiled with `mod.rs` (see there).
    #[inline]
    fn take(&mut self, max: usize) -> Vec<Arc<Entry>> {
        let mut out = Vec::with_capacity(max.min(self.len));
        while out.len() < max {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = (max - out.len()).min(front.len());
            out.extend(front.drain(..n));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= out.len();
        out
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Verifier {
    pub(super) fn mark_dirty(&self, entry: &Arc<Entry>) {
        // A plain load first: a key used again before the next flush is already queued, and
        // the read costs less than a read-modify-write.
        if !entry.queued.load(Ordering::Acquire) && !entry.queued.swap(true, Ordering::AcqRel) {
            lock(&self.dirty).push(entry.clone());
        }
    }

    /// This node's unwritten usage of the `max` keys that have waited longest, for the
    /// flusher. Entries are reset as they are taken.
    pub fn take_usage(&self, max: usize) -> Usage {
        let now_ms = self.clock.now().millis();
        let all_sources = self.write_all_sources.load(Ordering::Relaxed);
        self.queue_due_sources(now_ms, all_sources);
        let cells = lock(&self.dirty).take(max);
        let mut later = Vec::new();
        let mut usage = Usage {
            deltas: Vec::with_capacity(cells.len()),
            reactivations: Vec::new(),
            notices: Vec::new(),
            cells: Vec::with_capacity(cells.len()),
            taken: cells.len(),
        };
        for cell in cells {
            cell.queued.store(false, Ordering::Release);
            let mut s = lock(&cell.state);
            if !s.pending() {
                continue;
            }
            let mut d = UsageDelta {
                key_id: cell.key_id().to_string(),
                calls: i64::from(s.valid),
                denied: 0,
                last_used_at: None,
                consumed: 0,
                buckets: Vec::new(),
                sources: Vec::new(),
            };
            if s.valid != 0 {
                d.buckets.push(MinuteCount {
                    minute_ms: i64::from(s.minute) * 60_000,
                    code: Code::Valid.as_str().to_string(),
                    n: i64::from(s.valid),
                });
                s.valid = 0;
            }
            if let Some(m) = s.more.as_deref_mut() {
                d.consumed = std::mem::take(&mut m.consumed);
                for (minute, code, n) in m.buckets.drain(..) {
                    match code {
                        Code::Valid => d.calls += n,
                        _ => d.denied += n,
                    }
                    d.buckets.push(MinuteCount {
                        minute_ms: minute,
                        code: code.as_str().to_string(),
                        n,
                    });
                }
                // Sources: a new address at once, the counts of known ones once a minute.
                let due = all_sources
                    || now_ms - m.sources_written >= SOURCE_WRITE_MS
                    || m.sources.iter().any(|s| !s.written);
                if due && m.sources.iter().any(|s| s.count != 0) {
                    d.sources = m
                        .sources
                        .iter()
                        .filter(|s| s.count != 0)
                        .map(|s| SourceSeen {
                            ip: s.ip.to_string(),
                            first: s.first,
                            last: s.last,
                            count: s.count,
                        })
                        .collect();
                    for s in &mut m.sources {
                        s.count = 0;
                        s.written = true;
                    }
                    m.sources_written = now_ms;
                } else if !due && m.sources.iter().any(|s| s.count != 0) && !m.sources_waiting {
                    // Written when due: the key waits in `later` until then.
                    m.sources_waiting = true;
                    later.push((m.sources_written + SOURCE_WRITE_MS, cell.clone()));
                }
                // Addresses quiet for a whole interval are forgotten (a later sighting writes
                // them again, as news to this entry, not to the store).
                if now_ms - m.sources_written >= SOURCE_WRITE_MS {
                    m.sources.retain(|s| s.count != 0);
                }
                for n in m.notices.drain(..) {
                    usage.notices.push((cell.clone(), n));
                }
                m.noticed.retain(|&(_, _, end)| end > now_ms);
                for (previous_use, at) in m.reactivations.drain(..) {
                    usage.reactivations.push(Reactivation {
                        key_id: d.key_id.clone(),
                        keyspace_id: cell.keyspace_id().to_string(),
                        previous_use,
                        at,
                    });
                }
                // A key that is rarely denied or seen from an address gives its box back.
                if m.noticed.is_empty()
                    && m.low_below == NEVER
                    && m.remaining.is_none()
                    && m.last_lease.is_none()
                    && m.forward.is_none()
                    && m.sources.is_empty()
                {
                    s.more = None;
                }
            }
            if d.calls > 0 && s.previous_use != NEVER {
                d.last_used_at = Some(Timestamp::from_millis(s.previous_use));
            }
            if d.consumed != 0 && d.key_id.starts_with('@') {
                // An identity's quota has no calls of its own: spending from its lease keeps
                // the lease row fresh (else the sweep would take back a lease in use).
                d.last_used_at = Some(Timestamp::from_millis(now_ms));
            }
            drop(s);
            let empty = d.calls == 0
                && d.denied == 0
                && d.consumed == 0
                && d.buckets.is_empty()
                && d.sources.is_empty();
            if empty {
                // Only source counts not due yet (the key waits in `later` for them).
                continue;
            }
            usage.deltas.push(d);
            usage.cells.push(cell);
        }
        if !later.is_empty() {
            let mut waiting = lock(&self.later);
            for (due, cell) in later {
                waiting.push(due, cell);
            }
        }
        usage
    }

    /// Queues the keys whose source counts are now due (all of them for the last flushes), so
    /// that [`Verifier::pending_keys`] counts them.
    pub fn queue_due(&self) {
        self.queue_due_sources(
            self.clock.now().millis(),
            self.write_all_sources.load(Ordering::Relaxed),
        );
    }

    /// Moves the entries whose source counts are due (all of them for the last flushes) from
    /// `later` to the dirty list.
    fn queue_due_sources(&self, now_ms: i64, all: bool) {
        let due = lock(&self.later).pop_due(if all { i64::MAX } else { now_ms });
        for cell in due {
            if let Some(m) = lock(&cell.state).more.as_deref_mut() {
                m.sources_waiting = false;
            }
            self.mark_dirty(&cell);
        }
    }

    /// Puts back notices that could not be recorded, so the next flush tries again.
    pub(crate) fn restore_notices(&self, notices: Vec<(Arc<Entry>, Notice)>) {
        for (cell, n) in notices {
            let (cell, ()) = Entry::with_state(&cell, |s| s.more().notices.push(n));
            self.mark_dirty(&cell);
        }
    }

    /// From now on every flush writes every source address seen (the last flushes, at
    /// shutdown).
    pub fn write_all_sources(&self) {
        self.write_all_sources.store(true, Ordering::Relaxed);
    }

    /// Puts back usage that could not be written, so it is retried with the next flush.
    pub(crate) fn restore_usage(&self, mut usage: Usage) {
        self.restore_notices(std::mem::take(&mut usage.notices));
        let mut reactivations: HashMap<String, Vec<(Timestamp, Timestamp)>> = HashMap::new();
        for r in usage.reactivations {
            reactivations
                .entry(r.key_id)
                .or_default()
                .push((r.previous_use, r.at));
        }
        for (d, cell) in usage.deltas.into_iter().zip(usage.cells) {
            let reacts = reactivations.remove(&d.key_id).unwrap_or_default();
            // Into the entry that holds the key's state now.
            let (cell, ()) = Entry::with_state(&cell, |s| {
                if d.consumed != 0 {
                    s.more().consumed += d.consumed;
                }
                // `last_used_at` comes back with the valid counts (the last use is at least it).
                for b in d.buckets {
                    if let Some(code) = Code::parse(&b.code) {
                        s.add(b.minute_ms, code, b.n);
                    }
                }
                for SourceSeen {
                    ip,
                    first,
                    last,
                    count: n,
                } in d.sources
                {
                    let Ok(ip) = ip.parse::<IpAddr>() else {
                        continue;
                    };
                    let sources = &mut s.more().sources;
                    match sources.iter_mut().find(|x| x.ip == ip) {
                        Some(x) => {
                            x.first = x.first.min(first);
                            x.last = x.last.max(last);
                            x.count += n;
                            x.written = false;
                        }
                        None => sources.push(super::live::Seen {
                            ip,
                            first,
                            last,
                            count: n,
                            written: false,
                        }),
                    }
                }
                if !reacts.is_empty() {
                    s.more().reactivations.extend(reacts);
                }
            });
            self.mark_dirty(&cell);
        }
    }

    /// The addresses among `ips` this node does not yet know for the key.
    pub(crate) fn unknown_sources(&self, key_id: &str, ips: &[String]) -> Vec<String> {
        let known = lock(&self.known_sources);
        match known.get(key_id) {
            Some(k) => ips.iter().filter(|ip| !k.contains(*ip)).cloned().collect(),
            None => ips.to_vec(),
        }
    }

    /// Remembers addresses as known for the key (at most 256 per key on this node).
    pub(crate) fn remember_sources(&self, key_id: &str, ips: impl IntoIterator<Item = String>) {
        let mut known = lock(&self.known_sources);
        let k = known.entry(key_id.to_string()).or_default();
        for ip in ips {
            if k.len() >= 256 {
                break;
            }
            k.insert(ip);
        }
    }

    pub fn pending_keys(&self) -> usize {
        lock(&self.dirty).len()
    }
}

/// Entries waiting for their source counts to be due, earliest first.
#[derive(Default)]
pub(super) struct Later(std::collections::BinaryHeap<Waiting>);

struct Waiting(i64, Arc<Entry>);

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    /// Reversed: the heap's top is the earliest due.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

impl Later {
    fn push(&mut self, due: i64, cell: Arc<Entry>) {
        self.0.push(Waiting(due, cell));
    }

    /// The entries due at `now_ms`, removed.
    fn pop_due(&mut self, now_ms: i64) -> Vec<Arc<Entry>> {
        let mut due = Vec::new();
        while self.0.peek().is_some_and(|w| w.0 <= now_ms) {
            if let Some(w) = self.0.pop() {
                due.push(w.1);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::tests::{entry, key};
    use super::*;

    #[test]
    fn the_dirty_list_gives_entries_back_oldest_first_across_chunks() {
        let k = key(None);
        let pushed: Vec<Arc<Entry>> = (0..2 * DirtyList::CHUNK + 5)
            .map(|_| Arc::new(entry(&k)))
            .collect();
        let mut list = DirtyList::default();
        let mut taken = Vec::new();
        for (i, e) in pushed.iter().enumerate() {
            list.push(e.clone());
            if i == 10 {
                // Taken while being filled: the first chunk is partly drained.
                taken.extend(list.take(3));
            }
        }
        assert_eq!(list.len(), pushed.len() - 3);
        for max in [DirtyList::CHUNK - 1, 2, DirtyList::CHUNK + 1, usize::MAX] {
            let before = list.len();
            let got = list.take(max);
            assert_eq!(got.len(), max.min(before));
            assert_eq!(list.len(), before - got.len());
            taken.extend(got);
        }
        assert_eq!(taken.len(), pushed.len());
        assert!(pushed.iter().zip(&taken).all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(list.take(10).is_empty());
        assert!(list.chunks.is_empty());
    }
}
