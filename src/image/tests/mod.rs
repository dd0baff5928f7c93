mod fixtures;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use proptest::prelude::*;

use super::*;
use fixtures::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// The synchronous core, fed in pieces cut at `cuts`; for WebP, the RIFF
/// size is written as `sanitize_to_file` writes it.
fn sanitize_cut(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Parsed), NotAnImage> {
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    let mut sanitizer = Sanitizer::new();
    let mut out = Vec::new();
    let mut last = 0;
    for cut in cuts.into_iter().chain([input.len()]) {
        sanitizer.feed(&input[last..cut], &mut out)?;
        last = cut;
    }
    let parsed = sanitizer.finish()?;
    if parsed.format == ImageFormat::WebP {
        let size = (out.len() - 8) as u32;
        out[4..8].copy_from_slice(&size.to_le_bytes());
    }
    Ok((out, parsed))
}

fn sanitize(input: &[u8]) -> Result<(Vec<u8>, Parsed), NotAnImage> {
    sanitize_cut(input, &[])
}

fn chunks_of(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    let mut last = 0;
    let mut chunks = Vec::new();
    for cut in cuts.into_iter().chain([input.len()]) {
        chunks.push(input[last..cut].to_vec());
        last = cut;
    }
    chunks
}

type Chunk = Result<Bytes, io::Error>;

fn stream_of(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Chunk> + Unpin {
    stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
}

/// `chunks`, then a stream that panics if it is polled at all.
fn then_panic(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Chunk> + Unpin {
    stream_of(chunks).chain(stream::poll_fn(|_| -> Poll<Option<Chunk>> {
        panic!("the stream was polled after the upload was refused")
    }))
}

/// A file in the temp directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scratch(std::env::temp_dir().join(format!("receipt-image-{}-{n}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `sanitize_to_file` into a new file; returns its result and the file.
async fn store<S>(input: S, max_bytes: u64) -> (Result<ImageInfo, ImageError<io::Error>>, Vec<u8>)
where
    S: Stream<Item = Chunk> + Unpin,
{
    let scratch = Scratch::new();
    let mut file = tokio::fs::File::create_new(&scratch.0).await.unwrap();
    let result = sanitize_to_file(input, max_bytes, &mut file).await;
    drop(file);
    (result, std::fs::read(&scratch.0).unwrap())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn size_of(image: &[u8]) -> (u32, u32) {
    let s = imagesize::blob_size(image).unwrap();
    (s.width as u32, s.height as u32)
}

const MAX: u64 = 5 * 1024 * 1024;

fn assert_no_secrets(name: &str, out: &[u8]) {
    for secret in SECRETS {
        assert!(
            !contains(out, secret),
            "{name}: {:?} survived",
            String::from_utf8_lossy(secret)
        );
    }
}

// ---------------------------------------------------------------------------
// What is kept and what is dropped
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_jpeg_loses_exif_xmp_iptc_comments_and_trailer_but_keeps_its_picture() {
    let (input, expected) = jpeg_with_metadata(Some(6));
    for secret in [&b"GPS"[..], b"SecretPhone", b"xmpmeta", b"8BIM", b"secret"] {
        assert!(contains(&input, secret), "the test image lacks {secret:?}");
    }
    let (info, out) = store(stream_of(vec![input.clone()]), MAX).await;
    let info = info.unwrap();
    assert_eq!(out, expected);
    assert_no_secrets("jpeg", &out);
    // The only Exif left is the 36-byte orientation segment.
    assert_eq!(count(&out, b"Exif"), 1);
    assert_eq!(out[2..38], jpeg::orientation_segment(6));
    // Same size, and everything from SOS on is byte for byte the original.
    assert_eq!((info.width, info.height), (16, 8));
    assert_eq!(size_of(&out), size_of(JPEG_16X8));
    let sos = |b: &[u8]| b.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let eoi = JPEG_16X8.len() - sos(JPEG_16X8);
    assert_eq!(out[sos(&out)..], JPEG_16X8[sos(JPEG_16X8)..]);
    assert_eq!(out[sos(&out)..].len(), eoi);
    assert_eq!(
        (info.content_type, info.extension, info.size_bytes),
        ("image/jpeg", "jpg", out.len() as u64)
    );
}

#[test]
fn orientation_is_read_from_either_byte_order_and_written_alone() {
    for big_endian in [false, true] {
        for orientation in 1..=8u16 {
            let input = [
                &[0xFF, 0xD8][..],
                &segment(0xE1, &exif_payload(big_endian, Some(orientation))),
                &JPEG_16X8[2..],
            ]
            .concat();
            let (out, _) = sanitize(&input).unwrap();
            let expected = if orientation == 1 {
                JPEG_16X8.to_vec()
            } else {
                [
                    &[0xFF, 0xD8][..],
                    &jpeg::orientation_segment(orientation),
                    &JPEG_16X8[2..],
                ]
                .concat()
            };
            assert_eq!(out, expected, "big endian {big_endian}, {orientation}");
        }
    }
}

#[test]
fn a_jpeg_without_an_orientation_keeps_no_exif_at_all() {
    let (input, expected) = jpeg_with_metadata(None);
    let (out, _) = sanitize(&input).unwrap();
    assert_eq!(out, expected);
    assert!(!contains(&out, b"Exif"));
    assert_no_secrets("jpeg", &out);
}

#[test]
fn only_the_first_exif_segment_gives_the_orientation() {
    let input = [
        &[0xFF, 0xD8][..],
        &segment(0xE1, &exif_payload(false, Some(6))),
        &segment(0xE1, &exif_payload(true, Some(3))),
        &JPEG_16X8[2..],
    ]
    .concat();
    let (out, _) = sanitize(&input).unwrap();
    assert_eq!(count(&out, b"Exif"), 1);
    assert_eq!(out[2..38], jpeg::orientation_segment(6));
}

#[test]
fn exif_that_is_not_tiff_or_points_outside_its_segment_is_just_dropped() {
    let bad_tiffs: [&[u8]; 4] = [
        b"Exif\0\0XX*\0\x08\0\0\0\0\0",
        b"Exif\0\0II*\0\xFF\0\0\0\0\0",   // IFD0 beyond the segment
        b"Exif\0\0II*\0\x04\0\0\0\0\0",   // IFD0 inside the header
        b"Exif\0\0MM\0*\0\0\0\x08\0\x09", // nine entries, none there
    ];
    for tiff in bad_tiffs {
        let input = [&[0xFF, 0xD8][..], &segment(0xE1, tiff), &JPEG_16X8[2..]].concat();
        assert_eq!(sanitize(&input).unwrap().0, JPEG_16X8);
    }
}

#[test]
fn a_progressive_jpeg_keeps_every_scan_and_loses_a_comment_between_scans() {
    let (out, parsed) = sanitize(JPEG_PROGRESSIVE_16X8).unwrap();
    assert_eq!(out, JPEG_PROGRESSIVE_16X8);
    assert_eq!((parsed.width, parsed.height), (16, 8));

    // A COM after the first scan, before the next DHT.
    let second_dht = JPEG_PROGRESSIVE_16X8
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == [0xFF, 0xC4])
        .nth(1)
        .unwrap()
        .0;
    let with_comment = [
        &JPEG_PROGRESSIVE_16X8[..second_dht],
        &segment(0xFE, b"secret between scans"),
        &JPEG_PROGRESSIVE_16X8[second_dht..],
    ]
    .concat();
    assert_eq!(sanitize(&with_comment).unwrap().0, JPEG_PROGRESSIVE_16X8);
}

#[test]
fn jpeg_fill_bytes_tem_stuffing_and_restart_markers_are_understood() {
    let sos = JPEG_16X8
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .unwrap();
    let header_end = sos + 2 + 12;
    let tables = &JPEG_16X8[..sos];
    // Not a decodable scan, but a well-formed one: stuffed FFs, restart
    // markers, a run of FFs, and fill bytes before EOI.
    let scan = [
        0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD7, 0xFF, 0x00,
    ];
    let input = [
        tables,
        &[0xFF, 0x01, 0xFF, 0xFF, 0xFF][..], // TEM, then fill bytes before SOS
        &JPEG_16X8[sos..header_end],
        &scan,
        &[0xFF, 0xFF, 0xFF, 0xD9],
    ]
    .concat();
    let expected = [
        tables,
        &[0xFF, 0x01][..],
        &JPEG_16X8[sos..header_end],
        &scan,
        &[0xFF, 0xFF, 0xFF, 0xD9],
    ]
    .concat();
    assert_eq!(sanitize(&input).unwrap().0, expected);
}

#[test]
fn a_png_loses_its_text_exif_time_and_private_chunks() {
    let (input, expected) = png_with_metadata();
    let (out, parsed) = sanitize(&input).unwrap();
    assert_eq!(out, expected);
    assert_no_secrets("png", &out);
    assert_eq!((parsed.width, parsed.height), (2, 3));
    assert_eq!(size_of(&out), size_of(&input));
    // The IDAT chunks, CRCs and all, are the original bytes.
    let idats = |b: &[u8]| b.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
    let iend = |b: &[u8]| b.windows(4).position(|w| w == b"IEND").unwrap() - 4;
    assert_eq!(
        out[idats(&out)..iend(&out)],
        input[idats(&input)..iend(&input)]
    );
}

#[tokio::test]
async fn a_vp8x_webp_loses_exif_xmp_and_unknown_chunks_and_its_riff_size_is_rewritten() {
    let (input, expected) = webp_with_metadata();
    let (info, out) = store(stream_of(vec![input.clone()]), MAX).await;
    let info = info.unwrap();
    assert_eq!(out, expected);
    assert_no_secrets("webp", &out);
    assert_eq!(
        u32::from_le_bytes(out[4..8].try_into().unwrap()) as usize,
        out.len() - 8
    );
    assert_eq!(out[20], 0x20, "only the ICC flag is left");
    assert_eq!((info.width, info.height), (4, 3));
    assert_eq!(size_of(&out), size_of(&input));
    let vp8 = &WEBP_LOSSY_4X3[12..];
    assert!(out.ends_with(vp8), "the VP8 chunk is the original bytes");
    assert_eq!(
        (info.content_type, info.extension, info.size_bytes),
        ("image/webp", "webp", out.len() as u64)
    );
}

#[tokio::test]
async fn simple_webp_files_are_stored_as_they_came() {
    for (image, (w, h)) in [(WEBP_LOSSY_4X3, (4, 3)), (WEBP_LOSSLESS_4X3, (4, 3))] {
        let (info, out) = store(stream_of(vec![image.to_vec()]), MAX).await;
        let info = info.unwrap();
        assert_eq!(out, image);
        assert_eq!((info.width, info.height), (w, h));

        // A chunk after the image (not allowed in a simple file) goes, and
        // the RIFF size follows.
        let mut longer = image[12..].to_vec();
        longer.extend(riff_chunk(b"EXIF", &tiff_with_gps(false, None)));
        let (_, out) = store(stream_of(vec![riff(&[longer])]), MAX).await;
        assert_eq!(out, image);
    }
}

#[test]
fn sanitizing_twice_changes_nothing() {
    for (name, input, expected) in all() {
        let (once, first) = sanitize(&input).unwrap();
        assert_eq!(once, expected, "{name}");
        let (twice, second) = sanitize(&once).unwrap();
        assert_eq!(twice, once, "{name}");
        assert_eq!(first, second, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Chunking
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_byte_chunks_give_the_same_file() {
    for (name, input, expected) in all() {
        let chunks = input.iter().map(|&b| vec![b]).collect();
        let (info, out) = store(stream_of(chunks), MAX).await;
        assert!(info.is_ok(), "{name}: {info:?}");
        assert_eq!(out, expected, "{name}");
    }
}

/// A large image: a 60 KiB ICC segment and a 3 MiB scan with stuffed FFs.
fn big_jpeg() -> Vec<u8> {
    let sos = JPEG_16X8
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .unwrap();
    let header_end = sos + 2 + 12;
    let mut scan = Vec::with_capacity(3 << 20);
    let mut x = 0x2545_F491_u32;
    while scan.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let b = x as u8;
        scan.push(b);
        if b == 0xFF {
            scan.push(0);
        }
    }
    let icc = [b"ICC_PROFILE\0\x01\x01".as_slice(), &[7u8; 60_000]].concat();
    [
        &JPEG_16X8[..20],
        &segment(0xE2, &icc),
        &segment(0xE1, &exif_payload(true, Some(8))),
        &JPEG_16X8[20..header_end],
        &scan,
        &[0xFF, 0xD9],
    ]
    .concat()
}

#[tokio::test]
async fn a_large_image_in_large_chunks_streams_through_unchanged() {
    let input = big_jpeg();
    let expected = sanitize(&input).unwrap().0;
    // All of it but the Exif segment, which became the orientation one.
    let exif = segment(0xE1, &exif_payload(true, Some(8)));
    assert_eq!(expected.len(), input.len() - exif.len() + 36);
    let chunks: Vec<Vec<u8>> = input.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let (info, out) = store(stream_of(chunks), MAX).await;
    assert_eq!(info.unwrap().size_bytes, expected.len() as u64);
    assert_eq!(out, expected);
}

#[test]
fn the_parser_holds_back_no_more_than_a_header() {
    let input = big_jpeg();
    let mut sanitizer = Sanitizer::new();
    let capacity = sanitizer.held_capacity();
    assert!(capacity <= 2 * MAX_HOLD);
    let mut out = Vec::new();
    for piece in input.chunks(7) {
        sanitizer.feed(piece, &mut out).unwrap();
        assert_eq!(sanitizer.held_capacity(), capacity);
        out.clear();
    }
    sanitizer.finish().unwrap();
    for (name, input, _) in all() {
        let mut sanitizer = Sanitizer::new();
        for &b in &input {
            sanitizer.feed(&[b], &mut out).unwrap();
        }
        assert_eq!(sanitizer.held_capacity(), capacity, "{name}");
    }
}

fn image_and_cuts() -> impl Strategy<Value = (usize, Vec<usize>)> {
    let images = all().len();
    (
        0..images,
        prop::collection::vec(any::<prop::sample::Index>(), 0..48),
    )
        .prop_map(|(i, cuts)| {
            let len = all()[i].1.len();
            (i, cuts.iter().map(|c| c.index(len + 1)).collect())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_output_is_the_same_whatever_the_chunking((image, cuts) in image_and_cuts()) {
        let (name, input, expected) = &all()[image];
        let (out, _) = sanitize_cut(input, &cuts).unwrap();
        prop_assert_eq!(&out, expected, "{}", name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_stored_file_is_the_same_whatever_the_chunking((image, cuts) in image_and_cuts()) {
        let (name, input, expected) = &all()[image];
        let (info, out) = block_on(store(stream_of(chunks_of(input, &cuts)), MAX));
        prop_assert!(info.is_ok(), "{}: {:?}", name, info);
        prop_assert_eq!(&out, expected, "{}", name);
    }
}

// ---------------------------------------------------------------------------
// Broken input
// ---------------------------------------------------------------------------

#[test]
fn every_truncation_of_an_image_is_refused() {
    for (name, input, _) in all() {
        // Where the image ends (what follows it is dropped anyway).
        let end = match sanitize(&input).unwrap().1.format {
            ImageFormat::WebP => 8 + u32::from_le_bytes(input[4..8].try_into().unwrap()) as usize,
            ImageFormat::Jpeg => input.len() - trailer(&input),
            ImageFormat::Png => input.windows(4).position(|w| w == b"IEND").unwrap() + 8,
        };
        for cut in 0..end {
            assert_eq!(
                sanitize(&input[..cut]),
                Err(NotAnImage),
                "{name} cut at {cut}"
            );
        }
    }
}

/// Bytes after a JPEG's first EOI that follows its scans.
fn trailer(jpeg: &[u8]) -> usize {
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let eoi = sos
        + jpeg[sos..]
            .windows(2)
            .position(|w| w == [0xFF, 0xD9])
            .unwrap();
    jpeg.len() - eoi - 2
}

#[test]
fn jpeg_structure_errors_are_refused() {
    let sof = JPEG_16X8
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .unwrap();
    let sos = JPEG_16X8
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a length of one",
            [&JPEG_16X8[..20], &[0xFF, 0xFE, 0, 1], &JPEG_16X8[20..]].concat(),
        ),
        (
            "no marker after a segment",
            [&JPEG_16X8[..20], &[0x00], &JPEG_16X8[20..]].concat(),
        ),
        (
            "SOS before SOF",
            [&JPEG_16X8[..sof], &JPEG_16X8[sos..]].concat(),
        ),
        (
            "EOI before any scan",
            [&JPEG_16X8[..20], &[0xFF, 0xD9][..]].concat(),
        ),
        (
            "a second SOI",
            [&JPEG_16X8[..20], &[0xFF, 0xD8], &JPEG_16X8[20..]].concat(),
        ),
        (
            "RST before any scan",
            [&JPEG_16X8[..20], &[0xFF, 0xD3], &JPEG_16X8[20..]].concat(),
        ),
        (
            "a reserved marker",
            [&JPEG_16X8[..20], &segment(0x40, b"x"), &JPEG_16X8[20..]].concat(),
        ),
        (
            "a JPGn marker",
            [&JPEG_16X8[..20], &segment(0xF3, b"x"), &JPEG_16X8[20..]].concat(),
        ),
        (
            "a second SOF",
            [
                &JPEG_16X8[..sos],
                &JPEG_16X8[sof..sof + 19],
                &JPEG_16X8[sos..],
            ]
            .concat(),
        ),
        ("a zero height", {
            let mut j = JPEG_16X8.to_vec();
            j[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
            j
        }),
        ("a frame length not matching its components", {
            let mut j = JPEG_16X8.to_vec();
            j[sof + 9] = 2;
            j
        }),
    ];
    for (name, input) in cases {
        assert_eq!(sanitize(&input), Err(NotAnImage), "{name}");
    }
}

#[test]
fn png_structure_errors_are_refused() {
    let (input, _) = png_with_metadata();
    let idat = input.windows(4).position(|w| w == b"IDAT").unwrap();
    let mut bad_crc = input.clone();
    bad_crc[idat + 6] ^= 1;
    let ihdr = png_chunk(b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 3, 8, 2, 0, 0, 0]);
    let iend = png_chunk(b"IEND", &[]);
    let idat_chunk = png_chunk(b"IDAT", &zlib_stored(&[0; 21]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a damaged IDAT", bad_crc),
        ("no IDAT", [PNG_SIGNATURE, &ihdr, &iend].concat()),
        (
            "a critical chunk nobody knows",
            [
                PNG_SIGNATURE,
                &ihdr,
                &png_chunk(b"QUUX", b""),
                &idat_chunk,
                &iend,
            ]
            .concat(),
        ),
        (
            "a second IHDR",
            [PNG_SIGNATURE, &ihdr, &ihdr, &idat_chunk, &iend].concat(),
        ),
        (
            "a chunk type that is not letters",
            [
                PNG_SIGNATURE,
                &ihdr,
                &png_chunk(b"a1b2", b""),
                &idat_chunk,
                &iend,
            ]
            .concat(),
        ),
        (
            "IDAT first",
            [PNG_SIGNATURE, &idat_chunk, &ihdr, &iend].concat(),
        ),
        (
            "zero width",
            [
                PNG_SIGNATURE,
                &png_chunk(b"IHDR", &[0, 0, 0, 0, 0, 0, 0, 3, 8, 2, 0, 0, 0]),
                &idat_chunk,
                &iend,
            ]
            .concat(),
        ),
    ];
    for (name, input) in cases {
        assert_eq!(sanitize(&input), Err(NotAnImage), "{name}");
    }
    // A damaged ancillary chunk passes as it is, as decoders let it.
    let gama = input.windows(4).position(|w| w == b"gAMA").unwrap();
    let mut bad_gama = input.clone();
    bad_gama[gama + 5] ^= 1;
    assert!(sanitize(&bad_gama).is_ok());
}

#[test]
fn webp_structure_errors_are_refused() {
    let vp8 = WEBP_LOSSY_4X3[12..].to_vec();
    let vp8x = riff_chunk(b"VP8X", &[0x20, 0, 0, 0, 3, 0, 0, 2, 0, 0]);
    let mut overrun = riff(std::slice::from_ref(&vp8));
    overrun[4] -= 2;
    let mut not_key_frame = vp8.clone();
    not_key_frame[8] |= 1;
    let mut no_start_code = vp8.clone();
    no_start_code[11] = 0;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a first chunk past the RIFF size", overrun),
        ("a later chunk past the RIFF size", {
            let mut w = riff(&[vp8x.clone(), vp8.clone()]);
            w[4] -= 2;
            w
        }),
        (
            "VP8X without an image",
            riff(&[vp8x.clone(), riff_chunk(b"ICCP", b"x")]),
        ),
        (
            "a first chunk that is no image",
            riff(&[riff_chunk(b"ICCP", b"x"), vp8.clone()]),
        ),
        (
            "a second VP8X",
            riff(&[vp8x.clone(), vp8x.clone(), vp8.clone()]),
        ),
        ("not a key frame", riff(&[not_key_frame])),
        ("no start code", riff(&[no_start_code])),
        (
            "no VP8L signature",
            riff(&[riff_chunk(b"VP8L", &[0, 1, 2, 3, 4, 5])]),
        ),
        ("a RIFF size that leaves half a chunk", {
            let mut w = riff(&[vp8.clone(), vp8x.clone()]);
            let size = u32::from_le_bytes(w[4..8].try_into().unwrap()) - 14;
            w[4..8].copy_from_slice(&size.to_le_bytes());
            w
        }),
    ];
    for (name, input) in cases {
        assert_eq!(sanitize(&input), Err(NotAnImage), "{name}");
    }
}

fn signature_then_anything() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            b"\xFF\xD8\xFF".to_vec(),
            PNG_SIGNATURE.to_vec(),
            b"RIFF\x40\0\0\0WEBP".to_vec(),
            b"RIFF".to_vec(),
        ]),
        prop::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(sig, tail)| {
            let mut v = sig;
            if v == b"RIFF" {
                // A random size, then WEBP.
                v.extend_from_slice(&tail[..tail.len().min(4)]);
                v.extend_from_slice(b"WEBP");
            }
            v.extend_from_slice(&tail);
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bytes_after_a_signature_are_refused(input in signature_then_anything()) {
        prop_assert_eq!(sanitize(&input), Err(NotAnImage));
    }

    /// Damaged images (bytes changed, cut, or inserted): no panic, and
    /// whatever is accepted is a stable, recognisable image.
    #[test]
    fn damaged_images_never_panic_and_what_passes_is_stable(
        image in 0..all().len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
    ) {
        let mut input = all()[image].1.clone();
        for (at, byte, kind) in edits {
            let i = at.index(input.len());
            match kind {
                0 => input[i] = byte,
                1 => input.insert(i, byte),
                _ => input.truncate(i.max(1)),
            }
        }
        if let Ok((out, parsed)) = sanitize(&input) {
            let (again, reparsed) = sanitize(&out).unwrap();
            prop_assert_eq!(again, out.clone());
            prop_assert_eq!(parsed, reparsed);
            prop_assert_eq!(sniff(&out).unwrap(), parsed.format);
        }
    }
}

#[tokio::test]
async fn not_an_image_is_refused_without_reading_further() {
    let first_chunks: [&[u8]; 6] = [
        b"hello, I am a text file pretending to be a receipt",
        b"GIF89a\x01\0\x01\0\0\0\0",
        b"\xFF\xD8\xFFhello", // JPEG's signature, then no marker
        b"RIFF\x24\0\0\0WAVEfmt ",
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDX\0\0\0\x02\0\0\0\x03\x08\x02\0\0\0\0\0\0\0",
        b"<",
    ];
    for first in first_chunks {
        let (result, _) = store(then_panic(vec![first.to_vec()]), MAX).await;
        assert!(
            matches!(result, Err(ImageError::NotAnImage)),
            "{first:?}: {result:?}"
        );
    }
    // Also when the signature itself arrives a byte at a time.
    let (result, _) = store(then_panic(vec![vec![0xFF], vec![0xD8], vec![0x00]]), MAX).await;
    assert!(matches!(result, Err(ImageError::NotAnImage)));
    // An empty upload is told apart, even in empty chunks.
    let (result, _) = store(stream_of(vec![vec![], vec![]]), MAX).await;
    assert!(matches!(result, Err(ImageError::Empty)), "{result:?}");
}

#[tokio::test]
async fn too_large_is_reported_as_soon_as_the_limit_is_passed() {
    let (input, expected) = jpeg_with_metadata(Some(6));
    let len = input.len() as u64;
    let (result, _) = store(stream_of(vec![input.clone()]), len).await;
    assert_eq!(result.unwrap().size_bytes, expected.len() as u64);

    let half = input.len() / 2;
    let chunks = vec![input[..half].to_vec(), input[half..].to_vec()];
    let (result, _) = store(then_panic(chunks), len - 1).await;
    assert!(matches!(result, Err(ImageError::TooLarge)), "{result:?}");

    // Bytes after the image count too: a limit is on what is sent.
    let (result, _) = store(stream_of(vec![input, vec![0; 10]]), len + 9).await;
    assert!(matches!(result, Err(ImageError::TooLarge)), "{result:?}");
}

#[tokio::test]
async fn the_input_streams_own_error_is_handed_back() {
    let half = JPEG_16X8.len() / 2;
    let input = stream::iter(vec![
        Ok(Bytes::from_static(&JPEG_16X8[..half])),
        Err(io::Error::new(io::ErrorKind::TimedOut, "body timeout")),
    ]);
    let (result, _) = store(input, MAX).await;
    match result {
        Err(ImageError::Input(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
        other => panic!("expected the input's error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Serve time
// ---------------------------------------------------------------------------

#[test]
fn sniff_names_stored_images_and_refuses_the_rest() {
    for (name, input, expected) in all() {
        let format = sanitize(&input).unwrap().1.format;
        assert_eq!(sniff(&expected).unwrap(), format, "{name}");
        assert_eq!(sniff(&expected[..SNIFF_LEN]).unwrap(), format, "{name}");
    }
    assert_eq!(sniff(JPEG_16X8).unwrap().content_type(), "image/jpeg");
    assert_eq!(sniff(WEBP_LOSSLESS_4X3).unwrap().extension(), "webp");
    for not in [
        &b"hello, I am text pretending to be a png"[..],
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a\x01\0\x01\0",
        b"RIFF\x24\0\0\0WEBPJUNK",
        b"\xFF\xD8",
        b"",
    ] {
        assert!(sniff(not).is_err(), "{not:?}");
    }
}

#[test]
fn png_crc_is_the_standard_one() {
    assert_eq!(png::crc32(b"IEND"), 0xAE42_6082);
}
