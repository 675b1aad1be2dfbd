//! A connection's first bytes: whether it opens with the HTTP/2 preface. Hyper's HTTP/1 header
//! read timeout only starts once hyper reads a request head, so `serve` bounds these waits with
//! the same timeout: a client that connects and sends nothing (or part of the preface) would
//! otherwise hold its connection for ever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext connection opens with the HTTP/2 preface, decided on peeked bytes (the
/// connection still reads them). A partial preface is peeked again for up to 10 s (h2c clients
/// send it in one write, so that wait is rare); then it counts as HTTP/1.1, whose parser
/// rejects it. The caller bounds the whole wait by `server.header_read_timeout`.
pub(super) async fn opens_with_h2_preface(stream: &tokio::net::TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    for _ in 0..1000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(false)
}

/// Reads the start of a TLS connection as far as hyper-util's `auto` connection reads it to
/// choose HTTP/1.1 or HTTP/2 (the whole preface, or up to the first byte that differs from it),
/// so the caller can bound that wait; `auto` then reads the same bytes again from the
/// [`Replay`] at once. `None` when the client closed without sending anything.
pub(super) async fn read_start<S: AsyncRead + Unpin>(
    mut stream: S,
) -> io::Result<Option<Replay<S>>> {
    let mut start = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < start.len() {
        let mut buf = ReadBuf::new(&mut start[filled..]);
        std::future::poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut buf)).await?;
        let n = buf.filled().len();
        if n == 0 {
            break;
        }
        let from = filled;
        filled += n;
        if start[from..filled] != H2_PREFACE[from..filled] {
            break;
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    Ok(Some(Replay {
        start,
        pos: 0,
        end: filled,
        inner: stream,
    }))
}

/// A stream that yields the bytes [`read_start`] took from it before reading on.
pub(super) struct Replay<S> {
    start: [u8; H2_PREFACE.len()],
    pos: usize,
    end: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.end {
            let n = (this.end - this.pos).min(buf.remaining());
            buf.put_slice(&this.start[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads everything `stream` yields until EOF.
    async fn read_all<S: AsyncRead + Unpin>(mut stream: S) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut chunk = [0u8; 7];
            let mut buf = ReadBuf::new(&mut chunk);
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut buf))
                .await
                .unwrap();
            if buf.filled().is_empty() {
                return out;
            }
            out.extend_from_slice(buf.filled());
        }
    }

    #[tokio::test]
    async fn the_bytes_read_to_tell_the_protocol_are_read_again() {
        for sent in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            H2_PREFACE,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04",
            b"PRI * HTTP/1.1\r\n\r\n",
            b"PRI",
        ] {
            let replay = read_start(sent).await.unwrap().expect("bytes were sent");
            assert!(replay.end <= H2_PREFACE.len());
            assert_eq!(read_all(replay).await, sent);
        }
        assert!(read_start(&b""[..]).await.is_ok_and(|r| r.is_none()));
    }
}
