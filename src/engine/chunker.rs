//! Content-defined chunking (FastCDC 2020, normalization level 1) over a reusable buffer.
//!
//! fastcdc's `StreamCDC` allocates and zero-fills a `max_size` buffer per stream and shifts
//! it after every chunk; with tens of thousands of small files that dominated the walker.
//! This keeps one buffer per walker and calls fastcdc's own cut-point function, so chunk
//! boundaries are exactly FastCDC's.

//!
//! Format v2 keys the gear table per chain ([`crate::crypto::gear_tables`]), so the same data
//! is cut at different places in different repositories.

use std::io::{self, Read};
use std::sync::{Arc, OnceLock};

use fastcdc::v2020::{cut, cut_gear, MASKS};

/// A keyed gear table and its left-shifted twin.
pub type GearTables = (Box<[u64; 256]>, Box<[u64; 256]>);

#[derive(Clone, Debug)]
pub struct CdcParams {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Option<Arc<GearTables>>,
}

impl CdcParams {
    pub fn new(min: u32, avg: u32, max: u32) -> Self {
        assert!(64 <= min && min <= avg && avg <= max && max <= 16 * 1024 * 1024);
        let bits = avg.ilog2() as usize;
        // Normalization level 1, as fastcdc's default.
        CdcParams {
            min: min as usize,
            avg: avg as usize,
            max: max as usize,
            mask_s: MASKS[bits + 1],
            mask_l: MASKS[bits - 1],
            gear: None,
        }
    }

    /// Uses a keyed gear table instead of fastcdc's public one.
    pub fn with_gear(mut self, gear: Option<Arc<GearTables>>) -> Self {
        self.gear = gear;
        self
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Length of the first chunk of `data` (all of it if it is short).
    pub fn cut(&self, data: &[u8]) -> usize {
        if let Some(g) = &self.gear {
            let (_, n) = cut_gear(
                data,
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
                &g.0,
                &g.1,
            );
            return n.max(1).min(data.len());
        }
        let (_, n) = cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n.max(1).min(data.len())
    }

    /// All chunks of an in-memory buffer.
    /// The largest chunk these parameters cut.
    pub fn max_size(&self) -> usize {
        self.max
    }

    pub fn split<'a>(&self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.cut(data);
            out.push(&data[..n]);
            data = &data[n..];
        }
        out
    }
}

/// fastcdc's own gear tables, which chains without a keyed table (format 1's) cut with. The
/// crate does not export them, so they are read back through its public `cut`: with a zero
/// mask it stops after the first byte of a pair and returns the hash so far, that byte's
/// left-shifted entry; with a zero mask for the second byte only, it returns both entries'
/// sum, which gives the second byte's entry.
fn public_gear() -> &'static GearTables {
    static TABLES: OnceLock<GearTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut gear = Box::new([0u64; 256]);
        let mut gear_ls = Box::new([0u64; 256]);
        for b in 0..=255u8 {
            gear_ls[b as usize] = cut(&[b, 0], 0, 2, 2, u64::MAX, u64::MAX, 0, u64::MAX).0;
        }
        // A first byte whose entry is not 0, so that the first check never stops.
        let lead = (0..=255u8)
            .find(|b| gear_ls[*b as usize] != 0)
            .expect("a non-zero gear entry");
        for b in 0..=255u8 {
            let (sum, _) = cut(&[lead, b], 0, 2, 2, 0, u64::MAX, u64::MAX, u64::MAX);
            gear[b as usize] = sum.wrapping_sub(gear_ls[lead as usize]);
        }
        (gear, gear_ls)
    })
}

/// Where a chunk's cut search stands: the next pair of bytes to hash and the hash so far.
/// fastcdc hashes from the minimum on, two bytes at a time, and the hash at a byte depends
/// only on the bytes before it, so a search over a chunk's first bytes goes on where it
/// stopped when more arrive and finds what one search over them all would.
#[derive(Default)]
pub struct CutScan {
    pair: usize,
    hash: u64,
}

impl CdcParams {
    /// The length of the chunk that `data` begins with, once more bytes cannot change it: its
    /// cut point, the maximum, or (`end`: the input has no more) all of `data`. `None` while it
    /// is undecided (or `data` is empty at the end). The same lengths as [`CdcParams::cut`],
    /// however the chunk's bytes arrive.
    pub fn scan(&self, s: &mut CutScan, data: &[u8], end: bool) -> Option<usize> {
        let limit = data.len().min(self.max);
        let decided = end || data.len() >= self.max;
        if limit <= self.min {
            return (decided && limit > 0).then_some(limit);
        }
        let (gear, gear_ls) = match &self.gear {
            Some(g) => (&*g.0, &*g.1),
            None => {
                let g = public_gear();
                (&*g.0, &*g.1)
            }
        };
        // fastcdc's pairs: the one at `i` is bytes 2i and 2i+1; the small mask holds before
        // the average length, the large one after it.
        let mut i = s.pair.max(self.min / 2);
        let mut h = s.hash;
        let pairs = limit / 2;
        for (mask, mask_ls, until) in [
            (self.mask_s, self.mask_s << 1, pairs.min(self.avg / 2)),
            (self.mask_l, self.mask_l << 1, pairs),
        ] {
            if i >= until {
                continue;
            }
            for (k, pair) in data[2 * i..2 * until].chunks_exact(2).enumerate() {
                h = (h << 2).wrapping_add(gear_ls[pair[0] as usize]);
                if h & mask_ls == 0 {
                    return Some(2 * (i + k));
                }
                h = h.wrapping_add(gear[pair[1] as usize]);
                if h & mask == 0 {
                    return Some(2 * (i + k) + 1);
                }
            }
            i = until;
        }
        s.pair = i;
        s.hash = h;
        decided.then_some(limit)
    }
}

/// Bytes read at a time once a chunk has its minimum length: the cut is searched as they
/// arrive, and what was read past it (less than this) is the one copy chunk bytes get.
const READ_BLOCK: usize = 256 << 10;
/// What is read to find the end of an input that has reached its expected length.
const END_PROBE: usize = 4 << 10;

/// Reads `r` to its end chunk by chunk, each straight into a buffer of its own (of at least
/// the maximum chunk's capacity), after `head` zero bytes of room the caller may use (a
/// backup writes a chunk's payload type there, so that a chunk stored raw is sealed where it
/// lies). `take` gives an empty buffer and `give` takes back one not used; `emit` gets each
/// chunk in order (its buffer: `head` bytes, then the chunk), takes its buffer or leaves it
/// (to be reused), and returns false to stop. `expected` is the length the input should have
/// (a file's size): no more than that is asked for ahead of its end. Returns the bytes read.
pub fn read_chunks<R: Read>(
    mut r: R,
    p: &CdcParams,
    expected: Option<u64>,
    head: usize,
    mut take: impl FnMut() -> Vec<u8>,
    mut give: impl FnMut(Vec<u8>),
    mut emit: impl FnMut(&mut Vec<u8>) -> bool,
) -> io::Result<u64> {
    let mut fresh = || {
        let mut v = take();
        if v.capacity() < head + p.max {
            v = Vec::with_capacity(head + p.max);
        }
        v.clear();
        v.resize(head, 0);
        v
    };
    let mut cur = fresh();
    let mut scan = CutScan::default();
    let (mut total, mut eof) = (0u64, false);
    let res = loop {
        if let Some(n) = p.scan(&mut scan, &cur[head..], eof) {
            if eof && head + n == cur.len() {
                // The last chunk.
                emit(&mut cur);
                break Ok(total);
            }
            let mut next = fresh();
            next.extend_from_slice(&cur[head + n..]);
            cur.truncate(head + n);
            let go_on = emit(&mut cur);
            give(std::mem::replace(&mut cur, next));
            if !go_on {
                break Ok(total);
            }
            scan = CutScan::default();
            continue;
        }
        if eof {
            break Ok(total);
        }
        // Undecided, so shorter than the maximum: read up to the minimum and a block more.
        let have = cur.len() - head;
        let mut want = (p.min.saturating_sub(have) + READ_BLOCK).min(p.max - have);
        if let Some(len) = expected {
            want = match len.saturating_sub(total) {
                0 => want.min(END_PROBE),
                left => want.min(left.try_into().unwrap_or(usize::MAX)),
            };
        }
        // Into the buffer's spare room as it is (a file reads into it without it being
        // zero-filled first, which was 2% of a backup's CPU time); short only at the end.
        let got = match (&mut r).take(want as u64).read_to_end(&mut cur) {
            Ok(n) => n,
            Err(e) => {
                give(cur);
                return Err(e);
            }
        };
        eof = got < want;
        total += got as u64;
    };
    give(cur);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::StreamCDC;
    use proptest::prelude::*;

    /// Reads in small pieces, to exercise refills.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(b.len()).min(self.1);
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Same boundaries as fastcdc's StreamCDC, whatever the read sizes, each chunk in a
        /// buffer of its own with room for the largest, after the room asked for.
        #[test]
        fn matches_streamcdc(seed in any::<u64>(), len in 0usize..300_000, step in 1usize..70_000, hint in any::<bool>(), head in 0usize..3) {
            let data = noise(seed, len);
            let p = CdcParams::new(1024, 4096, 16384);
            let want: Vec<usize> = StreamCDC::new(&data[..], 1024, 4096, 16384).map(|c| c.unwrap().length).collect();
            let mut got = Vec::new();
            let expected = hint.then_some(len as u64);
            let n = read_chunks(Trickle(&data, step), &p, expected, head, Vec::new, drop, |c| {
                assert!(c.capacity() >= head + 16384);
                assert_eq!(&c[..head], &vec![0u8; head][..], "the room before the chunk");
                got.push(c[head..].to_vec());
                true
            }).unwrap();
            prop_assert_eq!(n, len as u64);
            prop_assert_eq!(got.iter().map(|c| c.len()).collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(got.concat(), data.clone());
            prop_assert_eq!(p.split(&data).iter().map(|c| c.len()).collect::<Vec<_>>(), want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The resumable search finds fastcdc's `cut_gear` point, with a keyed table and
        /// with fastcdc's own (read back through `cut`), for odd and even parameters, on
        /// noise and on runs of one byte (cut at the maximum), however the bytes arrive.
        #[test]
        fn the_resumable_search_cuts_where_fastcdc_does(
            seed in any::<u64>(),
            len in 0usize..40_000,
            steps in proptest::collection::vec(1usize..9_000, 1..12),
            odd in any::<bool>(),
            keyed in any::<bool>(),
            flat in any::<bool>(),
        ) {
            let (min, avg, max) = if odd { (1001, 4095, 16383) } else { (1024, 4096, 16384) };
            let gear = keyed.then(|| Arc::new(crate::crypto::gear_tables(&crate::crypto::SecretKey::random())));
            let p = CdcParams::new(min, avg, max).with_gear(gear);
            let data = if flat { vec![7u8; len] } else { noise(seed, len) };
            let mut s = CutScan::default();
            let mut have = 0;
            let mut got = None;
            for step in steps.iter().cycle() {
                have = (have + step).min(data.len());
                let end = have == data.len();
                if let Some(n) = p.scan(&mut s, &data[..have], end) {
                    got = Some(n);
                    break;
                }
                if end {
                    break;
                }
            }
            let want = (!data.is_empty()).then(|| p.cut(&data));
            prop_assert_eq!(got, want);
        }
    }

    /// The table read back through `cut` is fastcdc's: its own `cut` and a search with it
    /// agree on every chunk of a long input.
    #[test]
    fn fastcdcs_own_table_is_read_back_whole() {
        let (gear, gear_ls) = public_gear();
        for b in 0..256 {
            assert_eq!(gear_ls[b], gear[b] << 1);
        }
        assert!(gear.iter().collect::<std::collections::HashSet<_>>().len() > 250);
        let data = noise(3, 2_000_000);
        let p = CdcParams::new(1024, 4096, 16384);
        let mut rest = &data[..];
        let mut cuts = 0;
        while !rest.is_empty() {
            let n = p.scan(&mut CutScan::default(), rest, true).unwrap();
            assert_eq!(n, p.cut(rest));
            rest = &rest[n..];
            cuts += 1;
        }
        assert!(cuts > 100);
    }

    /// Keyed gear tables move the boundaries: the same data cuts differently per key.
    #[test]
    fn keyed_gear_changes_boundaries() {
        let data = noise(7, 400_000);
        let lens = |g: Option<Arc<GearTables>>| {
            CdcParams::new(1024, 4096, 16384)
                .with_gear(g)
                .split(&data)
                .iter()
                .map(|c| c.len())
                .collect::<Vec<_>>()
        };
        let k1 = Arc::new(crate::crypto::gear_tables(
            &crate::crypto::SecretKey::random(),
        ));
        let k2 = Arc::new(crate::crypto::gear_tables(
            &crate::crypto::SecretKey::random(),
        ));
        let (a, b, plain) = (lens(Some(k1.clone())), lens(Some(k2)), lens(None));
        assert_ne!(a, b);
        assert_ne!(a, plain);
        assert_eq!(a, lens(Some(k1)));
        assert_eq!(a.iter().sum::<usize>(), data.len());
    }
}
