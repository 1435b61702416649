//! A cached key ([`Entry`]): what the decision and the answer read, compactly (the cache holds
//! millions), and its live state behind a lock (`live`); and how its part of a `VALID` answer
//! is rendered.
//!
//! Invariants:
//! - What an entry was built from (the answer text, the rules, the successor it draws quota
//!   from) never changes: a change to the key makes a new entry (`load`). Only its live state
//!   (under `state`'s lock) and its flags change.
//! - The answer text is rendered once per load: the values of a `VALID` answer that depend only
//!   on the key, as JSON, separated by [`SEP`] (U+001F, which JSON text never holds raw). Ids
//!   and scopes are read straight out of it: their grammars exclude JSON escaping, and scopes
//!   hold neither `,` nor `"`.
//! - Once `moved` is set, the entry's live state is in the entry `More::forward` points to:
//!   whoever reads or changes live state goes through [`Entry::with_state`], or checks
//!   `is_moved` under the lock and follows the pointer.
//! - What few keys have is boxed apart ([`Rare`]), so that the common key stays at 96 bytes
//!   inline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keyward_core::limits::{DEFAULT_LIMIT, MAX_RATELIMITS};
use keyward_core::model::{parse_cidr, Key};
use keyward_core::time::Timestamp;
use keyward_core::verify::{check_rules, Code, Limit, Rules};

use super::live::{LiveState, NEVER};
use super::shard::{digest, Digest};
use super::space::Space;
use super::{lock, Request};
use keyward_core::routes::RouteDecision;

/// A cached key: what the decision and the answer read, compactly (the cache holds millions),
/// and its live state: 96 bytes inline (112 with the `Arc`'s counts).
pub struct Entry {
    pub(super) digest: Digest,
    /// The values of a `VALID` answer that depend only on the key (the keyspace id aside),
    /// rendered once per load as JSON and copied into each answer, separated by U+001F (which
    /// JSON text never holds raw): key id (bare), name, owner, the scope list's members
    /// (`"a","b"`), labels, meta, expires_at. Ids and scopes need no JSON escaping (their
    /// grammars exclude it), so they are read straight out.
    text: Box<str>,
    /// Shared by every key of the keyspace.
    keyspace: Arc<Space>,
    pub(super) state: Mutex<LiveState>,
    /// Milliseconds, or `i64::MAX` for a key that does not expire.
    expires_ms: i64,
    rare: Option<Box<Rare>>,
    revoked: bool,
    enabled: bool,
    has_owner: bool,
    /// In the dirty list (counts not yet taken by the flusher).
    pub(super) queued: AtomicBool,
    /// Changed since it was loaded: the next verification reads the store.
    pub(super) stale: AtomicBool,
    /// Its live state was handed to a newer entry of the key (`More::forward`): whoever holds
    /// this one follows the pointer.
    pub(super) moved: AtomicBool,
    /// Another node set the key's quota anew: the next load drops this node's lease.
    pub(super) stale_quota: AtomicBool,
    /// In the list of leases to give back when idle.
    pub(super) leased: AtomicBool,
}

/// What few keys have: address restrictions, rate limits (its own, its identity's), a
/// rotation's quota, an owner that JSON escapes. Laid out in the order a verification reads
/// it (`repr(C)`): what every verification of such a key reads first, then the limits' slots,
/// then what only answers and loads read.
#[repr(C)]
struct Rare {
    /// Where quota is drawn from during a rotation grace period: the successor's entry (so a
    /// rotation never doubles a quota).
    quota: Option<Arc<Entry>>,
    allowed: Option<Box<[ipnet::IpNet]>>,
    /// How many of the slots are the key's own (the rest are its identity's).
    own: u8,
    /// How many slots there are: up to [`INLINE_SLOTS`] in `inline`, else all in `spilled`.
    slots: u8,
    /// Its identity had a quota when this entry was read (kept in the identity's cell).
    identity_quota: bool,
    /// Every rate limit's numbers and window on this node, the key's then its identity's (in
    /// the order of `limits`, then of the identity's): what a verification reads and changes,
    /// in the lines it reads first (up to four; more in `spilled`): the key's own windows are
    /// in them, an identity's slot points to the identity's shared window.
    inline: [Slot; INLINE_SLOTS],
    spilled: Box<[Slot]>,
    /// The key's rate limits, `default` (the `ratelimit` shorthand) first when it has one.
    limits: Box<[Limit]>,
    /// Its identity's rate limits (as of this load) and the identity's cell.
    identity: Option<(Box<[Limit]>, Arc<IdentityCell>)>,
    /// The owner as it is, when its JSON form is not simply it in quotes.
    owner: Option<Box<str>>,
}

const SEP: char = '\u{1f}';

/// Rate limits (the key's and its identity's together) held inline in an entry's rare part.
const INLINE_SLOTS: usize = 4;

/// What the inline slots a key does not use hold.
const UNUSED: Spec = Spec {
    limit: 0,
    window_ms: 1,
};

/// A window of an identity's limit, by the limit's name and length.
type NamedWindow = (Box<str>, i64, Arc<AtomicWindow>);

/// A rate limit's numbers, as the hot path reads them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spec {
    pub(super) limit: i64,
    pub(super) window_ms: i64,
}

impl Spec {
    /// The start of the window `now` lies in.
    pub(super) fn window_start(self, now: Timestamp) -> i64 {
        now.millis().div_euclid(self.window_ms) * self.window_ms
    }
}

/// One rate limit of an entry as a verification uses it: its numbers and its window on this
/// node. The key's own window is the entry's, read and changed only under the entry's state
/// lock (atomics for `Sync`, never contended: plain loads and stores); its identity's window
/// is shared by the entries of all the identity's keys ([`AtomicWindow`]).
///
/// 32 bytes: the four held inline take 128 bytes of the entry's rare block.
pub(super) struct Slot {
    pub(super) spec: Spec,
    /// The key's own window: its number (its start over its length) above its count (a limit
    /// is at most 10^9), as [`AtomicWindow`] packs them.
    own: AtomicU64,
    /// The identity's window, for a limit of the identity.
    shared: Option<Arc<AtomicWindow>>,
}

impl Slot {
    fn own(spec: Spec) -> Slot {
        Slot {
            spec,
            own: AtomicU64::new(0),
            shared: None,
        }
    }

    /// The key's window `now` lies in: its number, its start (ms) and its count. One unsigned
    /// comparison while `now` lies in the window held; a division only when a window ended.
    /// Under the entry's state lock.
    #[inline]
    pub(super) fn own_window(&self, now: Timestamp) -> OwnWindow {
        let (number, count) = AtomicWindow::unpack(self.own.load(Ordering::Relaxed));
        let start = number * self.spec.window_ms;
        if (now.millis().wrapping_sub(start) as u64) < self.spec.window_ms as u64 {
            OwnWindow {
                number,
                start,
                count,
            }
        } else {
            let number = now.millis().div_euclid(self.spec.window_ms);
            OwnWindow {
                number,
                start: number * self.spec.window_ms,
                count: 0,
            }
        }
    }

    /// Sets the key's window to `w` with `count` (under the entry's state lock).
    #[inline]
    pub(super) fn set_own(&self, w: &OwnWindow, count: i64) {
        self.own.store(
            AtomicWindow::pack(w.number, count.max(0)),
            Ordering::Relaxed,
        );
    }

    /// The identity's window (for a limit of the identity).
    pub(super) fn shared(&self) -> Option<&AtomicWindow> {
        self.shared.as_deref()
    }
}

/// The key's own window of a limit as of a verification (see [`Slot::own_window`]).
pub(super) struct OwnWindow {
    number: i64,
    pub(super) start: i64,
    pub(super) count: i64,
}

/// One rate-limit window shared by the keys of an identity on this node, without a lock: the
/// window's number (its start over its length) and its count in one word. A verification
/// takes a slot with one compare-and-swap when there is one left.
#[derive(Default)]
pub struct AtomicWindow(AtomicU64);

impl AtomicWindow {
    fn unpack(v: u64) -> (i64, i64) {
        ((v >> 32) as i64, (v & 0xffff_ffff) as i64)
    }

    fn pack(number: i64, count: i64) -> u64 {
        ((number as u64) << 32) | (count as u64 & 0xffff_ffff)
    }

    /// The window `now` lies in, as stored: (its number, its start, its count); a count of 0
    /// for a window that began since (a division only then).
    #[inline]
    fn at(&self, v: u64, limit: Spec, now: Timestamp) -> (i64, i64, i64) {
        let (number, count) = Self::unpack(v);
        let start = number * limit.window_ms;
        if (now.millis().wrapping_sub(start) as u64) < limit.window_ms as u64 {
            (number, start, count)
        } else {
            let number = now.millis().div_euclid(limit.window_ms);
            (number, number * limit.window_ms, 0)
        }
    }

    /// The current window's (start, count).
    pub(super) fn peek(&self, limit: Spec, now: Timestamp) -> (i64, i64) {
        let (_, start, count) = self.at(self.0.load(Ordering::Relaxed), limit, now);
        (start, count)
    }

    /// Takes a slot of the current window when fewer than `limit.limit` are taken: `Ok` with
    /// the count after, or `Err` with the window's start.
    #[inline]
    pub(super) fn try_take(&self, limit: Spec, now: Timestamp) -> Result<(i64, i64), i64> {
        let mut v = self.0.load(Ordering::Relaxed);
        loop {
            let (number, start, count) = self.at(v, limit, now);
            if count >= limit.limit {
                return Err(start);
            }
            let next = Self::pack(number, count + 1);
            match self
                .0
                .compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok((start, count + 1)),
                Err(seen) => v = seen,
            }
        }
    }

    /// Gives back a slot taken in the window starting at `start` (a verification denied after
    /// all), unless that window is over.
    pub(super) fn untake(&self, limit: Spec, start: i64) {
        let mut v = self.0.load(Ordering::Relaxed);
        loop {
            let (number, count) = Self::unpack(v);
            if number * limit.window_ms != start || count == 0 {
                return;
            }
            let next = Self::pack(number, count - 1);
            match self
                .0
                .compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => v = seen,
            }
        }
    }
}

/// The rate-limit windows of one identity on this node, shared by the entries of all its keys
/// (found by limit name and length when an entry is built: entries loaded before and after a
/// change of the limits count in the same windows), and its quota.
pub struct IdentityCell {
    pub(super) id: Box<str>,
    /// The windows of its limits on this node, by name and length (taken at load time only:
    /// entries hold their own limits' windows).
    windows: Mutex<Vec<NamedWindow>>,
    /// The identity's quota, when it has one: an entry of its own (id `@` and the identity's
    /// id, in no shard) whose live state is this node's lease of it, with the `quota_version`
    /// it was read at. Locked only to clone or replace the pointer.
    pub(super) quota: Mutex<Option<(i64, Arc<Entry>)>>,
}

impl IdentityCell {
    pub(super) fn new(id: &str) -> Self {
        IdentityCell {
            id: id.into(),
            windows: Mutex::new(Vec::new()),
            quota: Mutex::new(None),
        }
    }

    /// The window of `limit` (by name and length): entries loaded before and after a change of
    /// the identity's limits count in the same windows for the limits they share.
    fn window(&self, limit: &Limit) -> Arc<AtomicWindow> {
        let mut all = lock(&self.windows);
        if let Some((_, _, w)) = all
            .iter()
            .find(|(n, len, _)| *len == limit.window_ms && *n == limit.name)
        {
            return w.clone();
        }
        let w = Arc::new(AtomicWindow::default());
        all.push((limit.name.clone(), limit.window_ms, w.clone()));
        w
    }

    /// The entry of the identity's quota, if it has one.
    pub(super) fn quota_entry(&self) -> Option<Arc<Entry>> {
        lock(&self.quota).as_ref().map(|(_, e)| e.clone())
    }
}

impl Entry {
    /// `identity`: the windows of the key's identity, when it has rate limits.
    pub(super) fn new(
        key: &Key,
        keyspace: Arc<Space>,
        quota: Option<Arc<Entry>>,
        identity: Option<Arc<IdentityCell>>,
    ) -> Entry {
        fn json(t: &mut String, v: &impl serde::Serialize) {
            match serde_json::to_string(v) {
                Ok(j) => t.push_str(&j),
                Err(_) => t.push_str("null"),
            }
        }
        let mut t = String::with_capacity(160);
        t.push_str(&key.id);
        t.push(SEP);
        json(&mut t, &key.name);
        t.push(SEP);
        let owner_at = t.len();
        json(&mut t, &key.owner);
        // Escaping lengthens: same length plus the quotes means the JSON is the owner quoted.
        let plain_owner = key
            .owner
            .as_ref()
            .is_none_or(|o| t.len() - owner_at == o.len() + 2);
        t.push(SEP);
        for (i, scope) in key.scopes.iter().enumerate() {
            if i > 0 {
                t.push(',');
            }
            json(&mut t, scope);
        }
        t.push(SEP);
        json(&mut t, &key.labels);
        t.push(SEP);
        json(&mut t, &key.meta);
        t.push(SEP);
        json(&mut t, &key.expires_at);

        let allowed = key.allowed_cidrs.as_ref().map(|c| {
            c.iter()
                .filter_map(|s| parse_cidr(s).ok())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let owner = (!plain_owner)
            .then(|| key.owner.as_deref().map(Box::from))
            .flatten();
        // `default` first: the limit `ratelimit` answers about.
        // At most `MAX_RATELIMITS` each (what the API takes; a limit's index fits a `u8`).
        let mut limits: Vec<Limit> = key
            .ratelimits
            .iter()
            .take(MAX_RATELIMITS)
            .map(Limit::new)
            .collect();
        limits.sort_by_key(|l| &*l.name != DEFAULT_LIMIT);
        let identity = identity
            .filter(|_| !key.owner_ratelimits.is_empty() || key.owner_quota_version.is_some())
            .map(|cell| {
                let limits: Box<[Limit]> = key
                    .owner_ratelimits
                    .iter()
                    .take(MAX_RATELIMITS)
                    .map(Limit::new)
                    .collect();
                (limits, cell)
            });
        let spec = |l: &Limit| Spec {
            limit: l.limit,
            window_ms: l.window_ms,
        };
        let mut slots: Vec<Slot> = limits.iter().map(|l| Slot::own(spec(l))).collect();
        if let Some((id_limits, cell)) = &identity {
            slots.extend(id_limits.iter().map(|l| Slot {
                shared: Some(cell.window(l)),
                ..Slot::own(spec(l))
            }));
        }
        let rare = (allowed.is_some()
            || !limits.is_empty()
            || identity.is_some()
            || quota.is_some()
            || owner.is_some())
        .then(|| {
            let n = slots.len();
            let (inline, spilled) = if n <= INLINE_SLOTS {
                let mut inline = [(); INLINE_SLOTS].map(|()| Slot::own(UNUSED));
                for (to, from) in inline.iter_mut().zip(slots) {
                    *to = from;
                }
                (inline, Box::default())
            } else {
                let unused = [(); INLINE_SLOTS].map(|()| Slot::own(UNUSED));
                (unused, slots.into_boxed_slice())
            };
            Box::new(Rare {
                own: limits.len() as u8,
                // At most `MAX_RATELIMITS` of each.
                slots: n as u8,
                inline,
                spilled,
                allowed,
                limits: limits.into_boxed_slice(),
                identity,
                identity_quota: key.owner_quota_version.is_some(),
                quota,
                owner,
            })
        });
        let mut state = LiveState {
            previous_use: key.last_used_at.map_or(NEVER, Timestamp::millis),
            ..LiveState::default()
        };
        if let Some(r) = key.remaining {
            // No lease yet: the first valid verification leases from the store.
            let m = state.more();
            m.remaining = Some(0);
            m.pool = r;
            if let (Some(refill), Some(pct)) = (key.refill, key.quota_low_percent) {
                // At most 10^12 × 99: no overflow.
                m.low_below = refill.amount.saturating_mul(pct) / 100;
            }
        }
        Entry {
            digest: digest(&key.hash),
            // A copy, not `into_boxed_str`: shrinking in place can keep the larger block.
            text: Box::from(t.as_str()),
            keyspace,
            state: Mutex::new(state),
            expires_ms: key.expires_at.map_or(i64::MAX, Timestamp::millis),
            rare,
            revoked: key.revoked_at.is_some(),
            // A disabled identity disables its keys (they are read again when it changes).
            enabled: key.enabled && !key.owner_disabled,
            has_owner: key.owner.is_some(),
            queued: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            moved: AtomicBool::new(false),
            stale_quota: AtomicBool::new(false),
            leased: AtomicBool::new(false),
        }
    }

    /// Piece `i` of [`Entry::text`].
    fn piece(&self, i: usize) -> &str {
        self.text.split(SEP).nth(i).unwrap_or("")
    }

    pub(crate) fn key_id(&self) -> &str {
        self.piece(0)
    }

    pub(crate) fn keyspace_id(&self) -> &str {
        self.keyspace.id()
    }

    pub(super) fn space(&self) -> &Arc<Space> {
        &self.keyspace
    }

    /// The key's name (decoded from the answer text's JSON string).
    pub(crate) fn name(&self) -> String {
        serde_json::from_str(self.piece(1)).unwrap_or_default()
    }

    pub(crate) fn owner(&self) -> Option<&str> {
        if !self.has_owner {
            return None;
        }
        match self.rare.as_ref().and_then(|r| r.owner.as_deref()) {
            Some(raw) => Some(raw),
            None => {
                let j = self.piece(2);
                Some(j.get(1..j.len().saturating_sub(1)).unwrap_or(""))
            }
        }
    }

    /// Appends the key's members of a `VALID` answer (`"key_id":..,"keyspace_id":..,"name":..,
    /// "owner":..,"scopes":[..],"labels":..,"meta":..,"expires_at":..`) to `out`.
    pub(crate) fn write_answer(&self, out: &mut Vec<u8>) {
        const NAMES: [&str; 7] = [
            "\"key_id\":\"",
            "\",\"name\":",
            ",\"owner\":",
            ",\"scopes\":[",
            "],\"labels\":",
            ",\"meta\":",
            ",\"expires_at\":",
        ];
        for (i, (name, piece)) in NAMES.iter().zip(self.text.split(SEP)).enumerate() {
            if i == 1 {
                out.extend_from_slice(b"\",\"keyspace_id\":\"");
                out.extend_from_slice(self.keyspace.id().as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(piece.as_bytes());
        }
    }

    /// About how long [`Entry::write_answer`]'s part is.
    pub(crate) fn answer_len(&self) -> usize {
        self.text.len() + self.keyspace.id().len() + 112
    }

    /// The key's scopes.
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &str> + Clone {
        // `"a","b"`: scopes hold neither `,` nor `"` (their grammar).
        self.piece(3)
            .split(',')
            .map(|s| s.trim_matches('"'))
            .filter(|s| !s.is_empty())
    }

    /// The checks that need no mutable state (`REVOKED` .. `INSUFFICIENT_SCOPE`). The answer
    /// text is read only when scopes are asked for (it is another cache line or two).
    pub(super) fn check(&self, req: &Request<'_>, now: Timestamp) -> Result<(), Code> {
        let own = || {
            if req.scopes.is_empty() {
                check_rules(&self.rules(), std::iter::empty(), &[], req.ip, now)
            } else {
                check_rules(&self.rules(), self.scopes(), req.scopes, req.ip, now)
            }
        };
        let Some(route) = req.route else {
            return own();
        };
        // Forward-auth: the keyspace's route rules add the scopes of the first matching rule,
        // or refuse a request none matches under `unmatched: deny` (once the key itself is
        // known to be usable: a revoked key is REVOKED whatever the path).
        self.keyspace.decide(route, |d| match d {
            RouteDecision::Require([]) => own(),
            RouteDecision::Require(extra) => {
                own()?;
                if keyward_core::scope::all_granted_by(self.scopes(), extra) {
                    Ok(())
                } else {
                    Err(Code::InsufficientScope)
                }
            }
            RouteDecision::NotAllowed => {
                check_rules(&self.rules(), std::iter::empty(), &[], req.ip, now)?;
                Err(Code::RouteNotAllowed)
            }
        })
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            revoked: self.revoked,
            expires_at: (self.expires_ms != i64::MAX)
                .then(|| Timestamp::from_millis(self.expires_ms)),
            enabled: self.enabled,
            allowed: self.rare.as_ref().and_then(|r| r.allowed.as_deref()),
        }
    }

    /// The key's own rate limits (`default` first).
    pub(crate) fn limits(&self) -> &[Limit] {
        self.rare.as_ref().map_or(&[], |r| &r.limits)
    }

    /// Its identity's rate limits and cell, when it has limits.
    pub(super) fn identity(&self) -> Option<(&[Limit], &Arc<IdentityCell>)> {
        self.rare
            .as_ref()
            .and_then(|r| r.identity.as_ref())
            .map(|(l, c)| (&l[..], c))
    }

    /// Every rate limit's slot: the key's (as many as [`Entry::limits`]), then its identity's.
    #[inline]
    pub(super) fn slots(&self) -> (&[Slot], &[Slot]) {
        match &self.rare {
            Some(r) => {
                let all = match r.inline.get(..usize::from(r.slots)) {
                    Some(inline) => inline,
                    None => &r.spilled,
                };
                all.split_at(usize::from(r.own).min(all.len()))
            }
            None => (&[], &[]),
        }
    }

    /// Whether its identity had a quota when this entry was read.
    pub(super) fn has_identity_quota(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.identity_quota)
    }

    /// The entry of its identity's quota, when it had one as this entry was read.
    pub(super) fn identity_quota(&self) -> Option<Arc<Entry>> {
        let r = self.rare.as_ref().filter(|r| r.identity_quota)?;
        r.identity.as_ref()?.1.quota_entry()
    }

    /// The identity's rate limits (none when the owner has none).
    pub(crate) fn identity_limits(&self) -> &[Limit] {
        self.identity().map_or(&[], |(l, _)| l)
    }

    /// Whether the key's limits say more than `ratelimit` (a limit not named `default`, or its
    /// identity's): answers then name limits (`ratelimits`, a denial's `limit`).
    pub(crate) fn has_named_limits(&self) -> bool {
        !self.identity_limits().is_empty()
            || self.limits().iter().any(|l| &*l.name != DEFAULT_LIMIT)
    }

    /// Whether `other` has the same rate limits (the key's and its identity's).
    pub(super) fn same_limits(&self, other: &Entry) -> bool {
        self.limits() == other.limits() && self.identity_limits() == other.identity_limits()
    }

    /// Whether any rate limit applies (the key's or its identity's).
    pub(super) fn has_limits(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.slots != 0)
    }

    /// Carries the key's windows of `old` (an earlier entry of the key, whose state is being
    /// handed over under its lock) into this one, not yet shared: by limit name and length.
    pub(super) fn take_windows(&self, old: &Entry) {
        let (olds, _) = old.slots();
        let (news, _) = self.slots();
        for (l, slot) in self.limits().iter().zip(news) {
            let from = old
                .limits()
                .iter()
                .position(|o| o.name == l.name && o.window_ms == l.window_ms)
                .and_then(|i| olds.get(i));
            if let Some(from) = from {
                slot.own
                    .store(from.own.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// The successor's entry quota is drawn from (during a rotation's grace period).
    pub(super) fn successor(&self) -> Option<&Arc<Entry>> {
        self.rare.as_ref().and_then(|r| r.quota.as_ref())
    }

    /// The entry quota is drawn from.
    pub(super) fn quota_cell(self: &Arc<Self>) -> &Arc<Entry> {
        self.successor().unwrap_or(self)
    }

    pub(super) fn is_moved(&self) -> bool {
        self.moved.load(Ordering::Acquire)
    }

    /// The entry that took over this one's state (read under its lock).
    pub(super) fn forward(state: &LiveState) -> Option<Arc<Entry>> {
        state.more.as_ref().and_then(|m| m.forward.clone())
    }

    /// Runs `f` on the state `e` held, under its lock: in `e`, or in the entry that took it
    /// over last. Returns that entry too.
    pub(super) fn with_state<R>(
        e: &Arc<Entry>,
        f: impl FnOnce(&mut LiveState) -> R,
    ) -> (Arc<Entry>, R) {
        let mut e = e.clone();
        loop {
            let mut s = lock(&e.state);
            if e.is_moved() {
                if let Some(next) = Entry::forward(&s) {
                    drop(s);
                    e = next;
                    continue;
                }
            }
            let r = f(&mut s);
            drop(s);
            return (e, r);
        }
    }

    /// Whether a verification must read the store first: the key changed since this entry was
    /// loaded, or the entry its quota is drawn from was replaced.
    pub(super) fn needs_reload(&self) -> bool {
        self.stale.load(Ordering::Acquire)
            || self.is_moved()
            || self
                .successor()
                .is_some_and(|s| s.is_moved() || s.stale.load(Ordering::Acquire))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use keyward_core::keyformat;

    use super::*;

    /// A key whose free-text fields hold what JSON must escape (and the separator itself).
    /// Shared with the other modules' tests.
    pub(in crate::verifier) fn key(owner: Option<&str>) -> Key {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("env\u{1f}x".to_string(), "pr\"od\u{e9}".to_string());
        let mut meta = serde_json::Map::new();
        meta.insert(
            "n".into(),
            serde_json::json!({"a": [1, 2.5, "\u{1f}\\"], "b": null}),
        );
        let plaintext = keyformat::generate("acme");
        let mut k = Key::for_plaintext(
            plaintext.expose(),
            "ks_7Yb",
            Timestamp::from_millis(0),
            keyward_core::model::Actor::system(),
        )
        .expect("a generated key parses");
        k.id = "key_2x9ZQ".into();
        k.name = "svc \"one\"\u{1f}\n".into();
        k.owner = owner.map(str::to_string);
        k.scopes = vec!["orders:read".into(), "orders:*".into()];
        k.labels = labels;
        k.meta = meta;
        k.expires_at = Some(Timestamp::from_millis(1_800_000_000_123));
        k
    }

    pub(in crate::verifier) fn entry(k: &Key) -> Entry {
        Entry::new(k, Arc::new(Space::new(&k.keyspace_id)), None, None)
    }

    /// The layout the hot path's cost depends on: a cached key without rare features is 96
    /// bytes, and a rate limit's slot 32 (four held inline in the rare part).
    #[test]
    fn an_entry_is_96_bytes_and_a_limit_slot_32() {
        assert_eq!(std::mem::size_of::<Entry>(), 96);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    /// The compact entry answers exactly what serializing the key's fields answers, whatever
    /// the free-text fields hold (quotes, control characters, the separator itself).
    #[test]
    fn the_compact_entry_renders_the_fields_as_serde_does() {
        for owner in [None, Some("ops \u{1f} team \"a\""), Some("team-billing")] {
            let k = key(owner);
            let e = entry(&k);
            let mut out = b"{".to_vec();
            e.write_answer(&mut out);
            out.push(b'}');
            let got: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            let want = serde_json::json!({
                "key_id": k.id, "keyspace_id": k.keyspace_id, "name": k.name, "owner": k.owner,
                "scopes": k.scopes, "labels": k.labels, "meta": k.meta, "expires_at": k.expires_at,
            });
            assert_eq!(got, want);
            assert_eq!(e.key_id(), "key_2x9ZQ");
            assert_eq!(e.keyspace_id(), "ks_7Yb");
            assert_eq!(e.owner(), owner);
            assert_eq!(e.scopes().collect::<Vec<_>>(), ["orders:read", "orders:*"]);
        }
        let mut k = key(None);
        k.scopes.clear();
        assert_eq!(entry(&k).scopes().count(), 0);
    }
}
