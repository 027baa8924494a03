//! The parser's only `unsafe`: SSE2 searches for the CR or LF that ends a
//! header line, and for one byte (the `>` closing a name-addr, the spaces
//! of the start line); and SSE2 classification of the 16 bytes where a
//! host name starts.
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

/// Bit masks over 16 bytes: bit i stands for byte i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostMasks {
    /// Host-name characters: ASCII letters and digits, `-` and `.`.
    pub host: u32,
    /// `.`
    pub dot: u32,
    /// `-`
    pub dash: u32,
}

/// [`HostMasks`] of `s[at..at + 16]`; `None` when fewer than 16 bytes
/// remain (and on targets without SSE2), where callers take their scalar
/// path.
#[inline]
pub(crate) fn host_masks(s: &[u8], at: usize) -> Option<HostMasks> {
    #[cfg(target_arch = "x86_64")]
    {
        (s.len().checked_sub(16)? >= at).then(|| sse2::host_masks(s, at))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (s, at);
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse2 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128, _mm_sub_epi8, _mm_subs_epu8,
    };

    use super::HostMasks;

    /// See [`super::host_masks`].
    ///
    /// INVARIANT (checked by the caller): `at + 16 <= s.len()`.
    #[inline]
    pub(super) fn host_masks(s: &[u8], at: usize) -> HostMasks {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: the caller keeps `at + 16 <= s.len()`, so the 16 bytes
        // read lie inside `s`; `_mm_loadu_si128` has no alignment
        // requirement; SSE2 is enabled on every x86_64 target.
        unsafe {
            let v = _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>());
            // x - lo <= span (unsigned) iff x is in lo..=lo + span: the
            // saturating subtraction of `span` leaves zero exactly then.
            let in_range = |x: __m128i, lo: u8, span: u8| {
                let shifted = _mm_sub_epi8(x, _mm_set1_epi8(lo as i8));
                _mm_cmpeq_epi8(
                    _mm_subs_epu8(shifted, _mm_set1_epi8(span as i8)),
                    _mm_setzero_si128(),
                )
            };
            let letter = in_range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', 25);
            let digit = in_range(v, b'0', 9);
            let dot = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'.' as i8));
            let dash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8));
            let host = _mm_or_si128(_mm_or_si128(letter, digit), _mm_or_si128(dot, dash));
            HostMasks {
                host: _mm_movemask_epi8(host) as u32,
                dot: _mm_movemask_epi8(dot) as u32,
                dash: _mm_movemask_epi8(dash) as u32,
            }
        }
    }

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
    fn host_masks_classify_every_byte_value() {
        for first in (0..=255u8).step_by(16) {
            let s: Vec<u8> = (first..=first.saturating_add(15)).collect();
            let mut padded = s.clone();
            padded.insert(0, b'x');
            for (buf, at) in [(&s, 0), (&padded, 1)] {
                let m = super::host_masks(buf, at);
                if cfg!(not(target_arch = "x86_64")) {
                    assert_eq!(m, None);
                    return;
                }
                let m = m.expect("16 bytes from `at`");
                for (i, &b) in s.iter().enumerate() {
                    let bit = |mask: u32| mask >> i & 1 == 1;
                    let host = b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
                    assert_eq!(bit(m.host), host, "byte {b:#04x}");
                    assert_eq!(bit(m.dot), b == b'.', "byte {b:#04x}");
                    assert_eq!(bit(m.dash), b == b'-', "byte {b:#04x}");
                }
            }
        }
        assert_eq!(super::host_masks(&[b'a'; 15], 0), None);
        assert_eq!(super::host_masks(&[b'a'; 16], 1), None);
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
