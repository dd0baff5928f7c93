//! A bare reader for many server sockets at once: one thread, one `epoll`,
//! frames parsed in place. A listener that only reads (`fanout`) costs
//! the machine far less this way than a WebSocket task per socket, and the
//! load generator shares the server's cores.
//!
//! Only what a server sends is understood: unfragmented, unmasked text,
//! ping and close frames (pings are answered). Anything else ends that
//! socket with a kind the report counts.
//!
//! A TLS socket (`wss://`, nginx in front) is read by the same thread: its
//! handshake was done at connect time, and here its rustls
//! `ClientConnection` takes what the kernel has (`read_tls` until it would
//! block, `process_new_packets`), and the plaintext goes into the same
//! buffer and the same parser; a pong is encrypted through it. So plain and
//! TLS sockets cost this process the same, apart from the cryptography.

use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// One server frame, borrowed from the read buffer.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close(Option<u16>),
    /// Pong or binary: nothing to do.
    Other,
}

/// Frames larger than this end the socket (a server's event is < 1 KiB).
const MAX_FRAME: u64 = 1 << 20;

/// The frame at the start of `buf` and its length on the wire; `None` if
/// it has not fully arrived.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x70 != 0 {
        return Err("fragmented_or_rsv");
    }
    if b1 & 0x80 != 0 {
        return Err("masked_server_frame");
    }
    let (len, head) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    if len > MAX_FRAME {
        return Err("frame_too_large");
    }
    let end = head + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = &buf[head..end];
    let frame = match b0 & 0x0f {
        0x1 => Frame::Text(payload),
        0x9 => Frame::Ping(payload),
        0x8 => {
            Frame::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
        }
        0xA | 0x2 => Frame::Other,
        _ => return Err("bad_opcode"),
    };
    Ok(Some((frame, end)))
}

/// A masked pong carrying `payload` (a client's frames are masked).
pub fn pong(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mask: [u8; 4] = rand::random();
    let mut out = Vec::with_capacity(6 + payload.len());
    out.extend_from_slice(&[0x8A, 0x80 | payload.len() as u8]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What reading gave, per socket index.
pub enum Event<'a> {
    Text(usize, &'a [u8]),
    /// The socket ended: `close_<code>`, `eof`, `read` or a parse error.
    Ended(usize, String),
}

/// A socket handed to the reader, after its upgrade.
pub struct Socket {
    pub stream: TcpStream,
    /// Bytes of the frame stream already read (after the `101`).
    pub pending: Vec<u8>,
    /// Through TLS: the connection, handshake done (it may hold more).
    pub tls: Option<Box<ClientConnection>>,
}

impl Socket {
    pub fn plain(stream: TcpStream) -> Socket {
        Socket {
            stream,
            pending: Vec::new(),
            tls: None,
        }
    }
}

struct Sock {
    stream: TcpStream,
    /// Plaintext not yet parsed (the start of a frame).
    buf: Vec<u8>,
    open: bool,
    tls: Option<Box<ClientConnection>>,
}

pub struct Reader {
    epoll: libc::c_int,
    socks: Vec<Sock>,
    scratch: Vec<u8>,
}

impl Reader {
    /// Sockets, each with the bytes already read from it; made
    /// non-blocking here.
    pub fn new(sockets: Vec<Socket>) -> io::Result<Reader> {
        // SAFETY: plain syscalls on fds this process owns; `ev` outlives
        // each call.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reader = Reader {
            epoll,
            socks: Vec::with_capacity(sockets.len()),
            scratch: vec![0; 64 * 1024],
        };
        for (
            i,
            Socket {
                stream,
                pending,
                tls,
            },
        ) in sockets.into_iter().enumerate()
        {
            stream.set_nonblocking(true)?;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: as above.
            if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev) }
                != 0
            {
                return Err(io::Error::last_os_error());
            }
            reader.socks.push(Sock {
                stream,
                buf: pending,
                open: true,
                tls,
            });
        }
        Ok(reader)
    }

    /// Handles the bytes that arrived with the handshakes (and what a TLS
    /// connection had already decrypted).
    pub fn drain_pending(&mut self, on: &mut impl FnMut(Event)) {
        for i in 0..self.socks.len() {
            if self.socks[i].tls.is_some() {
                self.read_tls(i, on);
            } else {
                self.consume(i, on);
            }
        }
    }

    /// Waits up to `timeout_ms` and handles what arrived.
    pub fn poll(&mut self, timeout_ms: i32, on: &mut impl FnMut(Event)) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        // SAFETY: `events` has room for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll,
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            if !self.socks[i].open {
                continue;
            }
            if self.socks[i].tls.is_some() {
                self.read_tls(i, on);
                continue;
            }
            let read = (&self.socks[i].stream).read(&mut self.scratch);
            match read {
                Ok(0) => self.end(i, "eof".into(), on),
                Ok(k) => {
                    self.socks[i].buf.extend_from_slice(&self.scratch[..k]);
                    self.consume(i, on);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.end(i, "read".into(), on),
            }
        }
        Ok(())
    }

    /// TLS socket `i` is readable (or has data buffered): every record the
    /// kernel has, decrypted into the buffer, then parsed.
    fn read_tls(&mut self, i: usize, on: &mut impl FnMut(Event)) {
        let Sock {
            stream, buf, tls, ..
        } = &mut self.socks[i];
        let Some(conn) = tls.as_deref_mut() else {
            return;
        };
        let mut eof = false;
        let mut failed = None;
        loop {
            match conn.read_tls(&mut &*stream) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {
                    if conn.process_new_packets().is_err() {
                        failed = Some("tls");
                        break;
                    }
                    if let Err(kind) = take_plaintext(conn, buf, &mut self.scratch) {
                        failed = Some(kind);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    failed = Some("read");
                    break;
                }
            }
        }
        // Plaintext decrypted before we got the connection, or left over.
        if failed.is_none()
            && let Err(kind) = take_plaintext(conn, buf, &mut self.scratch)
        {
            failed = Some(kind);
        }
        // Whatever rustls wants to say (an alert, a key update).
        flush_tls(conn, stream);
        self.consume(i, on);
        if let Some(kind) = failed {
            self.end(i, kind.into(), on);
        } else if eof && self.socks[i].open {
            self.end(i, "eof".into(), on);
        }
    }

    /// Parses and handles every whole frame in socket `i`'s buffer.
    fn consume(&mut self, i: usize, on: &mut impl FnMut(Event)) {
        if !self.socks[i].open {
            return;
        }
        let Sock {
            stream, buf, tls, ..
        } = &mut self.socks[i];
        let mut at = 0;
        let mut ended = None;
        loop {
            match parse(&buf[at..]) {
                Ok(Some((frame, len))) => {
                    match frame {
                        Frame::Text(t) => on(Event::Text(i, t)),
                        Frame::Ping(p) => match tls.as_deref_mut() {
                            Some(conn) => {
                                let _ = conn.writer().write_all(&pong(p));
                                flush_tls(conn, stream);
                            }
                            None => {
                                let _ = (&*stream).write_all(&pong(p));
                            }
                        },
                        Frame::Close(code) => {
                            ended = Some(code.map_or("close".into(), |c| format!("close_{c}")));
                        }
                        Frame::Other => {}
                    }
                    at += len;
                    if ended.is_some() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(kind) => {
                    ended = Some(kind.to_string());
                    break;
                }
            }
        }
        buf.drain(..at);
        if let Some(kind) = ended {
            self.end(i, kind, on);
        }
    }

    fn end(&mut self, i: usize, kind: String, on: &mut impl FnMut(Event)) {
        let s = &mut self.socks[i];
        if !s.open {
            return;
        }
        s.open = false;
        s.buf = Vec::new();
        s.tls = None;
        // SAFETY: our epoll and a registered fd.
        unsafe {
            libc::epoll_ctl(
                self.epoll,
                libc::EPOLL_CTL_DEL,
                s.stream.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
        on(Event::Ended(i, kind));
    }
}

/// Moves what `conn` has decrypted into `buf`. `Err` when the peer ended
/// the TLS session (a clean `close_notify` or an unclean EOF).
fn take_plaintext(
    conn: &mut ClientConnection,
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> Result<(), &'static str> {
    loop {
        match conn.reader().read(scratch) {
            Ok(0) => return Err("eof"),
            Ok(k) => buf.extend_from_slice(&scratch[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err("eof"),
        }
    }
}

/// Writes what `conn` has to send, as far as the socket takes it now (a
/// pong or an alert is tiny; the rest, if any, goes with the next one).
fn flush_tls(conn: &mut ClientConnection, stream: &TcpStream) {
    while conn.wants_write() {
        match conn.write_tls(&mut &*stream) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.epoll) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_are_parsed_whole_or_not_at_all() {
        let text = [&[0x81u8, 5][..], b"hello"].concat();
        assert_eq!(parse(&text).unwrap(), Some((Frame::Text(b"hello"), 7)));
        assert_eq!(parse(&text[..6]).unwrap(), None);
        let long = [&[0x81u8, 126, 0x01, 0x00][..], &[b'x'; 256]].concat();
        assert_eq!(parse(&long).unwrap().unwrap().1, 260);
        assert_eq!(parse(&long[..3]).unwrap(), None);
        assert_eq!(
            parse(&[0x88, 2, 0x03, 0xE9]).unwrap(),
            Some((Frame::Close(Some(1001)), 4))
        );
        assert_eq!(parse(&[0x89, 0]).unwrap(), Some((Frame::Ping(b""), 2)));
        assert!(parse(&[0x01, 0]).is_err(), "fragments are refused");
        assert!(parse(&[0x81, 0x80, 0, 0, 0, 0]).is_err(), "masked");
    }

    #[test]
    fn a_pong_is_masked_and_unmasks_to_the_ping_payload() {
        let p = pong(b"abc");
        assert_eq!((p[0], p[1]), (0x8A, 0x83));
        let mask = &p[2..6];
        let payload: Vec<u8> = p[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(payload, b"abc");
    }
}
