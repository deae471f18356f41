//! Backend connections, plain or TLS: [`Conn`] is what the idle pool keeps
//! and what both protocol halves write requests to, and [`connect`] opens
//! one (TCP, then the TLS handshake of a pool with `tls = true`, both
//! within `connect_timeout_ms`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::pool::Upstream;

/// One backend connection.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// A TLS connection, and a read error held back until the bytes read
/// before it were taken.
#[derive(Debug)]
pub struct Tls {
    stream: TlsStream<TcpStream>,
    error: Option<io::Error>,
}

/// Why a backend connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Tcp(#[source] io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

/// Opens a connection to `up`: TCP, then TLS when the upstream has it
/// (ALPN `h2` when `h2`, else `http/1.1`), all within `timeout`.
pub async fn connect(up: &Upstream, timeout: Duration, h2: bool) -> Result<Conn, ConnectError> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(up.addr))
        .await
        .map_err(|_| ConnectError::Tcp(timed_out()))?
        .map_err(ConnectError::Tcp)?;
    tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let Some(tls) = &up.tls else {
        return Ok(Conn::Plain(tcp));
    };
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(up.addr.ip().into()));
    let config = if h2 { tls.http2.clone() } else { tls.http1.clone() };
    let stream = tokio::time::timeout_at(deadline, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Handshake(timed_out()))?
        .map_err(ConnectError::Handshake)?;
    Ok(Conn::Tls(Box::new(Tls { stream, error: None })))
}

impl Conn {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.stream.get_ref().0,
        }
    }

    /// Whether an idle connection is still usable: nothing arrived on it
    /// (a backend that closed it, or sent a TLS alert, made it readable).
    /// Reads nothing, so a TLS stream is left intact.
    pub fn idle_and_open(&self) -> bool {
        match self {
            // A plain connection's check costs no system call while the
            // socket is not readable (the reactor knows).
            Conn::Plain(s) => matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            // Likewise a TLS one: the peek runs only when the reactor saw
            // the socket readable since its last read came up short, and no
            // waker is registered.
            Conn::Tls(s) if s.error.is_some() => false,
            Conn::Tls(s) => {
                let tcp = s.stream.get_ref().0;
                let mut byte = [std::mem::MaybeUninit::uninit(); 1];
                let peek = tcp.try_io(Interest::READABLE, || socket2::SockRef::from(tcp).peek(&mut byte));
                matches!(peek, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Borrowed read and write halves, for a full-duplex exchange.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(&mut s.stream);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

type TlsRef<'a> = &'a mut TlsStream<TcpStream>;

/// The reading half of a [`Conn`].
pub enum ReadHalf<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<TlsRef<'a>>),
}

/// The writing half of a [`Conn`].
pub enum WriteHalf<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<TlsRef<'a>>),
}

macro_rules! read_via {
    ($t:ty, $($v:ident),+) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! write_via {
    ($t:ty, $($v:ident),+) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    $(Self::$v(s) => s.is_write_vectored(),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => poll_read_tls(s, cx, buf),
        }
    }
}

/// Reads what the TLS stream has decrypted, then more records while the
/// socket may hold some: the reactor saw it readable since a read last
/// came up short. The stream's own `poll_read` tries the socket again
/// whenever `buf` has room, which after a whole small response only
/// registers the task for readiness and finds nothing; the check here
/// costs no system call and registers nothing, and a large body still
/// fills `buf` with every record that has arrived.
fn poll_read_tls(tls: &mut Tls, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
    if let Some(e) = tls.error.take() {
        return Poll::Ready(Err(e));
    }
    let s = &mut tls.stream;
    let mut first = true;
    while buf.remaining() > 0 {
        if !first {
            let (tcp, session) = s.get_ref();
            let decrypted = !session.wants_read();
            if !decrypted && tcp.try_io(Interest::READABLE, || Ok(())).is_err() {
                break;
            }
        }
        let data = match Pin::new(&mut *s).poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => data,
            Poll::Ready(Err(e)) if first => return Poll::Ready(Err(e)),
            // The bytes already in `buf` go first.
            Poll::Ready(Err(e)) => {
                tls.error = Some(e);
                break;
            }
            Poll::Pending if first => return Poll::Pending,
            Poll::Pending => break,
        };
        if data.is_empty() {
            break;
        }
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        Pin::new(&mut *s).consume(n);
        first = false;
    }
    Poll::Ready(Ok(()))
}

write_via!(Conn, Plain, Tls);

impl AsyncWrite for Tls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
read_via!(ReadHalf<'_>, Plain, Tls);
write_via!(WriteHalf<'_>, Plain, Tls);
