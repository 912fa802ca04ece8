//! A blocked Bloom filter: each key touches one 64-byte line (one cache miss per probe).

use crate::engine::format::{hash64, Cursor};

const LINE_BITS: u64 = 512;
const LINE_BYTES: usize = 64;

fn remix(h: u64) -> u64 {
    let mut z = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^= z >> 29;
    z
}

/// Builds a filter from key hashes.
pub(crate) struct BloomBuilder {
    hashes: Vec<u64>,
    bits_per_key: u32,
}

impl BloomBuilder {
    pub fn new(bits_per_key: u32) -> Self {
        BloomBuilder {
            hashes: Vec::new(),
            bits_per_key,
        }
    }

    pub fn add(&mut self, key: &[u8]) {
        self.hashes.push(hash64(key));
    }

    /// Encodes `k | n_lines | lines`.
    pub fn finish(&self, out: &mut Vec<u8>) {
        let bits = (self.hashes.len() as u64 * u64::from(self.bits_per_key)).max(1);
        let n_lines = bits.div_ceil(LINE_BITS).max(1);
        // k = ln2 * bits/key, capped so 9-bit probes fit in one 64-bit hash.
        let k = ((f64::from(self.bits_per_key) * 0.69) as u32).clamp(1, 7) as u8;
        out.push(k);
        out.extend_from_slice(&(n_lines as u32).to_le_bytes());
        let start = out.len();
        out.resize(start + n_lines as usize * LINE_BYTES, 0);
        let lines = &mut out[start..];
        for &h in &self.hashes {
            let line = line_of(h, n_lines);
            let mut p = remix(h);
            for _ in 0..k {
                let bit = (p & 511) as usize;
                p >>= 9;
                lines[line * LINE_BYTES + bit / 8] |= 1 << (bit % 8);
            }
        }
    }
}

fn line_of(h: u64, n_lines: u64) -> usize {
    (((h >> 32) * n_lines) >> 32) as usize
}

/// A decoded filter, kept in memory for the table's lifetime.
pub(crate) struct Bloom {
    k: u8,
    n_lines: u64,
    lines: Box<[u8]>,
}

impl Bloom {
    pub fn decode(block: &[u8]) -> Result<Bloom, &'static str> {
        let mut c = Cursor::new(block);
        let k = c.u8()?;
        if k == 0 || k > 7 {
            return Err("filter probe count out of range");
        }
        let n_lines = u64::from(c.u32()?);
        if n_lines == 0 {
            return Err("filter has no lines");
        }
        let len = usize::try_from(n_lines)
            .ok()
            .and_then(|n| n.checked_mul(LINE_BYTES))
            .ok_or("filter size overflows")?;
        if len != c.remaining() {
            return Err("filter size does not match its block");
        }
        let lines = c.bytes(len)?.into();
        Ok(Bloom { k, n_lines, lines })
    }

    pub fn may_contain_hash(&self, h: u64) -> bool {
        let line = line_of(h, self.n_lines) * LINE_BYTES;
        let bytes = &self.lines[line..line + LINE_BYTES];
        let mut p = remix(h);
        for _ in 0..self.k {
            let bit = (p & 511) as usize;
            p >>= 9;
            if bytes[bit / 8] & (1 << (bit % 8)) == 0 {
                return false;
            }
        }
        true
    }

    pub fn bytes(&self) -> usize {
        self.lines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = BloomBuilder::new(10);
        for i in 0..10_000u32 {
            b.add(format!("key{i}").as_bytes());
        }
        let mut enc = Vec::new();
        b.finish(&mut enc);
        let f = Bloom::decode(&enc).unwrap();
        for i in 0..10_000u32 {
            assert!(f.may_contain_hash(hash64(format!("key{i}").as_bytes())));
        }
        let fp = (0..10_000u32)
            .filter(|i| f.may_contain_hash(hash64(format!("other{i}").as_bytes())))
            .count();
        assert!(fp < 300, "false positive rate {fp}/10000 is above 3%");
    }

    #[test]
    fn decode_rejects_bad_sizes() {
        assert!(Bloom::decode(&[]).is_err());
        assert!(Bloom::decode(&[7, 1, 0, 0, 0]).is_err());
        assert!(Bloom::decode(&[9, 1, 0, 0, 0]).is_err());
        assert!(Bloom::decode(&[3, 0xff, 0xff, 0xff, 0xff, 0]).is_err());
        let mut ok = vec![3, 1, 0, 0, 0];
        ok.extend_from_slice(&[0u8; 64]);
        assert!(Bloom::decode(&ok).is_ok());
    }
}
