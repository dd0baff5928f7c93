//! PNG: the signature, then chunks (length, type, data, CRC) from IHDR to
//! IEND.
//!
//! Kept, with their CRCs: the critical chunks and the ancillary chunks that
//! say how to show the pixels (transparency, colour space, ICC profile,
//! gamma, HDR, background, pixel size, suggested palette, animation).
//! Dropped: `tEXt`, `zTXt`, `iTXt`, `eXIf`, `tIME` and every chunk not
//! listed here — private chunks (`caBX` C2PA manifests, vendor data) can
//! carry anything, and no decoder needs an ancillary chunk. An unknown
//! critical chunk is refused: no decoder could show the image. Critical
//! chunks' CRCs are checked (a decoder rejects a bad one); ancillary ones
//! pass as they are, like decoders let them.

use super::{Format, ImageFormat, NotAnImage, Parse, Parsed, Want, dimensions};

const KEPT_ANCILLARY: [&[u8; 4]; 16] = [
    b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"bKGD",
    b"hIST", b"pHYs", b"sPLT", b"acTL", b"fcTL", b"fdAT",
];
/// Signature, then IHDR: length, type, 13 bytes of data, CRC.
const HEAD: usize = 8 + 8 + 13 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `hold` is the signature.
    Start,
    /// `hold` is the signature and IHDR.
    Head,
    /// `hold` is a chunk's length and type.
    Chunk,
    /// A kept chunk's data was copied.
    Data,
    /// `hold` is a kept chunk's CRC.
    Crc,
    /// A dropped chunk was skipped, CRC and all.
    Skipped,
    /// `hold` is IEND: length, type, CRC.
    End,
}

pub(super) struct Png {
    state: State,
    dims: (u32, u32),
    /// The chunk being copied is critical: its CRC is computed and checked.
    critical: bool,
    crc: u32,
    seen_idat: bool,
    ended: bool,
}

impl Png {
    pub(super) fn new() -> Self {
        Self {
            state: State::Start,
            dims: (0, 0),
            critical: false,
            crc: 0,
            seen_idat: false,
            ended: false,
        }
    }

    fn next_chunk(&mut self, hold: &mut Vec<u8>) -> Parse<Want> {
        hold.clear();
        self.state = State::Chunk;
        Ok(Want::Bytes(8))
    }

    fn chunk(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        let length = u32::from_be_bytes([hold[0], hold[1], hold[2], hold[3]]);
        let kind: [u8; 4] = [hold[4], hold[5], hold[6], hold[7]];
        if length > i32::MAX as u32 || !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(NotAnImage);
        }
        let critical = kind[0].is_ascii_uppercase();
        match &kind {
            b"IEND" => {
                if length != 0 || !self.seen_idat {
                    return Err(NotAnImage);
                }
                self.state = State::End;
                Ok(Want::Bytes(12))
            }
            b"PLTE" | b"IDAT" => {
                self.seen_idat |= &kind == b"IDAT";
                self.copy(hold, out, length, true)
            }
            _ if KEPT_ANCILLARY.contains(&&kind) => self.copy(hold, out, length, false),
            // A second IHDR, or a critical chunk no decoder knows.
            _ if critical => Err(NotAnImage),
            _ => {
                hold.clear();
                self.state = State::Skipped;
                Ok(Want::Skip(u64::from(length) + 4))
            }
        }
    }

    fn copy(
        &mut self,
        hold: &mut Vec<u8>,
        out: &mut Vec<u8>,
        length: u32,
        critical: bool,
    ) -> Parse<Want> {
        out.extend_from_slice(hold);
        self.critical = critical;
        self.crc = crc32_update(CRC_INIT, &hold[4..8]);
        hold.clear();
        self.state = State::Data;
        Ok(Want::Copy(u64::from(length)))
    }
}

impl Format for Png {
    fn step(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        match self.state {
            State::Start => {
                self.state = State::Head;
                Ok(Want::Bytes(HEAD))
            }
            State::Head => {
                let ihdr = &hold[8..];
                if ihdr[..8] != *b"\0\0\0\x0dIHDR" || crc32(&ihdr[4..21]) != be32(&ihdr[21..25]) {
                    return Err(NotAnImage);
                }
                let (width, height) = dimensions(hold)?;
                if width > i32::MAX as u32 || height > i32::MAX as u32 {
                    return Err(NotAnImage);
                }
                self.dims = (width, height);
                out.extend_from_slice(hold);
                self.next_chunk(hold)
            }
            State::Chunk => self.chunk(hold, out),
            State::Data => {
                self.state = State::Crc;
                Ok(Want::Bytes(4))
            }
            State::Crc => {
                if self.critical && crc32_final(self.crc) != be32(hold) {
                    return Err(NotAnImage);
                }
                out.extend_from_slice(hold);
                self.next_chunk(hold)
            }
            State::Skipped => self.next_chunk(hold),
            State::End => {
                if crc32(&hold[4..8]) != be32(&hold[8..12]) {
                    return Err(NotAnImage);
                }
                out.extend_from_slice(hold);
                hold.clear();
                self.ended = true;
                Ok(Want::Done)
            }
        }
    }

    fn copied(&mut self, bytes: &[u8]) {
        if self.critical {
            self.crc = crc32_update(self.crc, bytes);
        }
    }

    fn finish(&self) -> Parse<Parsed> {
        if !self.ended {
            return Err(NotAnImage);
        }
        Ok(Parsed {
            format: ImageFormat::Png,
            width: self.dims.0,
            height: self.dims.1,
        })
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

// CRC-32 (ISO-HDLC, as PNG uses), one table lookup a byte.

const CRC_INIT: u32 = 0xFFFF_FFFF;

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

fn crc32_final(crc: u32) -> u32 {
    crc ^ CRC_INIT
}

/// The CRC of a chunk's type and data, as stored after them.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    crc32_final(crc32_update(CRC_INIT, bytes))
}
