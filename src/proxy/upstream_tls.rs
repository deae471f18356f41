//! Backend connections, plain or TLS: [`Conn`] is what the idle pool keeps
//! and what both protocol halves write requests to, and [`connect`] opens
//! one (TCP, then the TLS handshake of a pool with `tls = true`, both
//! within `connect_timeout_ms`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::pool::Upstream;

/// One backend connection.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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
    Ok(Conn::Tls(Box::new(stream)))
}

impl Conn {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether an idle connection is still usable: nothing arrived on it
    /// (a backend that closed it, or sent a TLS alert, made it readable).
    /// Reads nothing, so a TLS stream is left intact.
    pub fn idle_and_open(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match self {
            // A plain connection's check costs no system call while the
            // socket is not readable (the reactor knows).
            Conn::Plain(s) => matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            Conn::Tls(s) => s.get_ref().0.poll_peek(&mut cx, &mut buf).is_pending(),
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
                let (r, w) = tokio::io::split(&mut **s);
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

read_via!(Conn, Plain, Tls);
write_via!(Conn, Plain, Tls);
read_via!(ReadHalf<'_>, Plain, Tls);
write_via!(WriteHalf<'_>, Plain, Tls);
