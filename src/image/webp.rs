//! WebP: a RIFF file, "RIFF", its size, "WEBP", then chunks (four-character
//! code, little-endian size, data, a pad byte when the size is odd).
//!
//! A simple file is one `VP8 ` (lossy) or `VP8L` (lossless) chunk: it is
//! kept, and anything after it (not allowed there) dropped. An extended
//! file starts with `VP8X`: kept are `VP8X` (with its Exif and XMP flags
//! cleared), `ICCP`, `ANIM`, `ANMF`, `ALPH`, `VP8 `, `VP8L`; dropped are
//! `EXIF`, `XMP ` and unknown chunks, which the format tells readers to
//! ignore and which can carry anything. Bytes after the RIFF size are
//! dropped. The RIFF size the output starts with is the upload's: the
//! caller writes the real one once the end is reached.

use super::{Format, ImageFormat, NotAnImage, Parse, Parsed, Want, dimensions};

/// VP8X flag bits.
const FLAG_EXIF: u8 = 0x08;
const FLAG_XMP: u8 = 0x04;
/// "RIFF", size, "WEBP", then the first chunk's code and size.
const FIRST_CHUNK_DATA: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `hold` is "RIFF", the size, "WEBP".
    Start,
    /// `hold` also has the first chunk's header.
    First,
    /// `hold` also has the first bytes of the first chunk's data.
    FirstData { size: u64 },
    /// A chunk was copied or skipped.
    Next,
    /// `hold` is a chunk header.
    Chunk,
}

pub(super) struct WebP {
    state: State,
    /// Where the RIFF data ends: its size plus the 8 bytes before it.
    end: u64,
    /// Input bytes accounted for by the chunks seen so far.
    pos: u64,
    /// A VP8X file.
    extended: bool,
    /// A `VP8 `, `VP8L` or `ANMF` chunk was kept.
    seen_image: bool,
    ended: bool,
    dims: (u32, u32),
}

impl WebP {
    pub(super) fn new() -> Self {
        Self {
            state: State::Start,
            end: 0,
            pos: 0,
            extended: false,
            seen_image: false,
            ended: false,
            dims: (0, 0),
        }
    }

    fn first_data(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>, size: u64) -> Parse<Want> {
        let kind = [hold[12], hold[13], hold[14], hold[15]];
        let data = &mut hold[FIRST_CHUNK_DATA..];
        let mut mask = 0xFFFF;
        match &kind {
            b"VP8X" => {
                data[0] &= !(FLAG_EXIF | FLAG_XMP);
                self.extended = true;
            }
            b"VP8 " => {
                // A key frame, and its start code.
                if data[0] & 1 != 0 || data[3..6] != [0x9D, 0x01, 0x2A] {
                    return Err(NotAnImage);
                }
                // The top two bits of each dimension are an upscaling hint
                // `imagesize` reads as part of the size.
                mask = 0x3FFF;
                self.seen_image = true;
            }
            _ => {
                if data[0] != 0x2F {
                    return Err(NotAnImage);
                }
                self.seen_image = true;
            }
        }
        let (width, height) = dimensions(hold)?;
        self.dims = (width & mask, height & mask);
        if self.dims.0 == 0 || self.dims.1 == 0 {
            return Err(NotAnImage);
        }
        out.extend_from_slice(hold);
        let rest = padded(size) - (hold.len() - FIRST_CHUNK_DATA) as u64;
        hold.clear();
        self.state = State::Next;
        Ok(Want::Copy(rest))
    }

    fn chunk(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        let size = le32(&hold[4..8]);
        self.pos += 8 + padded(size);
        if self.pos > self.end {
            return Err(NotAnImage);
        }
        let keep = match &hold[0..4] {
            b"VP8X" => return Err(NotAnImage),
            b"VP8 " | b"VP8L" | b"ANMF" => self.extended,
            b"ICCP" | b"ANIM" | b"ALPH" => self.extended,
            _ => false,
        };
        self.state = State::Next;
        if keep {
            self.seen_image |= matches!(&hold[0..4], b"VP8 " | b"VP8L" | b"ANMF");
            out.extend_from_slice(hold);
            hold.clear();
            Ok(Want::Copy(padded(size)))
        } else {
            hold.clear();
            Ok(Want::Skip(padded(size)))
        }
    }
}

impl Format for WebP {
    fn step(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        match self.state {
            State::Start => {
                self.end = 8 + le32(&hold[4..8]);
                self.state = State::First;
                Ok(Want::Bytes(FIRST_CHUNK_DATA))
            }
            State::First => {
                let size = le32(&hold[16..20]);
                // What `imagesize` and our checks read of each kind.
                let need = match &hold[12..16] {
                    b"VP8X" | b"VP8 " => 10,
                    b"VP8L" => 5,
                    _ => return Err(NotAnImage),
                };
                self.pos = FIRST_CHUNK_DATA as u64 + padded(size);
                if size < need || self.pos > self.end {
                    return Err(NotAnImage);
                }
                self.state = State::FirstData { size };
                Ok(Want::Bytes(FIRST_CHUNK_DATA + need as usize))
            }
            State::FirstData { size } => self.first_data(hold, out, size),
            State::Next => {
                if self.pos == self.end {
                    if !self.seen_image {
                        return Err(NotAnImage);
                    }
                    hold.clear();
                    self.ended = true;
                    return Ok(Want::Done);
                }
                if self.end - self.pos < 8 {
                    return Err(NotAnImage);
                }
                hold.clear();
                self.state = State::Chunk;
                Ok(Want::Bytes(8))
            }
            State::Chunk => self.chunk(hold, out),
        }
    }

    fn finish(&self) -> Parse<Parsed> {
        if !self.ended {
            return Err(NotAnImage);
        }
        Ok(Parsed {
            format: ImageFormat::WebP,
            width: self.dims.0,
            height: self.dims.1,
        })
    }
}

fn le32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Chunk data is padded to an even length.
fn padded(size: u64) -> u64 {
    size + (size & 1)
}
