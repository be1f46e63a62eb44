//! Low-level protobuf wire reading.

use crate::DecodeError;

/// Wire type 0: varint.
pub(crate) const VARINT: u8 = 0;
/// Wire type 1: 64-bit fixed.
pub(crate) const FIXED64: u8 = 1;
/// Wire type 2: length-delimited.
pub(crate) const LEN: u8 = 2;
/// Wire type 5: 32-bit fixed.
pub(crate) const FIXED32: u8 = 5;

/// A value as read from the wire, before interpretation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    /// (value not needed by any Kubernetes field)
    Fixed32,
    Bytes(&'a [u8]),
}

/// A cursor over one message's bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// Reads the next (tag, value); `None` at the end of the message.
    pub(crate) fn next(&mut self) -> Result<Option<(u32, Raw<'a>)>, DecodeError> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| DecodeError::BadTag(key >> 3))?;
        if tag == 0 {
            return Err(DecodeError::BadTag(0));
        }
        let raw = match (key & 7) as u8 {
            VARINT => Raw::Varint(self.varint()?),
            FIXED64 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Raw::Fixed64(u64::from_le_bytes(a))
            }
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Raw::Bytes(self.take(n)?)
            }
            FIXED32 => {
                self.take(4)?;
                Raw::Fixed32
            }
            other => {
                return Err(DecodeError::BadWireType {
                    tag,
                    wire_type: other,
                })
            }
        };
        Ok(Some((tag, raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_varints_fields_and_detects_truncation() {
        // tag 1 varint 300, tag 2 bytes "hi", tag 3 int32 -1 as 10-byte varint
        let mut buf = vec![0x08, 0xac, 0x02, 0x12, 0x02, b'h', b'i', 0x18];
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut r = Reader::new(&buf);
        assert!(matches!(r.next(), Ok(Some((1, Raw::Varint(300))))));
        assert!(matches!(r.next(), Ok(Some((2, Raw::Bytes(b"hi"))))));
        match r.next() {
            Ok(Some((3, Raw::Varint(v)))) => assert_eq!(v as i64 as i32, -1),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(r.next(), Ok(None)));
        let mut short = Reader::new(&[0x12, 0x05, b'a']);
        assert!(matches!(short.next(), Err(DecodeError::Truncated)));
        let mut bad = Reader::new(&[0x0b]);
        assert!(matches!(
            bad.next(),
            Err(DecodeError::BadWireType {
                tag: 1,
                wire_type: 3
            })
        ));
    }
}
