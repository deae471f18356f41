//! Response framing (RFC 9112 section 6.3): where a backend's response ends,
//! and the head the client gets.

use http::HeaderValue;

use super::headers::{connection_level, digits, tokens};

/// Why a backend's response cannot be relayed (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head")]
    Head,
    #[error("response head too large")]
    TooLarge,
    #[error("invalid or repeated Content-Length")]
    Length,
    #[error("101 Switching Protocols to a request that did not ask to upgrade, or without Upgrade")]
    Upgrade,
    #[error("malformed chunked body")]
    Chunked,
    #[error("a transfer coding other than a single chunked")]
    Coding,
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    Interim,
}

/// Interim (1xx) responses relayed before a final one; a backend sending
/// more gets a 502 (each would otherwise restart the wait for the head).
pub const MAX_INTERIM: usize = 16;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    /// Chunked; relayed as it is, with its framing.
    Chunked,
    /// Until the backend closes (re-chunked for an HTTP/1.1 client).
    Close,
    /// `101 Switching Protocols` to an upgrade the request asked for: the
    /// connection becomes a tunnel.
    Upgrade,
}

/// A parsed final (or interim) response head.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Body,
    /// The backend connection can carry another request afterwards.
    pub reusable: bool,
    /// The backend sent a `Date`.
    pub date: bool,
    /// Bytes of the head.
    pub len: usize,
}

/// Response header lines accepted from a backend.
pub const MAX_HEADERS: usize = 100;

/// Parses the response head at the front of `buf`; `None` while partial.
/// Hands the status line's reason and every end-to-end header to `emit`:
/// hop-by-hop and framing headers (`Connection` and what it names,
/// `Keep-Alive`, `Transfer-Encoding`, a `Content-Length` beside chunked) and
/// any header named in `replaced` are left out. A `101` is taken only when
/// `upgrade` (the request asked for one); its `Upgrade` header is kept, and
/// the writer adds `connection: upgrade`.
pub fn parse(
    buf: &[u8],
    head_request: bool,
    upgrade: bool,
    replaced: &[(&'static str, &HeaderValue)],
    mut emit: impl FnMut(Line<'_>),
) -> Result<Option<Response>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Head),
    };
    let status = resp.code.ok_or(BadResponse::Head)?;
    // RFC 9110 section 15: status codes are 100 to 599.
    if !(100..=599).contains(&status) {
        return Err(BadResponse::Head);
    }
    let switching = status == 101;
    if switching && !(upgrade && resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"))) {
        return Err(BadResponse::Upgrade);
    }
    let http11 = resp.version == Some(1);
    let mut length = None;
    let mut chunked = None;
    let mut close = !http11;
    let mut date = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = digits(h.value).ok_or(BadResponse::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Length);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` is relayed (other transfer codings are unused
            // in practice, and would need decoding for HTTP/2 clients).
            let mut codings = tokens(h.value);
            let only_chunked = codings.next().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            if !only_chunked || codings.next().is_some() || chunked.is_some() {
                return Err(BadResponse::Coding);
            }
            chunked = Some(());
        } else if h.name.eq_ignore_ascii_case("date") {
            date = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }
    let body = if switching {
        Body::Upgrade
    } else if head_request || status < 200 || status == 204 || status == 304 {
        Body::Empty
    } else {
        match (chunked, length) {
            (Some(()), _) => Body::Chunked,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::Close,
        }
    };
    emit(Line::Status(status, resp.reason.unwrap_or("")));
    for h in resp.headers.iter() {
        let name = h.name;
        let kept_upgrade = switching && name.eq_ignore_ascii_case("upgrade");
        let dropped = (connection_level(name) && !kept_upgrade)
            || (chunked.is_some() && name.eq_ignore_ascii_case("content-length"))
            || replaced.iter().any(|(n, _)| name.eq_ignore_ascii_case(n))
            || (!name.eq_ignore_ascii_case("content-length")
                && !kept_upgrade
                && listed_in_connection(resp.headers, name));
        if !dropped {
            emit(Line::Header(name, h.value));
        }
    }
    // Both Content-Length and Transfer-Encoding: the chunked framing wins
    // and the length is dropped (RFC 9112 section 6.3), but the message may
    // be a smuggling attempt: the connection is not used again.
    let smuggled = chunked.is_some() && length.is_some();
    Ok(Some(Response {
        status,
        body,
        reusable: !close && !smuggled && !matches!(body, Body::Close | Body::Upgrade),
        date,
        len,
    }))
}

/// One piece of a response head, as [`parse`] hands it out.
#[derive(Debug)]
pub enum Line<'a> {
    /// The status code and reason phrase.
    Status(u16, &'a str),
    Header(&'a str, &'a [u8]),
}

/// Writes one piece of an HTTP/1.1 response head.
pub fn write_line(out: &mut Vec<u8>, line: Line<'_>) {
    match line {
        Line::Status(status, reason) => {
            // httparse reads exactly three digits.
            let digits = [
                b'0' + (status / 100 % 10) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ];
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(&digits);
            out.push(b' ');
            out.extend_from_slice(reason.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Line::Header(name, value) => header_line(out, name.as_bytes(), value),
    }
}

fn listed_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// The last chunk of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` as one chunk; nothing when it is empty (the last chunk
/// is [`LAST_CHUNK`]).
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// `name: value CRLF`.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The current `Date` value (RFC 9110 section 6.6.1: a forwarded response
/// without one gets one), formatted once a second per thread.
pub fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    DATE.with(|d| f(d.borrow_mut().now().as_bytes()))
}

/// [`with_date`] as a header value (shared, no copy per response).
pub fn date() -> HeaderValue {
    DATE.with(|d| d.borrow_mut().now().clone())
}

thread_local! {
    static DATE: std::cell::RefCell<Date> = const {
        std::cell::RefCell::new(Date { second: 0, value: HeaderValue::from_static("") })
    };
}

/// The `Date` value, formatted once a second per thread.
struct Date {
    second: u64,
    value: HeaderValue,
}

impl Date {
    fn now(&mut self) -> &HeaderValue {
        let now = std::time::SystemTime::now();
        let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.value.is_empty() {
            self.second = second;
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                self.value = v;
            }
        }
        &self.value
    }
}

/// Finds the end of a chunked body as its bytes pass through, without
/// copying them: chunk sizes, extensions and trailers are checked, and the
/// chunk data is handed out (an HTTP/2 client gets it unchunked).
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    /// The trailer section's lines, when kept ([`Chunked::keeping_trailers`]).
    trailers: Option<Vec<u8>>,
    /// Digits of the size line so far, or bytes of the current line.
    count: usize,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// A chunk extension, up to CR LF.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line (or the final CR LF).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest size line, extension or trailer line accepted.
const MAX_LINE: usize = 4096;

impl Chunked {
    /// A scanner that keeps the trailer section (for an HTTP/2 client).
    pub fn keeping_trailers() -> Self {
        Chunked {
            trailers: Some(Vec::new()),
            ..Chunked::default()
        }
    }

    /// The trailer fields, once the body ended; none when not kept or empty.
    pub fn trailers(&self) -> Option<http::HeaderMap> {
        let raw = self.trailers.as_deref().filter(|t| !t.is_empty())?;
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut with_end = raw.to_vec();
        with_end.extend_from_slice(b"\r\n");
        let httparse::Status::Complete((_, fields)) = httparse::parse_headers(&with_end, &mut storage).ok()? else {
            return None;
        };
        let mut map = http::HeaderMap::new();
        for f in fields {
            // Framing and connection fields are not allowed in trailers.
            if connection_level(f.name) || f.name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(f.name.as_bytes()),
                HeaderValue::from_bytes(f.value),
            ) {
                map.append(n, v);
            }
        }
        (!map.is_empty()).then_some(map)
    }

    /// Scans `buf`, handing each run of chunk data to `data`.
    /// `Ok(Some(n))`: the body ends after `buf[..n]`.
    pub fn feed(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<Option<usize>, BadResponse> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.count += 1;
                        if self.count > 15 {
                            return Err(BadResponse::Chunked);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.count > 0 => self.state = State::Extension,
                    b'\r' if self.count > 0 => self.state = State::SizeLf,
                    _ => return Err(BadResponse::Chunked),
                },
                State::Extension => self.line(b, State::SizeLf)?,
                State::SizeLf => {
                    expect(b, b'\n')?;
                    self.count = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(&buf[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    expect(b, b'\r')?;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    expect(b, b'\n')?;
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    self.count = 0;
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(BadResponse::Chunked),
                        _ => {
                            self.keep(b);
                            State::Trailer
                        }
                    };
                }
                State::Trailer => {
                    self.line(b, State::TrailerLf)?;
                    self.keep(b);
                }
                State::TrailerLf => {
                    expect(b, b'\n')?;
                    self.keep(b);
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    expect(b, b'\n')?;
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }

    /// Keeps a byte of the trailer section, up to 64 KiB in all.
    fn keep(&mut self, b: u8) {
        if let Some(t) = &mut self.trailers {
            if t.len() < 64 * 1024 {
                t.push(b);
            }
        }
    }

    /// One byte of an extension or trailer line: at most `MAX_LINE` of
    /// them, no bare LF, and CR moves on to `lf`.
    fn line(&mut self, b: u8, lf: State) -> Result<(), BadResponse> {
        self.count += 1;
        if self.count > MAX_LINE || b == b'\n' {
            return Err(BadResponse::Chunked);
        }
        if b == b'\r' {
            self.state = lf;
        }
        Ok(())
    }
}

/// The byte a chunked body must have here.
fn expect(b: u8, want: u8) -> Result<(), BadResponse> {
    if b == want {
        Ok(())
    } else {
        Err(BadResponse::Chunked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> (Result<Option<Response>, BadResponse>, String) {
        let mut out = Vec::new();
        let v = HeaderValue::from_static("r=1");
        let r = parse(raw, head_request, false, &[("ratelimit", &v)], |l| {
            write_line(&mut out, l)
        });
        (r, String::from_utf8(out).expect("ascii"))
    }

    #[test]
    fn bodies_are_delimited_as_rfc_9112_says() {
        let body = |raw: &[u8], head_request| head(raw, head_request).0.expect("valid").expect("complete").body;
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Body::Length(5)
        );
        assert_eq!(body(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true), Body::Empty);
        assert_eq!(body(b"HTTP/1.1 204 No Content\r\n\r\n", false), Body::Empty);
        assert_eq!(
            body(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false),
            Body::Empty
        );
        assert_eq!(
            body(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Body::Chunked
        );
        assert_eq!(body(b"HTTP/1.1 200 OK\r\n\r\n", false), Body::Close);
        let (both, _) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(
            !both.expect("valid").expect("complete").reusable,
            "a response with both lengths may be a smuggling attempt: its connection goes"
        );
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 5", false)
            .0
            .expect("valid")
            .is_none());
    }

    #[test]
    fn bad_responses_are_refused() {
        for (raw, err) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
                BadResponse::Length,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", BadResponse::Length),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", BadResponse::Upgrade),
            (b"HTTP/1.1 2000 OK\r\n\r\n", BadResponse::Head),
            (b"garbage\r\n\r\n", BadResponse::Head),
            (b"HTTP/1.1 000 Zero\r\n\r\n", BadResponse::Head),
            (b"HTTP/1.1 600 Beyond\r\n\r\n", BadResponse::Head),
            (b"HTTP/1.1 999 Beyond\r\n\r\n", BadResponse::Head),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                BadResponse::Coding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                BadResponse::Coding,
            ),
        ] {
            assert_eq!(head(raw, false).0.err(), Some(err), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_101_is_taken_only_for_an_upgrade_the_request_asked_for() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
        let mut out = Vec::new();
        let r = parse(raw, false, true, &[], |l| write_line(&mut out, l))
            .expect("valid")
            .expect("complete");
        assert_eq!(r.body, Body::Upgrade);
        assert!(!r.reusable);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n"
        );
        let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(
            parse(no_upgrade, false, true, &[], |_| ()).err(),
            Some(BadResponse::Upgrade)
        );
    }

    #[test]
    fn the_client_head_drops_hop_by_hop_framing_and_replaced_headers() {
        let (r, out) = head(
            b"HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nRateLimit: spoof\r\n\
Transfer-Encoding: chunked\r\nContent-Length: 3\r\nServer: b\r\n\r\n",
            false,
        );
        let r = r.expect("valid").expect("complete");
        assert!(!r.reusable, "the backend asked to close");
        assert_eq!(
            out, "HTTP/1.1 200 OK\r\nServer: b\r\n",
            "framing is the writer's to add"
        );
        assert!(!r.date);
        let (r, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(
            !r.expect("valid").expect("complete").reusable,
            "HTTP/1.0 closes by default"
        );
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        let mut data = Vec::new();
        assert_eq!(
            Chunked::default().feed(body, |d| data.extend_from_slice(d)),
            Ok(Some(end))
        );
        assert_eq!(data, b"hello0123456789abcdef");
        // The same, a byte at a time.
        let mut c = Chunked::default();
        let mut found = None;
        data.clear();
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c
                .feed(std::slice::from_ref(b), |d| data.extend_from_slice(d))
                .expect("valid")
            {
                found = Some(i + n);
                break;
            }
        }
        assert_eq!(found, Some(end));
        assert_eq!(data, b"hello0123456789abcdef");
        let mut kept = Chunked::keeping_trailers();
        assert_eq!(kept.feed(body, |_| ()), Ok(Some(end)));
        let trailers = kept.trailers().expect("trailers");
        assert_eq!(trailers.get("x-t").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert!(Chunked::default().trailers().is_none());
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\nbad\n",
            b"0\r\n\n",
            b"5;a=1\nhello\r\n",
            b"5\nhello\r\n",
        ] {
            assert_eq!(
                Chunked::default().feed(bad, |_| ()),
                Err(BadResponse::Chunked),
                "{bad:?}"
            );
        }
    }
}
