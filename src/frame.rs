//! WebSocket frames (RFC 6455) as a server writes and reads them, with no
//! I/O: encoding is a header in front of a payload (a server's frames are
//! not masked, so one encoded broadcast is the same bytes for every socket),
//! and reading takes whatever bytes arrived and returns whole messages.
//!
//! Reading enforces what the protocol asks of a client's frames — masked,
//! no reserved bits, control frames short and whole, continuations only
//! inside a fragmented message — and the server's limits: a message over
//! `max_message` is refused (1009), a text message that is not UTF-8 too
//! (1007). Everything else wrong is a protocol violation (4005).

use bytes::{BufMut, Bytes, BytesMut};

pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The header of an unmasked frame carrying `len` bytes.
fn header(buf: &mut BytesMut, opcode: u8, len: usize) {
    buf.put_u8(0x80 | opcode);
    match len {
        0..=125 => buf.put_u8(len as u8),
        126..=0xFFFF => {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
    }
}

/// One whole frame: header and payload in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    header(&mut buf, opcode, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

pub fn text(payload: &str) -> Bytes {
    encode(opcode::TEXT, payload.as_bytes())
}

/// An empty ping (the heartbeat), the same bytes for every socket.
pub const PING: Bytes = Bytes::from_static(&[0x80 | opcode::PING, 0]);

/// A close frame with its code and a short reason (at most 123 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    encode(opcode::CLOSE, &payload)
}

/// What the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame, with its code if it gave one.
    Close(Option<u16>),
}

/// Why the connection must close, as its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 4005: not a valid client frame.
    Protocol,
    /// 1007: a text message that is not UTF-8.
    NotUtf8,
    /// 1009: a message over the limit.
    TooBig,
}

impl Violation {
    pub fn code(self) -> u16 {
        match self {
            Violation::Protocol => protocol::close::PROTOCOL_VIOLATION,
            Violation::NotUtf8 => protocol::close::INVALID_UTF8,
            Violation::TooBig => protocol::close::TOO_BIG,
        }
    }
}

/// Reassembles a client's frames. Holds only what it must between reads:
/// an unfinished frame's bytes and an unfinished fragmented message, both
/// behind one pointer that is empty while the socket is idle.
pub struct Reader {
    max_message: usize,
    pending: Option<Box<Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Bytes of a frame not yet whole.
    partial: Vec<u8>,
    /// A fragmented message being assembled: its opcode and payload.
    message: Option<(u8, Vec<u8>)>,
}

impl Reader {
    pub fn new(max_message: usize) -> Reader {
        Reader {
            max_message,
            pending: None,
        }
    }

    /// Feeds bytes that arrived; pushes every whole message to `out`.
    /// After an error nothing more should be fed.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Incoming>) -> Result<(), Violation> {
        let max = self.max_message;
        let Some(mut p) = self.pending.take() else {
            // The common case: whole frames, nothing kept.
            let mut message = None;
            let used = frames(bytes, max, &mut message, out)?;
            if used < bytes.len() || message.is_some() {
                self.pending = Some(Box::new(Pending {
                    partial: bytes[used..].to_vec(),
                    message,
                }));
            }
            return Ok(());
        };
        if p.partial.is_empty() {
            let used = frames(bytes, max, &mut p.message, out)?;
            p.partial.extend_from_slice(&bytes[used..]);
        } else {
            // Complete the pending frame first.
            p.partial.extend_from_slice(bytes);
            let buf = std::mem::take(&mut p.partial);
            let used = frames(&buf, max, &mut p.message, out)?;
            p.partial = buf[used..].to_vec();
        }
        if !p.partial.is_empty() || p.message.is_some() {
            self.pending = Some(p);
        }
        Ok(())
    }
}

/// Parses whole frames from the front of `buf`; returns how many bytes
/// they took.
fn frames(
    buf: &[u8],
    max: usize,
    message: &mut Option<(u8, Vec<u8>)>,
    out: &mut Vec<Incoming>,
) -> Result<usize, Violation> {
    let mut at = 0;
    while let Some((f, len)) = parse(&buf[at..], max)? {
        at += len;
        frame(f, max, message, out)?;
    }
    Ok(at)
}

fn frame(
    f: Frame<'_>,
    max: usize,
    message: &mut Option<(u8, Vec<u8>)>,
    out: &mut Vec<Incoming>,
) -> Result<(), Violation> {
    let payload = unmask(f.payload, f.mask);
    match f.opcode {
        opcode::CLOSE => {
            let code = match payload.len() {
                0 => None,
                1 => return Err(Violation::Protocol),
                _ => {
                    if std::str::from_utf8(&payload[2..]).is_err() {
                        return Err(Violation::NotUtf8);
                    }
                    Some(u16::from_be_bytes([payload[0], payload[1]]))
                }
            };
            out.push(Incoming::Close(code));
        }
        opcode::PING => out.push(Incoming::Ping(payload)),
        opcode::PONG => out.push(Incoming::Pong),
        opcode::TEXT | opcode::BINARY => {
            if message.is_some() {
                return Err(Violation::Protocol);
            }
            if f.fin {
                out.push(whole(f.opcode, payload)?);
            } else {
                *message = Some((f.opcode, payload));
            }
        }
        opcode::CONTINUATION => {
            let Some((_, so_far)) = message.as_mut() else {
                return Err(Violation::Protocol);
            };
            if so_far.len() + payload.len() > max {
                return Err(Violation::TooBig);
            }
            so_far.extend_from_slice(&payload);
            if f.fin
                && let Some((op, data)) = message.take()
            {
                out.push(whole(op, data)?);
            }
        }
        _ => return Err(Violation::Protocol),
    }
    Ok(())
}

fn whole(opcode: u8, payload: Vec<u8>) -> Result<Incoming, Violation> {
    if opcode == opcode::TEXT {
        String::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| Violation::NotUtf8)
    } else {
        Ok(Incoming::Binary)
    }
}

struct Frame<'a> {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    payload: &'a [u8],
}

/// One frame from the front of `buf`, with its length, or `None` when it
/// is not all there yet.
fn parse(buf: &[u8], max_message: usize) -> Result<Option<(Frame<'_>, usize)>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol); // no extension was negotiated
    }
    let opcode = b0 & 0x0F;
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol); // a client's frames are masked
    }
    let control = opcode >= 0x8;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (n as u64, 2),
    };
    if control && (!fin || len > 125) {
        return Err(Violation::Protocol);
    }
    if len > max_message as u64 {
        return Err(Violation::TooBig);
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[at..at + 4]);
    at += 4;
    let frame = Frame {
        fin,
        opcode,
        mask,
        payload: &buf[at..at + len],
    };
    Ok(Some((frame, at + len)))
}

fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame, masked, as tungstenite would write it.
    fn client(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            0..=125 => out.push(0x80 | payload.len() as u8),
            126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(bytes: &[u8], max: usize) -> Result<Vec<Incoming>, Violation> {
        let mut r = Reader::new(max);
        let mut out = Vec::new();
        r.feed(bytes, &mut out)?;
        Ok(out)
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        let long = "x".repeat(300);
        let f = text(&long);
        assert_eq!(&f[..4], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!(f.len(), 304);
        assert_eq!(&close(4003, "rate limited")[..4], &[0x88, 14, 0x0F, 0xA3]);
    }

    #[test]
    fn text_ping_close_and_fragments_are_read() {
        let mut bytes = client(true, opcode::TEXT, "你好".as_bytes(), [1, 2, 3, 4]);
        bytes.extend(client(true, opcode::PING, b"p", [9, 9, 9, 9]));
        bytes.extend(client(false, opcode::TEXT, b"ab", [5, 6, 7, 8]));
        bytes.extend(client(true, opcode::PONG, b"", [0, 0, 0, 0]));
        bytes.extend(client(true, opcode::CONTINUATION, b"cd", [1, 1, 1, 1]));
        bytes.extend(client(
            true,
            opcode::CLOSE,
            &1000u16.to_be_bytes(),
            [2, 2, 2, 2],
        ));
        assert_eq!(
            read_all(&bytes, 1024).unwrap(),
            [
                Incoming::Text("你好".into()),
                Incoming::Ping(b"p".to_vec()),
                Incoming::Pong,
                Incoming::Text("abcd".into()),
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn what_a_client_may_not_send_closes_with_its_code() {
        let unmasked = [0x81, 0x01, b'a'];
        assert_eq!(read_all(&unmasked, 1024), Err(Violation::Protocol));
        let not_utf8 = client(true, opcode::TEXT, &[0xFF, 0xFE], [1, 2, 3, 4]);
        assert_eq!(read_all(&not_utf8, 1024), Err(Violation::NotUtf8));
        let big = client(true, opcode::TEXT, &[b'a'; 2000], [1, 2, 3, 4]);
        assert_eq!(read_all(&big, 1024), Err(Violation::TooBig));
        let lone_continuation = client(true, opcode::CONTINUATION, b"a", [1, 2, 3, 4]);
        assert_eq!(read_all(&lone_continuation, 1024), Err(Violation::Protocol));
        let long_ping = client(true, opcode::PING, &[0; 126], [1, 2, 3, 4]);
        assert_eq!(read_all(&long_ping, 1024), Err(Violation::Protocol));
        let rsv = [0xC1, 0x81, 0, 0, 0, 0, b'a'];
        assert_eq!(read_all(&rsv, 1024), Err(Violation::Protocol));
        let mut split_too_big = client(false, opcode::TEXT, &[b'a'; 800], [1, 2, 3, 4]);
        split_too_big.extend(client(
            true,
            opcode::CONTINUATION,
            &[b'a'; 800],
            [1, 2, 3, 4],
        ));
        assert_eq!(read_all(&split_too_big, 1024), Err(Violation::TooBig));
    }

    #[test]
    fn an_idle_reader_holds_no_buffer() {
        let mut r = Reader::new(1024);
        let mut out = Vec::new();
        r.feed(&client(true, opcode::TEXT, b"ping", [1, 2, 3, 4]), &mut out)
            .unwrap();
        assert!(r.pending.is_none());
        r.feed(
            &client(false, opcode::TEXT, b"pi", [1, 2, 3, 4])[..5],
            &mut out,
        )
        .unwrap();
        assert!(r.pending.is_some(), "half a frame is kept");
    }

    proptest! {
        /// Frames read the same whatever pieces the bytes arrive in.
        #[test]
        fn any_split_of_the_bytes_reads_the_same(
            messages in proptest::collection::vec("[a-z你好]{0,300}", 1..6),
            cuts in proptest::collection::vec(0usize..2000, 0..20),
        ) {
            let mut bytes = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                bytes.extend(client(true, opcode::TEXT, m.as_bytes(), [i as u8, 7, 13, 200]));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut r = Reader::new(4096);
            let mut out = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                r.feed(&bytes[last..c], &mut out).unwrap();
                last = c;
            }
            let want: Vec<Incoming> = messages.into_iter().map(Incoming::Text).collect();
            prop_assert_eq!(out, want);
            prop_assert!(r.pending.is_none());
        }

        /// Any bytes at all: a message, a wait for more, or a violation —
        /// never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut r = Reader::new(256);
            let mut out = Vec::new();
            let _ = r.feed(&bytes, &mut out);
        }
    }
}
