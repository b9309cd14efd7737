//! Message framing: `tag: u8, len: i32 (counting itself), body`.
//!
//! [`FrameReader`] owns a read buffer and splits complete frames off it without copying
//! (a [`Frame`] is a reference-counted slice of the buffer). Lengths are checked before
//! any allocation: below 4 is malformed, above the configured maximum is refused, so
//! garbage input produces an error, never a panic or an unbounded allocation.
//!
//! **Cancel safety**: [`FrameReader::read_frame`], [`FrameReader::read_startup`] and
//! [`FrameReader::fill`] are cancel safe. All state lives in the reader's buffer; a
//! cancelled call loses no bytes (`read_buf` either appends what it read or nothing), and
//! the next call resumes from the buffer. The session loop relies on this: it `select!`s
//! over client and backend reads.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A framing or decoding problem. Every variant ends the connection it came from.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {message} message: {problem}")]
    Malformed {
        message: &'static str,
        problem: &'static str,
    },
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    pub(crate) fn malformed(message: &'static str, problem: &'static str) -> Self {
        ProtocolError::Malformed { message, problem }
    }
}

/// One complete tagged message, header included.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("tag", &(self.tag() as char))
            .field("len", &self.raw.len())
            .finish()
    }
}

impl Frame {
    /// Wraps bytes that hold exactly one frame (checked).
    pub fn from_bytes(raw: Bytes) -> Result<Frame, ProtocolError> {
        if raw.len() < 5 {
            return Err(ProtocolError::BadLength(raw.len() as i64));
        }
        let len = i32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        if len < 4 || len as usize + 1 != raw.len() {
            return Err(ProtocolError::BadLength(len as i64));
        }
        Ok(Frame { raw })
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the length word.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The exact bytes of the frame, to forward unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Splits one tagged frame off the front of `buf` if it is complete. `max` bounds the
/// whole frame's size.
pub fn try_split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    match frame_len(buf, max)? {
        Some(n) if buf.len() >= n => Ok(Some(Frame {
            raw: buf.split_to(n).freeze(),
        })),
        _ => Ok(None),
    }
}

/// The total length of the frame at the front of `buf`, once its header is there.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength(len as i64));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(ProtocolError::TooLarge { len: total, max });
    }
    Ok(Some(total))
}

/// A buffered reader of frames over any byte stream.
///
/// The buffer starts small and grows only while a message needs it: an idle client
/// costs [`READ_FIRST`] bytes here, not a full chunk (issue 16: memory per idle
/// client), and a buffer grown past [`READ_KEEP`] for a large message is given back
/// once that message is consumed.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    /// The buffer grew past [`READ_KEEP`]: released when next found empty.
    grown: bool,
}

/// The largest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// The room reserved for a read into an empty buffer: a startup packet, a Query, an
/// extended-protocol batch or a short reply fit, so the common read is still one call.
pub const READ_FIRST: usize = 2 * 1024;

/// A read with less room than this grows the buffer first.
const READ_MIN_ROOM: usize = 1024;

/// How much a buffer holding part of a message grows by (at least).
const READ_CHUNK: usize = 16 * 1024;

/// A buffer grown past this for a large message is released once it is consumed.
const READ_KEEP: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_message_bytes: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            max: max_message_bytes.max(5),
            grown: false,
        }
    }

    /// Reads the next complete frame. `Ok(None)` is a clean end of stream between frames.
    /// Cancel safe.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if let Some(frame) = try_split_frame(&mut self.buf, self.max)? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::UnexpectedEof)
                };
            }
        }
    }

    /// Reads the untagged startup packet (`len: i32` then body); returns the body.
    /// Cancel safe.
    pub async fn read_startup(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            if self.buf.len() >= 4 {
                let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
                    return Err(ProtocolError::BadLength(len as i64));
                }
                let len = len as usize;
                if self.buf.len() >= len {
                    let mut packet = self.buf.split_to(len);
                    packet.advance(4);
                    return Ok(Some(packet.freeze()));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::UnexpectedEof)
                };
            }
        }
    }

    /// Reads more bytes from the stream into the buffer; 0 means end of stream.
    /// Cancel safe.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.grown && self.buf.is_empty() {
            // Nothing buffered, so nothing is lost; the next large message grows it again.
            self.buf = BytesMut::new();
            self.grown = false;
        }
        if self.buf.capacity() - self.buf.len() < READ_MIN_ROOM {
            let room = if self.buf.is_empty() {
                READ_FIRST
            } else {
                READ_CHUNK
            };
            self.buf.reserve(room);
            self.grown |= self.buf.capacity() > READ_KEEP;
        }
        self.inner.read_buf(&mut self.buf).await
    }

    /// The buffer's capacity (for tests of its growth and release).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// True when a complete frame is already buffered (the next `read_frame` will not
    /// wait). A malformed header also counts: reading it returns the error at once.
    pub fn has_frame(&self) -> bool {
        match frame_len(&self.buf, self.max) {
            Ok(Some(n)) => self.buf.len() >= n,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Takes the next complete frame if it is already buffered, without reading.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        try_split_frame(&mut self.buf, self.max)
    }

    /// The next buffered complete frame without consuming it.
    pub fn peek_frame(&self) -> Option<(u8, &[u8])> {
        match frame_len(&self.buf, self.max) {
            Ok(Some(n)) if self.buf.len() >= n => Some((self.buf[0], &self.buf[5..n])),
            _ => None,
        }
    }

    /// Bytes buffered but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}

/// A bounds-checked cursor over a message body.
pub struct BodyReader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8], message: &'static str) -> Self {
        BodyReader { buf, message }
    }

    fn err(&self, problem: &'static str) -> ProtocolError {
        ProtocolError::malformed(self.message, problem)
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string (UTF-8 checked).
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.err("invalid UTF-8 in a string"))
    }

    /// A NUL-terminated byte string, without its terminator.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// A count field (`i16`), rejecting negatives.
    pub fn count16(&mut self) -> Result<usize, ProtocolError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err("negative count"));
        }
        Ok(n as usize)
    }

    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Appends a frame header for `tag` and returns the position of the length word, to be
/// patched by [`finish_frame`] once the body is written.
pub fn begin_frame(out: &mut BytesMut, tag: u8) -> usize {
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    out.len() - 4
}

/// Patches the length word written by [`begin_frame`].
pub fn finish_frame(out: &mut BytesMut, len_at: usize) {
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.extend_from_slice(s);
    out.extend_from_slice(&[0]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn splits_frames_across_reads() {
        let data: &[u8] = &[b'Q', 0, 0, 0, 8, b's', b'e', b'l', 0, b'S', 0, 0, 0, 4];
        let mut r = FrameReader::new(data, 1024);
        let f = r.read_frame().await.expect("ok").expect("frame");
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"sel\0");
        let f = r.read_frame().await.expect("ok").expect("frame");
        assert_eq!(f.tag(), b'S');
        assert!(r.read_frame().await.expect("ok").is_none());
    }

    #[tokio::test]
    async fn rejects_bad_lengths() {
        let mut r = FrameReader::new(&[b'Q', 0, 0, 0, 3][..], 1024);
        assert!(matches!(
            r.read_frame().await,
            Err(ProtocolError::BadLength(3))
        ));
        let mut r = FrameReader::new(&[b'Q', 0x7f, 0, 0, 0][..], 1024);
        assert!(matches!(
            r.read_frame().await,
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut r = FrameReader::new(&[b'Q', 0, 0, 0, 8, 1][..], 1024);
        assert!(matches!(
            r.read_frame().await,
            Err(ProtocolError::UnexpectedEof)
        ));
    }

    fn query(sql_len: usize) -> Vec<u8> {
        let mut f = vec![b'Q'];
        f.extend_from_slice(&(sql_len as i32 + 5).to_be_bytes());
        f.extend(std::iter::repeat_n(b'x', sql_len));
        f.push(0);
        f
    }

    /// An idle connection holds a small buffer; one grown for a large message is given
    /// back once the message is consumed (issue 16: memory per idle client).
    #[tokio::test]
    async fn the_buffer_starts_small_and_gives_a_large_message_back() {
        use tokio::io::AsyncWriteExt;
        let (mut peer, stream) = tokio::io::duplex(1 << 20);
        let mut r = FrameReader::new(stream, 1 << 20);
        assert_eq!(r.capacity(), 0);
        peer.write_all(&query(8)).await.expect("write");
        assert_eq!(
            r.read_frame().await.expect("read").expect("a frame").len(),
            14
        );
        assert!(r.capacity() <= READ_FIRST, "{}", r.capacity());
        let big = query(200_000);
        peer.write_all(&big).await.expect("write");
        let f = r.read_frame().await.expect("read").expect("a frame");
        assert_eq!(f.raw()[..], big[..]);
        drop(f);
        peer.write_all(&query(8)).await.expect("write");
        assert_eq!(
            r.read_frame().await.expect("read").expect("a frame").len(),
            14
        );
        assert!(r.capacity() <= READ_FIRST, "{}", r.capacity());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = try_split_frame(&mut buf, 256) {
                prop_assert!(f.len() >= 5);
            }
        }
    }
}
