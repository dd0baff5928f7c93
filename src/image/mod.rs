//! Receipt photos as they arrive: recognised by their bytes, and written to
//! storage without the metadata a phone puts in them (GPS position, device,
//! time, editing history), while the body is still streaming in.
//!
//! Why hand-written parsers: the crates that strip metadata (metastrip,
//! little_exif, img-parts, web-image-meta) take the whole file as a slice
//! and several pull in image decoders; the point here is the opposite, a
//! bounded amount of memory whatever the upload's size. The containers are
//! simple enough to walk segment by segment.
//!
//! Memory, whatever the upload's size: the parser holds back at most
//! [`MAX_HOLD`] bytes (a segment or chunk header and the few payload bytes
//! that decide its fate); input is fed to it [`FEED_LEN`] bytes at a time
//! and the output staged until [`FLUSH_AT`], so the staging buffer never
//! passes [`STAGE_CAPACITY`] (about 32 KiB); `tokio::fs::File` copies each
//! write into its own buffer of the same size while the write runs on the
//! blocking pool. About 64 KiB in all, plus the chunk the caller's stream
//! is handing over.

mod jpeg;
mod png;
mod webp;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io::SeekFrom;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Input is handed to the parser in slices of at most this many bytes, so a
/// large chunk from the stream never makes a large output buffer.
pub const FEED_LEN: usize = 16 * 1024;
/// The staged output is written to the file once it reaches this size.
pub const FLUSH_AT: usize = 16 * 1024;
/// The most bytes a parser ever holds back while it decides (the PNG
/// signature with the IHDR chunk).
pub const MAX_HOLD: usize = 33;
/// The staged output's bound: under `FLUSH_AT` before a feed, then at most
/// the slice fed, what was held back, and the 36-byte orientation segment.
pub const STAGE_CAPACITY: usize = FLUSH_AT + FEED_LEN + MAX_HOLD + 36;
/// How many leading bytes [`sniff`] needs to recognise every format.
#[cfg(test)]
pub const SNIFF_LEN: usize = 16;

/// The formats a receipt may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
}

impl ImageFormat {
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
        }
    }

    pub const fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::WebP => "webp",
        }
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub content_type: &'static str,
    pub extension: &'static str,
    pub width: u32,
    pub height: u32,
    /// Bytes written to the file: the sanitized image, not the upload.
    pub size_bytes: u64,
}

/// Why an upload was not stored. `E` is the input stream's own error, handed
/// back untouched in [`ImageError::Input`] so the caller keeps its meaning
/// (a body timeout, a form over its limit) apart from a bad image; `sniff`,
/// which reads no stream, uses the default `Infallible`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError<E = Infallible> {
    /// The input ended before its first byte (an empty file field).
    #[error("the upload is empty")]
    Empty,
    /// Not a JPEG, PNG or WebP, or one that is truncated or malformed: what
    /// is stored is a well-formed image or nothing.
    #[error("not a JPEG, PNG or WebP image, or a damaged one")]
    NotAnImage,
    /// The upload passed `max_bytes`.
    #[error("the image is larger than allowed")]
    TooLarge,
    /// Writing, seeking or flushing the output file failed.
    #[error("could not write the image")]
    Io(#[source] std::io::Error),
    /// The input stream yielded an error.
    #[error("could not read the upload")]
    Input(#[source] E),
}

impl<E> From<NotAnImage> for ImageError<E> {
    fn from(_: NotAnImage) -> Self {
        Self::NotAnImage
    }
}

/// The parsers' only failure; mapped to [`ImageError::NotAnImage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotAnImage;

type Parse<T> = Result<T, NotAnImage>;

/// Names the format of a stored object from its first bytes (at least
/// [`SNIFF_LEN`] of them; more are ignored): the tests read back what was
/// written with it. (At serve time the type comes from the stored key,
/// which the server chose from the same format.)
#[cfg(test)]
pub fn sniff(first_bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    let format = match signature(first_bytes) {
        Signature::Is(format) => format,
        Signature::No | Signature::TooShort => return Err(ImageError::NotAnImage),
    };
    let plausible = match format {
        // The marker after SOI: anything but a stuffed zero.
        ImageFormat::Jpeg => first_bytes.len() >= 4 && first_bytes[3] != 0,
        ImageFormat::Png => first_bytes.get(12..16) == Some(b"IHDR"),
        ImageFormat::WebP => matches!(first_bytes.get(12..16), Some(b"VP8 " | b"VP8L" | b"VP8X")),
    };
    if plausible {
        Ok(format)
    } else {
        Err(ImageError::NotAnImage)
    }
}

/// Streams an upload into `out` without its metadata.
///
/// The type is decided from the first bytes: an input that does not start
/// like a JPEG, PNG or WebP is refused as soon as those bytes are seen,
/// without polling the stream further. Every byte received counts against
/// `max_bytes`, and passing it stops the upload at once. Structure is
/// checked as the bytes pass, and the end must be the format's end (EOI,
/// IEND, the RIFF size): a truncated or malformed input is `NotAnImage`.
///
/// `out` should be a new, empty file opened for writing. On error it holds
/// part of the image: the caller deletes it. On success it is flushed (not
/// synced) and positioned at its end.
pub async fn sanitize_to_file<S, E>(
    mut input: S,
    max_bytes: u64,
    out: &mut tokio::fs::File,
) -> Result<ImageInfo, ImageError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut sanitizer = Sanitizer::new();
    let mut staged = Vec::with_capacity(STAGE_CAPACITY);
    let mut received = 0u64;
    let mut written = 0u64;
    while let Some(chunk) = input.next().await {
        let chunk = chunk.map_err(ImageError::Input)?;
        received += chunk.len() as u64;
        if received > max_bytes {
            return Err(ImageError::TooLarge);
        }
        for piece in chunk.chunks(FEED_LEN) {
            sanitizer.feed(piece, &mut staged)?;
            debug_assert!(staged.len() <= STAGE_CAPACITY);
            if staged.len() >= FLUSH_AT {
                out.write_all(&staged).await.map_err(ImageError::Io)?;
                written += staged.len() as u64;
                staged.clear();
            }
        }
    }
    if received == 0 {
        return Err(ImageError::Empty);
    }
    let image = sanitizer.finish()?;
    out.write_all(&staged).await.map_err(ImageError::Io)?;
    written += staged.len() as u64;
    // Also waits for the write in flight, so a seek can follow.
    out.flush().await.map_err(ImageError::Io)?;
    if image.format == ImageFormat::WebP {
        patch_riff_size(out, written)
            .await
            .map_err(ImageError::Io)?;
    }
    Ok(ImageInfo {
        content_type: image.format.content_type(),
        extension: image.format.extension(),
        width: image.width,
        height: image.height,
        size_bytes: written,
    })
}

/// The RIFF header was written with the upload's size before we knew which
/// chunks would be dropped; write the real one (file size less the 8 bytes
/// of "RIFF" and the size itself), then return to the end.
async fn patch_riff_size(out: &mut tokio::fs::File, written: u64) -> std::io::Result<()> {
    let riff_size = u32::try_from(written - 8).map_err(std::io::Error::other)?;
    let back = i64::try_from(written).map_err(std::io::Error::other)?;
    out.seek(SeekFrom::Current(4 - back)).await?;
    out.write_all(&riff_size.to_le_bytes()).await?;
    out.seek(SeekFrom::Current(back - 8)).await?;
    out.flush().await
}

// ---------------------------------------------------------------------------
// The format-independent driver
// ---------------------------------------------------------------------------

/// What a format's parser needs next. The driver satisfies it from whatever
/// input arrives, then calls the parser's `step` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Gather bytes into `hold` until it has this many (what is already
    /// there counts).
    Bytes(usize),
    /// Pass this many bytes to the output unchanged.
    Copy(u64),
    /// Drop this many bytes.
    Skip(u64),
    /// Pass bytes unchanged up to, not including, the next 0xFF (JPEG
    /// entropy-coded data).
    CopyUntilFf,
    /// The image is complete; anything after it is dropped.
    Done,
}

/// A format's state machine. `step` is called when the last [`Want`] is
/// met; it emits to `out` what it keeps of `hold` and manages `hold`
/// itself (the driver only appends to it).
trait Format {
    fn step(&mut self, hold: &mut Vec<u8>, out: &mut Vec<u8>) -> Parse<Want>;
    /// Sees the bytes of every `Copy` (PNG checks CRCs with it).
    fn copied(&mut self, _bytes: &[u8]) {}
    /// The image when the input ended after a complete one.
    fn finish(&self) -> Parse<Parsed>;
}

/// What the parser learnt from a complete image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

enum Machine {
    /// The first bytes, until they match a signature.
    Sniff,
    Jpeg(jpeg::Jpeg),
    Png(png::Png),
    WebP(webp::WebP),
}

/// The synchronous core of [`sanitize_to_file`]: bytes in, bytes out, in
/// any chunking. Same input, same output, whatever the split points.
pub(crate) struct Sanitizer {
    machine: Machine,
    hold: Vec<u8>,
    want: Want,
}

impl Sanitizer {
    pub(crate) fn new() -> Self {
        Self {
            machine: Machine::Sniff,
            hold: Vec::with_capacity(MAX_HOLD),
            want: Want::Bytes(1),
        }
    }

    /// Consumes all of `input`, appending what is kept to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Parse<()> {
        loop {
            match self.want {
                Want::Bytes(n) => {
                    let take = n.saturating_sub(self.hold.len()).min(input.len());
                    self.hold.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.hold.len() < n {
                        return Ok(());
                    }
                }
                Want::Copy(n) | Want::Skip(n) => {
                    let take = n.min(input.len() as u64) as usize;
                    if let Want::Copy(_) = self.want {
                        out.extend_from_slice(&input[..take]);
                        self.copied(&input[..take]);
                    }
                    input = &input[take..];
                    let left = n - take as u64;
                    if left > 0 {
                        self.want = match self.want {
                            Want::Copy(_) => Want::Copy(left),
                            _ => Want::Skip(left),
                        };
                        return Ok(());
                    }
                }
                Want::CopyUntilFf => {
                    let end = input.iter().position(|&b| b == 0xFF);
                    let take = end.unwrap_or(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if end.is_none() {
                        return Ok(());
                    }
                }
                Want::Done => return Ok(()),
            }
            debug_assert!(self.hold.len() <= MAX_HOLD);
            self.want = self.step(out)?;
        }
    }

    fn step(&mut self, out: &mut Vec<u8>) -> Parse<Want> {
        if let Machine::Sniff = self.machine {
            self.machine = match signature(&self.hold) {
                Signature::No => return Err(NotAnImage),
                Signature::TooShort => return Ok(Want::Bytes(self.hold.len() + 1)),
                Signature::Is(ImageFormat::Jpeg) => Machine::Jpeg(jpeg::Jpeg::new()),
                Signature::Is(ImageFormat::Png) => Machine::Png(png::Png::new()),
                Signature::Is(ImageFormat::WebP) => Machine::WebP(webp::WebP::new()),
            };
        }
        let hold = &mut self.hold;
        match &mut self.machine {
            Machine::Sniff => Err(NotAnImage),
            Machine::Jpeg(f) => f.step(hold, out),
            Machine::Png(f) => f.step(hold, out),
            Machine::WebP(f) => f.step(hold, out),
        }
    }

    fn copied(&mut self, bytes: &[u8]) {
        match &mut self.machine {
            Machine::Sniff => {}
            Machine::Jpeg(f) => f.copied(bytes),
            Machine::Png(f) => f.copied(bytes),
            Machine::WebP(f) => f.copied(bytes),
        }
    }

    /// The input has ended: was it one complete image?
    pub(crate) fn finish(&self) -> Parse<Parsed> {
        match &self.machine {
            Machine::Sniff => Err(NotAnImage),
            Machine::Jpeg(f) => f.finish(),
            Machine::Png(f) => f.finish(),
            Machine::WebP(f) => f.finish(),
        }
    }

    #[cfg(test)]
    pub(crate) fn held_capacity(&self) -> usize {
        self.hold.capacity()
    }
}

enum Signature {
    Is(ImageFormat),
    /// A prefix of a signature: more bytes are needed to tell.
    TooShort,
    No,
}

/// Matches the leading bytes against the three signatures, deciding as
/// early as the bytes allow (a wrong first byte is enough to refuse).
fn signature(bytes: &[u8]) -> Signature {
    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF];
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    // "RIFF", any four size bytes, "WEBP".
    const RIFF: &[Option<u8>; 12] = &[
        Some(b'R'),
        Some(b'I'),
        Some(b'F'),
        Some(b'F'),
        None,
        None,
        None,
        None,
        Some(b'W'),
        Some(b'E'),
        Some(b'B'),
        Some(b'P'),
    ];
    let fits = |sig: &[u8]| bytes.iter().zip(sig).all(|(a, b)| a == b);
    let fits_riff = bytes
        .iter()
        .zip(RIFF)
        .all(|(a, b)| b.is_none_or(|b| *a == b));
    for (sig_len, ok, format) in [
        (JPEG.len(), fits(JPEG), ImageFormat::Jpeg),
        (PNG.len(), fits(PNG), ImageFormat::Png),
        (RIFF.len(), fits_riff, ImageFormat::WebP),
    ] {
        if ok {
            return if bytes.len() >= sig_len {
                Signature::Is(format)
            } else {
                Signature::TooShort
            };
        }
    }
    Signature::No
}

/// `imagesize` on a header the parser has assembled; zero is no size.
fn dimensions(header: &[u8]) -> Parse<(u32, u32)> {
    let size = imagesize::blob_size(header).map_err(|_| NotAnImage)?;
    let width = u32::try_from(size.width).map_err(|_| NotAnImage)?;
    let height = u32::try_from(size.height).map_err(|_| NotAnImage)?;
    if width == 0 || height == 0 {
        return Err(NotAnImage);
    }
    Ok((width, height))
}
