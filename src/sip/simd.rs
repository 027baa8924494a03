//! The parser's only `unsafe`: SSE2 searches for the CR or LF that ends a
//! header line, and for one byte (the `>` closing a name-addr, the spaces
//! of the start line).
//!
//! These searches span 10–90 bytes, where `memchr`'s call and set-up cost
//! more than the search itself (about 80 instructions for a header line, a
//! tenth of a parse). Sixteen bytes per step, inlined, costs a third of
//! that. SSE2 is part of the x86_64 baseline, so there is no run-time
//! detection; other targets use `memchr`.

/// Offset of the first CR or LF in `s`.
#[inline]
pub(crate) fn find_cr_or_lf(s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::find_cr_or_lf(s)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        memchr::memchr2(b'\r', b'\n', s)
    }
}

/// Offset of the first `byte` in `s`.
#[inline]
pub(crate) fn find_byte(s: &[u8], byte: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::find_byte(s, byte)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        memchr::memchr(byte, s)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse2 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// The bytes a search looks for.
    #[derive(Clone, Copy)]
    enum Needle {
        CrOrLf,
        Byte(u8),
    }

    /// Bit i set when byte i of `s[at..at + 16]` is a `needle`.
    ///
    /// INVARIANT (checked by callers): `at + 16 <= s.len()`.
    #[inline(always)]
    fn mask_at(s: &[u8], at: usize, needle: Needle) -> u32 {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: callers keep `at + 16 <= s.len()`, so the 16 bytes read lie
        // inside `s`; `_mm_loadu_si128` has no alignment requirement; SSE2 is
        // enabled on every x86_64 target, so the intrinsics are available.
        unsafe {
            let v = _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>());
            let hits = match needle {
                Needle::CrOrLf => _mm_or_si128(
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\r' as i8)),
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8)),
                ),
                Needle::Byte(b) => _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)),
            };
            _mm_movemask_epi8(hits) as u32
        }
    }

    #[inline(always)]
    fn find(s: &[u8], needle: Needle) -> Option<usize> {
        let len = s.len();
        if len < 16 {
            return s.iter().position(|&b| match needle {
                Needle::CrOrLf => b == b'\r' || b == b'\n',
                Needle::Byte(n) => b == n,
            });
        }
        let mut at = 0;
        while at + 16 <= len {
            let m = mask_at(s, at, needle);
            if m != 0 {
                return Some(at + m.trailing_zeros() as usize);
            }
            at += 16;
        }
        // The last, partial step: the final 16 bytes again, overlapping what
        // was searched, so only bits past `at` count.
        let last = len - 16;
        let m = mask_at(s, last, needle) >> (at - last);
        (m != 0).then(|| at + m.trailing_zeros() as usize)
    }

    #[inline]
    pub(super) fn find_cr_or_lf(s: &[u8]) -> Option<usize> {
        find(s, Needle::CrOrLf)
    }

    #[inline]
    pub(super) fn find_byte(s: &[u8], byte: u8) -> Option<usize> {
        find(s, Needle::Byte(byte))
    }
}

#[cfg(test)]
mod tests {
    use super::{find_byte, find_cr_or_lf};

    #[test]
    fn finds_the_first_cr_or_lf_at_every_offset_and_length() {
        for len in 0..70 {
            let base = vec![b'a'; len];
            assert_eq!(find_cr_or_lf(&base), None, "len {len}");
            for at in 0..len {
                for hit in [b'\r', b'\n'] {
                    let mut s = base.clone();
                    s[at] = hit;
                    // A later CR must not win over the first hit.
                    if at + 1 < len {
                        s[len - 1] = b'\r';
                    }
                    assert_eq!(find_cr_or_lf(&s), Some(at), "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn agrees_with_memchr_on_every_byte_value() {
        let s: Vec<u8> = (0..=255u8).cycle().take(600).collect();
        for start in 0..s.len() {
            let rest = &s[start..];
            assert_eq!(find_cr_or_lf(rest), memchr::memchr2(b'\r', b'\n', rest));
            for byte in [b'>', b' ', 0, 0x80, 0xff] {
                assert_eq!(find_byte(rest, byte), memchr::memchr(byte, rest));
            }
        }
    }
}
