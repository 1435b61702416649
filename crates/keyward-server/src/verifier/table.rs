//! The cache's table of found keys: open addressing over buckets of one cache line each, so that
//! a lookup finds the tags and the pointers it compares in the same line (one memory access
//! before the entry, where a SwissTable-style set keeps control bytes and slots apart: two).
//!
//! - A bucket holds seven slots (a tag byte and an 8-byte pointer each) and an overflow count:
//!   how many values whose home is this bucket or an earlier one live past it. A lookup stops
//!   at the first bucket whose count is zero, so a miss usually reads one line too.
//! - The home bucket comes from the digest's first eight bytes, the tag from its ninth (digests
//!   are SHA-256 output: uniform, independent bytes; the verifier's shard uses the last byte).
//!   A tag matches a wrong value with chance 1/128; the digest in the value decides.
//! - At most [`MAX_PER_BUCKET`] values per bucket on average; past that the table doubles.
//!   Overflow counts saturate at 255 and then stay (a longer walk for lookups, never a wrong
//!   answer) until the next resize rebuilds them.

use super::Digest;

/// What the table holds: values that carry their digest.
pub(crate) trait Keyed {
    fn digest(&self) -> &Digest;
}

const SLOTS: usize = 7;
/// Average values per bucket before the table grows (6 of 7 slots: about 86 %).
const MAX_PER_BUCKET: usize = 6;
const EMPTY: u8 = 0;
const SATURATED: u8 = u8::MAX;

#[repr(C, align(64))]
struct Bucket<V> {
    tags: [u8; SLOTS],
    overflow: u8,
    slots: [Option<V>; SLOTS],
}

impl<V> Default for Bucket<V> {
    fn default() -> Self {
        Bucket {
            tags: [EMPTY; SLOTS],
            overflow: 0,
            slots: Default::default(),
        }
    }
}

pub(crate) struct Table<V> {
    buckets: Vec<Bucket<V>>,
    len: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            buckets: Vec::new(),
            len: 0,
        }
    }
}

fn tag(d: &Digest) -> u8 {
    d[8] | 0x80
}

/// The home bucket of `d` among `n` (a multiply-shift: any `n`, no modulo).
fn home(d: &Digest, n: usize) -> usize {
    let mut h = [0u8; 8];
    h.copy_from_slice(&d[..8]);
    ((u128::from(u64::from_le_bytes(h)) * n as u128) >> 64) as usize
}

/// The bucket after `i` among `n` (the last wraps to the first).
fn next(i: usize, n: usize) -> usize {
    if i + 1 == n {
        0
    } else {
        i + 1
    }
}

impl<V: Keyed> Table<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Where `d` is: (bucket, slot).
    fn find(&self, d: &Digest) -> Option<(usize, usize)> {
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        let t = tag(d);
        let mut i = home(d, n);
        // Every bucket at most once (a full table with saturated counts would otherwise loop).
        for _ in 0..n {
            let b = &self.buckets[i];
            for s in 0..SLOTS {
                if b.tags[s] == t {
                    if let Some(v) = &b.slots[s] {
                        if v.digest() == d {
                            return Some((i, s));
                        }
                    }
                }
            }
            if b.overflow == 0 {
                return None;
            }
            i = next(i, n);
        }
        None
    }

    pub(crate) fn get(&self, d: &Digest) -> Option<&V> {
        let (i, s) = self.find(d)?;
        self.buckets[i].slots[s].as_ref()
    }

    /// Inserts `v`, or replaces the value with its digest (returned).
    pub(crate) fn replace(&mut self, v: V) -> Option<V> {
        if let Some((i, s)) = self.find(v.digest()) {
            return self.buckets[i].slots[s].replace(v);
        }
        if self.len + 1 > self.buckets.len() * MAX_PER_BUCKET {
            self.grow();
        }
        self.place(v);
        self.len += 1;
        None
    }

    /// Puts `v` (not in the table) in the first free slot from its home on.
    fn place(&mut self, v: V) {
        let n = self.buckets.len();
        let t = tag(v.digest());
        let mut i = home(v.digest(), n);
        loop {
            let b = &mut self.buckets[i];
            if let Some(s) = b.tags.iter().position(|&x| x == EMPTY) {
                b.tags[s] = t;
                b.slots[s] = Some(v);
                return;
            }
            if b.overflow != SATURATED {
                b.overflow += 1;
            }
            // Not every bucket is full (the table grows first), so this ends.
            i = next(i, n);
        }
    }

    pub(crate) fn remove(&mut self, d: &Digest) -> Option<V> {
        let (at, s) = self.find(d)?;
        let n = self.buckets.len();
        let b = &mut self.buckets[at];
        b.tags[s] = EMPTY;
        let v = b.slots[s].take();
        // The buckets the value's insertion passed over no longer have it beyond them.
        let mut i = home(d, n);
        while i != at {
            let b = &mut self.buckets[i];
            if b.overflow != SATURATED {
                b.overflow -= 1;
            }
            i = next(i, n);
        }
        self.len -= 1;
        v
    }

    fn grow(&mut self) {
        let n = (self.buckets.len() * 2).max(1);
        let old = std::mem::replace(
            &mut self.buckets,
            std::iter::repeat_with(Bucket::default).take(n).collect(),
        );
        for b in old {
            for v in b.slots.into_iter().flatten() {
                self.place(v);
            }
        }
    }

    /// Checks every overflow count: exactly the values placed past the bucket from a home at or
    /// before it, or saturated.
    #[cfg(test)]
    fn check_counts(&self) -> Result<(), String> {
        let n = self.buckets.len();
        let mut expected = vec![0usize; n];
        for (at, b) in self.buckets.iter().enumerate() {
            for v in b.slots.iter().flatten() {
                let mut i = home(v.digest(), n);
                while i != at {
                    expected[i] += 1;
                    i = next(i, n);
                }
            }
        }
        for (i, b) in self.buckets.iter().enumerate() {
            if b.overflow != SATURATED && usize::from(b.overflow) != expected[i] {
                return Err(format!(
                    "bucket {i}: count {} for {} values past it",
                    b.overflow, expected[i]
                ));
            }
            let tags = b.tags.iter().map(|&t| t != EMPTY);
            if !tags.zip(&b.slots).all(|(t, s)| t == s.is_some()) {
                return Err(format!(
                    "bucket {i}: a tag without a value or a value without one"
                ));
            }
        }
        Ok(())
    }

    /// Bytes the table holds (the buckets; values point elsewhere).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket<V>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, PartialEq)]
    struct V(Box<(Digest, u32)>);

    impl Keyed for V {
        fn digest(&self) -> &Digest {
            &self.0 .0
        }
    }

    /// A digest with its home bytes and tag byte drawn from a small set, so that values crowd
    /// into few buckets (overflow, saturation, wrap-around) and share tags.
    fn crowded(x: u64) -> Digest {
        let mut d = [0u8; 16];
        // Home: the top bits of the first eight bytes; a few distinct homes, near the end too.
        d[7] = [0u8, 0x40, 0xff][(x % 3) as usize];
        d[8] = (x % 5) as u8;
        d[9..13].copy_from_slice(&((x / 15) as u32).to_le_bytes());
        d[13] = (x % 15) as u8;
        d
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket<std::sync::Arc<u64>>>(), 64);
        assert_eq!(std::mem::align_of::<Bucket<std::sync::Arc<u64>>>(), 64);
    }

    proptest::proptest! {
        /// Any sequence of inserts, replacements and removals leaves the table answering as a
        /// map does, also with many values sharing a home bucket and a tag.
        #[test]
        fn the_table_behaves_as_a_map(
            ops in proptest::collection::vec((0u8..3, 0u64..2000, proptest::bool::ANY), 1..3000)
        ) {
            let mut t: Table<V> = Table::default();
            let mut m: HashMap<Digest, u32> = HashMap::new();
            for (n, (op, x, crowd)) in ops.into_iter().enumerate() {
                let d = if crowd {
                    crowded(x)
                } else {
                    let mut d = [0u8; 16];
                    d[..8].copy_from_slice(&x.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
                    d[8..16].copy_from_slice(&x.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).to_le_bytes());
                    d
                };
                let n = n as u32;
                match op {
                    0 | 1 => {
                        let old = t.replace(V(Box::new((d, n)))).map(|v| v.0 .1);
                        proptest::prop_assert_eq!(old, m.insert(d, n));
                    }
                    _ => {
                        let old = t.remove(&d).map(|v| v.0 .1);
                        proptest::prop_assert_eq!(old, m.remove(&d));
                    }
                }
                proptest::prop_assert_eq!(t.len(), m.len());
                if n.is_multiple_of(64) {
                    if let Err(e) = t.check_counts() {
                        proptest::prop_assert!(false, "{}", e);
                    }
                }
            }
            if let Err(e) = t.check_counts() {
                proptest::prop_assert!(false, "{}", e);
            }
            for (d, n) in &m {
                proptest::prop_assert_eq!(t.get(d).map(|v| v.0 .1), Some(*n));
            }
            for x in 0..2000 {
                let d = crowded(x);
                proptest::prop_assert_eq!(t.get(&d).map(|v| v.0 .1), m.get(&d).copied());
            }
        }
    }

    #[test]
    fn a_million_values_take_about_17_bytes_each_in_64_shards() {
        // The verifier's shards hold 1/64 of the keys each.
        let mut t: Table<V> = Table::default();
        let per_shard = 1_000_000 / 64;
        for x in 0..per_shard as u64 {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&x.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
            d[8] = (x.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 56) as u8;
            t.replace(V(Box::new((d, 0))));
        }
        assert_eq!(t.len(), per_shard);
        let per_value = t.bytes() as f64 / per_shard as f64;
        assert!(per_value < 17.0, "{per_value} bytes per value");
    }
}
