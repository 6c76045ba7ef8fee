//! The on-disk format (documented in ARCHITECTURE.md, "On-disk format").
//!
//! A store file is a 16-byte header (`PLOGSEG1` magic, then the segment's base offset
//! as u64 LE) followed by frames. A frame is `crc: u32 LE | len: u32 LE | value`,
//! where `crc` is CRC-32C (Castagnoli, hardware-accelerated) of `len | value`,
//! seeded with the record's offset. The offset is not stored but bound into the
//! checksum, so a frame read at the wrong place, or left behind by an older
//! incarnation of the file, fails validation; and one checksum call covers the
//! whole frame after its first four bytes.
//!
//! An index file is an array of u64 LE store positions, entry `i` for offset
//! `base + i`. Every valid position is at least `STORE_HEADER_BYTES`, so a zeroed
//! (pre-grown, never written) entry is recognisably invalid.

/// Magic at the start of every store file; the last byte is the format version.
pub(crate) const STORE_MAGIC: [u8; 8] = *b"PLOGSEG1";
/// Magic + base offset.
pub(crate) const STORE_HEADER_BYTES: u64 = 16;
/// Checksum + length before each value.
pub(crate) const FRAME_HEADER_BYTES: u64 = 8;
/// One u64 store position per record.
pub(crate) const INDEX_ENTRY_BYTES: u64 = 8;

pub(crate) const STORE_EXTENSION: &str = "store";
pub(crate) const INDEX_EXTENSION: &str = "index";

/// File name stem of a segment: the base offset, zero-padded so names sort by offset.
pub(crate) fn segment_stem(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

/// Parses a file name of the form `<20 digits>.<extension>`.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base_offset = stem.parse().ok()?;
    matches!(extension, STORE_EXTENSION | INDEX_EXTENSION).then_some((base_offset, extension))
}

pub(crate) fn store_header(base_offset: u64) -> [u8; STORE_HEADER_BYTES as usize] {
    let mut header = [0; STORE_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&STORE_MAGIC);
    header[8..].copy_from_slice(&base_offset.to_le_bytes());
    header
}

/// The checksum seed of `offset`: both halves of the offset folded into the
/// CRC's starting state.
fn seed(offset: u64) -> u32 {
    (offset as u32) ^ ((offset >> 32) as u32).rotate_left(16) ^ 0x5052_4f47
}

/// Checksum of a frame's `len | value` bytes (`covered`) at `offset`.
fn checksum(offset: u64, covered: &[u8]) -> u32 {
    crc32c::crc32c_append(seed(offset), covered)
}

/// Appends the frame of `value` at `offset` to `buf`. `value.len()` must fit in u32
/// (every caller checked it against max-record-bytes).
pub(crate) fn encode_frame(buf: &mut Vec<u8>, offset: u64, value: &[u8]) {
    debug_assert!(u32::try_from(value.len()).is_ok());
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(value);
    let crc = checksum(offset, &buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Outcome of decoding one frame at the start of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A valid frame; its value is `bytes[8..8 + len]`.
    Valid { len: u64 },
    /// The slice ends before the frame does (`needed` bytes in total).
    Incomplete { needed: u64 },
    /// The checksum does not match.
    BadChecksum,
}

/// The value length in a frame header.
pub(crate) fn frame_len(header: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes([header[4], header[5], header[6], header[7]]))
}

/// Decodes the frame for `offset` at the start of `bytes`. Never allocates.
pub(crate) fn decode_frame(bytes: &[u8], offset: u64) -> Frame {
    if (bytes.len() as u64) < FRAME_HEADER_BYTES {
        return Frame::Incomplete { needed: FRAME_HEADER_BYTES };
    }
    let len = frame_len(bytes);
    let needed = FRAME_HEADER_BYTES + len;
    if (bytes.len() as u64) < needed {
        return Frame::Incomplete { needed };
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if checksum(offset, &bytes[4..needed as usize]) == stored {
        Frame::Valid { len }
    } else {
        Frame::BadChecksum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, b"hello world");
        assert_eq!(buf.len(), 8 + 11);
        assert_eq!(decode_frame(&buf, 7), Frame::Valid { len: 11 });
        assert_eq!(&buf[8..], b"hello world");
    }

    #[test]
    fn frame_is_bound_to_its_offset() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, b"hello world");
        assert_eq!(decode_frame(&buf, 8), Frame::BadChecksum);
    }

    #[test]
    fn every_truncation_of_a_frame_is_incomplete() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 0, b"hello world");
        for cut in 0..buf.len() {
            assert!(matches!(decode_frame(&buf[..cut], 0), Frame::Incomplete { .. }), "cut {cut}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, b"hello world");
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(decode_frame(&damaged, 3), Frame::Valid { len: 11 }, "bit {bit}");
        }
    }

    #[test]
    fn segment_file_names_parse_strictly() {
        assert_eq!(parse_segment_file_name("00000000000000000016.store"), Some((16, "store")));
        assert_eq!(parse_segment_file_name("00000000000000000016.index"), Some((16, "index")));
        assert_eq!(parse_segment_file_name("16.store"), None);
        assert_eq!(parse_segment_file_name("0000000000000000001x.store"), None);
        assert_eq!(parse_segment_file_name("00000000000000000016.store.tmp"), None);
        assert_eq!(parse_segment_file_name("99999999999999999999.store"), None);
        assert_eq!(segment_stem(16), "00000000000000000016");
    }
}
