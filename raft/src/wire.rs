//! Little-endian reading and writing helpers shared by the message and configuration codecs.
//!
//! The reader checks every read against the remaining input and reports the field that ran
//! out, so decoders never index past the end and never panic.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::DecodeError;

pub(crate) fn put_u8(out: &mut Vec<u8>, value: u8) {
    out.push(value);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, value: u16) {
    let mut bytes = [0u8; 2];
    LittleEndian::write_u16(&mut bytes, value);
    out.extend_from_slice(&bytes);
}

pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    let mut bytes = [0u8; 4];
    LittleEndian::write_u32(&mut bytes, value);
    out.extend_from_slice(&bytes);
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    let mut bytes = [0u8; 8];
    LittleEndian::write_u64(&mut bytes, value);
    out.extend_from_slice(&bytes);
}

/// A cursor over input bytes. Invariant: `position <= bytes.len()`.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.position
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// The next `length` bytes, or `Truncated(what)` if fewer remain.
    pub(crate) fn take(
        &mut self,
        length: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        if length > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        let slice = &self.bytes[self.position..self.position + length];
        self.position += length;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(LittleEndian::read_u16(self.take(2, what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(LittleEndian::read_u32(self.take(4, what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(LittleEndian::read_u64(self.take(8, what)?))
    }

    /// A length field checked against an explicit maximum and against the remaining input.
    pub(crate) fn length_u32(
        &mut self,
        what: &'static str,
        max: u64,
    ) -> Result<usize, DecodeError> {
        let value = u64::from(self.u32(what)?);
        if value > max {
            return Err(DecodeError::TooLarge { what, value, max });
        }
        let length = usize::try_from(value).map_err(|_| DecodeError::Invalid(what))?;
        if length > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        Ok(length)
    }
}
