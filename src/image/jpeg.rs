//! JPEG: SOI, marker segments, then scans of entropy-coded data, then EOI.
//!
//! Kept: the JFIF header (APP0, without its thumbnail), ICC profiles (APP2
//! `ICC_PROFILE`), Adobe's colour transform (APP14), every segment a decoder
//! needs (DQT, DHT, DAC, SOFn, DRI, DNL, DHP, EXP, SOS) and the scans
//! byte for byte. Dropped: APP1 (Exif, XMP), APP13 (IPTC), every other APPn,
//! COM, fill bytes between segments, and anything after EOI (MPF secondary
//! images, motion-photo videos, vendor trailers: they carry their own
//! metadata).
//!
//! One thing is carried over from the Exif segment: its Orientation. Phones
//! store a portrait photo as landscape pixels plus "rotate 90°"; without it
//! a reviewer sees the receipt on its side. It is written back as a
//! 36-byte Exif segment holding that one tag and nothing else.

use super::{Format, ImageFormat, NotAnImage, Parse, Parsed, Want, dimensions};

/// The APPn payload bytes read before deciding: enough for the JFIF header
/// without its thumbnail (14), "ICC_PROFILE\0" (12), "Adobe" (5) and
/// "Exif\0\0" with the TIFF header (6 + 8).
const APP_IDENT: usize = 14;
const TAG_ORIENTATION: u16 = 0x0112;
const TYPE_SHORT: u16 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `hold` is the signature, FF D8 FF.
    Start,
    /// `hold` is FF and a marker code.
    Marker,
    /// `hold` is a marker and its two length bytes.
    Length,
    /// `hold` is an APPn header and the first bytes of its payload.
    App { payload: u64 },
    /// `hold` is an SOFn header, precision, height, width, components.
    Frame { payload: u64 },
    /// The rest of a segment was copied or skipped.
    SegmentEnd,
    /// An SOS header was copied: entropy-coded data follows.
    ScanData,
    /// The next input byte is an FF inside entropy-coded data.
    ScanAtFf,
    /// `hold` is FF and the byte after it, inside entropy-coded data.
    ScanFf,
    /// Skipped to IFD0 of the Exif segment.
    ExifIfd,
    /// `hold` is IFD0's entry count.
    ExifCount,
    /// `hold` is one 12-byte IFD entry; `entries` are left including it.
    ExifEntry { entries: u64 },
    /// The rest of the Exif segment was skipped.
    ExifEnd,
}

pub(super) struct Jpeg {
    state: State,
    /// From the first SOFn; an SOS before it, or a second one, is refused.
    dims: Option<(u32, u32)>,
    /// An SOS was seen: from here on, EOI ends the image.
    in_scans: bool,
    /// EOI was seen.
    ended: bool,
    /// Only the first Exif segment is read for the orientation.
    exif_seen: bool,
    /// Bytes of the Exif segment after what has been read.
    exif_left: u64,
    exif_big_endian: bool,
    /// 1 (as stored) unless the Exif segment said otherwise.
    orientation: u16,
}

impl Jpeg {
    pub(super) fn new() -> Self {
        Self {
            state: State::Start,
            dims: None,
            in_scans: false,
            ended: false,
            exif_seen: false,
            exif_left: 0,
            exif_big_endian: false,
            orientation: 1,
        }
    }

    fn next_marker(&mut self, hold: &mut Vec<u8>) -> Parse<Want> {
        hold.clear();
        self.state = State::Marker;
        Ok(Want::Bytes(2))
    }

    fn marker(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        if hold[0] != 0xFF {
            return Err(NotAnImage);
        }
        match hold[1] {
            // A fill byte: the marker is still to come.
            0xFF => {
                hold.truncate(1);
                Ok(Want::Bytes(2))
            }
            // TEM: no length, nothing in it.
            0x01 => {
                out.extend_from_slice(hold);
                self.next_marker(hold)
            }
            0xD9 if self.in_scans => {
                out.extend_from_slice(hold);
                hold.clear();
                self.ended = true;
                Ok(Want::Done)
            }
            // RSTn outside a scan, a second SOI, EOI before any scan.
            0xD0..=0xD9 => Err(NotAnImage),
            0xC0..=0xFE => {
                self.state = State::Length;
                Ok(Want::Bytes(4))
            }
            _ => Err(NotAnImage),
        }
    }

    fn length(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        let length = u64::from(u16::from_be_bytes([hold[2], hold[3]]));
        let payload = length.checked_sub(2).ok_or(NotAnImage)?;
        match hold[1] {
            0xE0..=0xEF => {
                self.state = State::App { payload };
                Ok(Want::Bytes(4 + payload.min(APP_IDENT as u64) as usize))
            }
            // COM
            0xFE => {
                hold.clear();
                self.state = State::SegmentEnd;
                Ok(Want::Skip(payload))
            }
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                if self.dims.is_some() || payload < 6 {
                    return Err(NotAnImage);
                }
                self.state = State::Frame { payload };
                Ok(Want::Bytes(10))
            }
            // SOS: component count, two bytes per component, three more.
            0xDA => {
                if self.dims.is_none() || payload < 6 {
                    return Err(NotAnImage);
                }
                self.in_scans = true;
                out.extend_from_slice(hold);
                hold.clear();
                self.state = State::ScanData;
                Ok(Want::Copy(payload))
            }
            // DHT, DAC, DQT, DNL, DRI, DHP, EXP.
            0xC4 | 0xCC | 0xDB..=0xDF => {
                out.extend_from_slice(hold);
                hold.clear();
                self.state = State::SegmentEnd;
                Ok(Want::Copy(payload))
            }
            // JPG, JPGn and reserved markers: no decoder we serve to takes them.
            _ => Err(NotAnImage),
        }
    }

    fn frame(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>, payload: u64) -> Parse<Want> {
        let components = u64::from(hold[9]);
        if components == 0 || payload != 6 + 3 * components {
            return Err(NotAnImage);
        }
        // SOI and this header are all `imagesize` reads of a JPEG.
        let mut header = [0u8; 12];
        header[..2].copy_from_slice(&[0xFF, 0xD8]);
        header[2..].copy_from_slice(hold);
        self.dims = Some(dimensions(&header)?);
        out.extend_from_slice(hold);
        hold.clear();
        self.state = State::SegmentEnd;
        Ok(Want::Copy(payload - 6))
    }

    fn app(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>, payload: u64) -> Parse<Want> {
        let marker = hold[1];
        let ident = &hold[4..];
        let rest = payload - ident.len() as u64;
        let keep = match marker {
            0xE0 if ident.starts_with(b"JFIF\0") && ident.len() == APP_IDENT => {
                // The header without its thumbnail: a thumbnail is a second
                // copy of the picture, and outlives a crop.
                out.extend_from_slice(&[0xFF, 0xE0, 0, 16]);
                out.extend_from_slice(&ident[..12]);
                out.extend_from_slice(&[0, 0]);
                false
            }
            0xE1 if !self.exif_seen
                && ident.starts_with(b"Exif\0\0")
                && ident.len() == APP_IDENT =>
            {
                self.exif_seen = true;
                return self.exif(hold, rest);
            }
            0xE2 => ident.starts_with(b"ICC_PROFILE\0"),
            0xEE => ident.starts_with(b"Adobe"),
            _ => false,
        };
        if keep {
            out.extend_from_slice(hold);
        }
        hold.clear();
        self.state = State::SegmentEnd;
        Ok(if keep {
            Want::Copy(rest)
        } else {
            Want::Skip(rest)
        })
    }

    /// `hold` is the APP1 header, "Exif\0\0" and the TIFF header. IFD0 is
    /// read going forward only, so nothing but one entry is ever held.
    fn exif(&mut self, hold: &mut Vec<u8>, rest: u64) -> Parse<Want> {
        let tiff = &hold[10..18];
        self.exif_left = rest;
        self.exif_big_endian = match &tiff[..4] {
            b"MM\0*" => true,
            b"II*\0" => false,
            _ => return self.exif_skip_rest(hold),
        };
        let ifd0 = u64::from(self.u32(&tiff[4..8]));
        // The offset counts from the TIFF header, whose 8 bytes are read.
        let gap = match ifd0.checked_sub(8) {
            Some(gap) if gap + 2 <= rest => gap,
            _ => return self.exif_skip_rest(hold),
        };
        self.exif_left -= gap;
        hold.clear();
        self.state = State::ExifIfd;
        Ok(Want::Skip(gap))
    }

    fn exif_entry_or_end(&mut self, hold: &mut Vec<u8>, entries: u64) -> Parse<Want> {
        if entries == 0 {
            return self.exif_skip_rest(hold);
        }
        hold.clear();
        self.state = State::ExifEntry { entries };
        Ok(Want::Bytes(12))
    }

    fn exif_skip_rest(&mut self, hold: &mut Vec<u8>) -> Parse<Want> {
        hold.clear();
        self.state = State::ExifEnd;
        Ok(Want::Skip(self.exif_left))
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.exif_big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.exif_big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
}

/// An APP1 segment with an Exif IFD0 of one entry, Orientation.
pub(super) fn orientation_segment(orientation: u16) -> [u8; 36] {
    let mut s = [0u8; 36];
    s[..4].copy_from_slice(&[0xFF, 0xE1, 0, 34]);
    s[4..10].copy_from_slice(b"Exif\0\0");
    s[10..18].copy_from_slice(b"MM\0*\0\0\0\x08");
    s[18..20].copy_from_slice(&1u16.to_be_bytes());
    s[20..22].copy_from_slice(&TAG_ORIENTATION.to_be_bytes());
    s[22..24].copy_from_slice(&TYPE_SHORT.to_be_bytes());
    s[24..28].copy_from_slice(&1u32.to_be_bytes());
    s[28..30].copy_from_slice(&orientation.to_be_bytes());
    // s[30..32]: the value's padding; s[32..36]: no next IFD.
    s
}

impl Format for Jpeg {
    fn step(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want> {
        match self.state {
            State::Start => {
                out.extend_from_slice(&[0xFF, 0xD8]);
                hold.clear();
                hold.push(0xFF);
                self.state = State::Marker;
                Ok(Want::Bytes(2))
            }
            State::Marker => self.marker(hold, out),
            State::Length => self.length(hold, out),
            State::App { payload } => self.app(hold, out, payload),
            State::Frame { payload } => self.frame(hold, out, payload),
            State::SegmentEnd => self.next_marker(hold),
            State::ScanData => {
                self.state = State::ScanAtFf;
                Ok(Want::CopyUntilFf)
            }
            State::ScanAtFf => {
                hold.clear();
                self.state = State::ScanFf;
                Ok(Want::Bytes(2))
            }
            State::ScanFf => match hold[1] {
                // A stuffed zero or a restart marker: still entropy-coded data.
                0x00 | 0xD0..=0xD7 => {
                    out.extend_from_slice(hold);
                    hold.clear();
                    self.state = State::ScanAtFf;
                    Ok(Want::CopyUntilFf)
                }
                // A fill byte before a marker, copied as it came.
                0xFF => {
                    out.push(0xFF);
                    hold.truncate(1);
                    Ok(Want::Bytes(2))
                }
                // Any other marker ends the scan.
                _ => {
                    self.state = State::Marker;
                    self.marker(hold, out)
                }
            },
            State::ExifIfd => {
                hold.clear();
                self.state = State::ExifCount;
                Ok(Want::Bytes(2))
            }
            State::ExifCount => {
                self.exif_left -= 2;
                let entries = u64::from(self.u16(hold)).min(self.exif_left / 12);
                self.exif_entry_or_end(hold, entries)
            }
            State::ExifEntry { entries } => {
                self.exif_left -= 12;
                let tag = self.u16(&hold[0..2]);
                if tag == TAG_ORIENTATION {
                    if self.u16(&hold[2..4]) == TYPE_SHORT && self.u32(&hold[4..8]) == 1 {
                        self.orientation = self.u16(&hold[8..10]);
                    }
                    return self.exif_skip_rest(hold);
                }
                self.exif_entry_or_end(hold, entries - 1)
            }
            State::ExifEnd => {
                // 1 is how the pixels are stored anyway; 9 and up mean nothing.
                if (2..=8).contains(&self.orientation) {
                    out.extend_from_slice(&orientation_segment(self.orientation));
                }
                self.next_marker(hold)
            }
        }
    }

    fn finish(&self) -> Parse<Parsed> {
        match (self.ended, self.dims) {
            (true, Some((width, height))) => Ok(Parsed {
                format: ImageFormat::Jpeg,
                width,
                height,
            }),
            _ => Err(NotAnImage),
        }
    }
}
