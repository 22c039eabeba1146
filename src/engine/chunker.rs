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
use std::sync::Arc;

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

/// Reads `r` to its end, calling `emit` for each chunk in order. `buf` is reused across
/// calls. `emit` returns false to stop early. Returns the bytes read.
pub fn stream_chunks<R: Read>(
    mut r: R,
    p: &CdcParams,
    buf: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> bool,
) -> io::Result<u64> {
    let cap = p.max * 2;
    if buf.len() < cap {
        buf.resize(cap, 0);
    }
    let (mut start, mut len, mut eof, mut total) = (0usize, 0usize, false, 0u64);
    loop {
        // Keep at least `max` bytes ahead of `start` unless the stream has ended.
        if !eof && len - start < p.max {
            buf.copy_within(start..len, 0);
            len -= start;
            start = 0;
            while len < cap {
                match r.read(&mut buf[len..cap]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        len += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if start == len {
            return Ok(total);
        }
        let n = p.cut(&buf[start..len]);
        if !emit(&buf[start..start + n]) {
            return Ok(total);
        }
        start += n;
    }
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Same boundaries as fastcdc's StreamCDC, whatever the read sizes.
        #[test]
        fn matches_streamcdc(seed in any::<u64>(), len in 0usize..300_000, step in 1usize..70_000) {
            let mut x = seed | 1;
            let data: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x >> 24) as u8 }).collect();
            let p = CdcParams::new(1024, 4096, 16384);
            let want: Vec<usize> = StreamCDC::new(&data[..], 1024, 4096, 16384).map(|c| c.unwrap().length).collect();
            let mut got = Vec::new();
            let mut buf = Vec::new();
            let n = stream_chunks(Trickle(&data, step), &p, &mut buf, |c| { got.push(c.len()); true }).unwrap();
            prop_assert_eq!(n, len as u64);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(p.split(&data).iter().map(|c| c.len()).collect::<Vec<_>>(), want);
        }
    }

    /// Keyed gear tables move the boundaries: the same data cuts differently per key.
    #[test]
    fn keyed_gear_changes_boundaries() {
        let mut x = 7u64;
        let data: Vec<u8> = (0..400_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
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
