//! Fixed-width bitsets, for reachability among the messages of an order.
//!
//! The order checks ask "is every predecessor of m2 delivered by r before
//! m2?" once per delivery; with one row of bits per message that is a few
//! dozen word operations instead of a walk over the predecessors.

/// Words needed for `n` bits.
pub(crate) fn words_for(n: usize) -> usize {
    n.div_ceil(64)
}

/// Sets bit `i`; out-of-range bits are ignored.
#[inline]
pub(crate) fn set(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1u64 << (i % 64);
    }
}

/// `dst |= src`, over the shorter of the two.
#[inline]
pub(crate) fn or_into(dst: &mut [u64], src: &[u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= *s;
    }
}

/// The bits set in `word`, as indices offset by `64 * word_index`.
#[inline]
pub(crate) fn ones(word_index: usize, mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let b = word.trailing_zeros() as usize;
        word &= word - 1;
        Some(word_index * 64 + b)
    })
}

/// The mask of bits `lo..hi` within word `w`.
#[inline]
pub(crate) fn range_mask(w: usize, lo: usize, hi: usize) -> u64 {
    let start = w * 64;
    let end = start + 64;
    if hi <= start || lo >= end {
        return 0;
    }
    let from = lo.saturating_sub(start);
    let to = hi.min(end) - start;
    let high = if to == 64 { u64::MAX } else { (1u64 << to) - 1 };
    high & !((1u64 << from) - 1)
}

/// `rows` rows of `cols` bits each, in one allocation.
pub(crate) struct BitMatrix {
    words: usize,
    data: Vec<u64>,
}

impl BitMatrix {
    pub(crate) fn new(rows: usize, cols: usize) -> Self {
        let words = words_for(cols);
        BitMatrix {
            words,
            data: vec![0; rows.saturating_mul(words)],
        }
    }

    /// Row `r`; empty when out of range.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[u64] {
        self.data
            .get(r * self.words..(r + 1) * self.words)
            .unwrap_or(&[])
    }

    /// Row `r`, mutable; empty when out of range.
    #[inline]
    pub(crate) fn row_mut(&mut self, r: usize) -> &mut [u64] {
        self.data
            .get_mut(r * self.words..(r + 1) * self.words)
            .unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_ones() {
        assert_eq!(range_mask(0, 0, 64), u64::MAX);
        assert_eq!(range_mask(0, 3, 5), 0b11000);
        assert_eq!(range_mask(1, 0, 64), 0);
        assert_eq!(range_mask(1, 60, 70), 0b11_1111);
        assert_eq!(range_mask(0, 60, 70), 0xF000_0000_0000_0000);
        assert_eq!(ones(2, 0b1010).collect::<Vec<_>>(), vec![129, 131]);
        let mut b = vec![0u64; 2];
        set(&mut b, 70);
        set(&mut b, 700);
        assert_eq!(b, vec![0, 1 << 6]);
    }
}
