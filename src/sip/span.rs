//! Byte ranges into a message buffer.

/// A byte range `start..end` into the message buffer. Parsed views store
/// spans, not copies, so a parsed message is the original bytes plus a few
/// integers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Offset of the first byte.
    pub start: u32,
    /// Offset one past the last byte.
    pub end: u32,
}

impl Span {
    /// The span `start..end`. Messages are bounded well below 4 GiB by the
    /// framer and the datagram size, so offsets fit in `u32`.
    #[inline]
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the span is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The range, for slicing.
    #[inline]
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The bytes of `src` this span covers (empty if out of bounds).
    #[inline]
    pub fn of<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        src.get(self.range()).unwrap_or_default()
    }

    /// The text of `src` this span covers. Spans the parser hands out over
    /// ASCII-only grammar (tokens, hosts, branches, Call-IDs) always convert;
    /// anything else yields `""`.
    #[inline]
    pub fn str<'a>(&self, src: &'a [u8]) -> &'a str {
        std::str::from_utf8(self.of(src)).unwrap_or_default()
    }
}
