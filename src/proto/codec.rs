//! The one byte reader of every parser: a bounds-checked cursor over a byte slice.
//!
//! Pure / no I/O. Every read that would run past the end returns `None` and leaves the cursor
//! where it was, so a parser turns a short read into its own error with `ok_or` and never
//! indexes out of bounds. Integers are big-endian (network order), as in TLS, DNS, SOCKS5 and
//! PROXY v2. Model: rustls `msgs/codec.rs` `Reader`.

/// A read cursor over `buf`: [`Reader::take`] and the integer reads move it forward.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// A reader at offset `pos` of `buf` (for formats with offsets, such as DNS names); `None`
    /// past the end.
    pub fn at(buf: &'a [u8], pos: usize) -> Option<Reader<'a>> {
        (pos <= buf.len()).then_some(Reader { buf, pos })
    }

    /// Offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.left() == 0
    }

    /// The bytes not read yet (the cursor does not move).
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    /// The next `N` bytes as an array.
    pub fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A reader over the next `n` bytes (which this one skips).
    pub fn sub(&mut self, n: usize) -> Option<Reader<'a>> {
        self.take(n).map(Reader::new)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take_array::<1>().map(|[b]| b)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.take_array().map(u16::from_be_bytes)
    }

    /// A big-endian 24-bit length.
    pub fn u24(&mut self) -> Option<usize> {
        self.take_array::<3>()
            .map(|[a, b, c]| usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.take_array().map(u32::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reads_in_order_and_big_endian() {
        let mut r = Reader::new(&[1, 0x02, 0x03, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.u16(), Some(0x0203));
        assert_eq!(r.u24(), Some(0x04_0506));
        assert_eq!(r.u32(), Some(0x0708_090a));
        assert_eq!((r.pos(), r.left(), r.rest()), (10, 2, &[11u8, 12][..]));
        let mut s = r.sub(1).unwrap();
        assert_eq!(
            (s.u8(), s.u8(), r.take_array::<1>()),
            (Some(11), None, Some([12]))
        );
        assert!(r.is_empty());
    }

    #[test]
    fn rejects_short_reads_without_moving() {
        let buf = [1u8, 2, 3];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u32(), None);
        assert_eq!(r.take(4), None);
        assert_eq!(r.take(usize::MAX), None);
        assert!(r.sub(4).is_none());
        assert_eq!(r.pos(), 0);
        assert_eq!(r.u24(), Some(0x01_0203));
        assert_eq!((r.u8(), r.take(0)), (None, Some(&[][..])));
        assert!(Reader::at(&buf, 3).is_some_and(|r| r.is_empty()));
        assert!(Reader::at(&buf, 4).is_none());
    }
}
