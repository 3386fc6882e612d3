//! Minimal HTTP/1.x, pure: a request-head parser and response writer for the tiny metrics
//! server, and a GET client (request builder, response-head parser, streaming chunked-body
//! decoder, `http://` URL parser) for fetching plain-HTTP IP lists.
//!
//! Everything here reads hostile input: every parser has a size limit, never panics, and
//! answers `NeedMore` for any proper prefix of a valid message.

use std::fmt;

/// Largest request or response head (request/status line plus headers plus the blank line).
pub const MAX_HEAD: usize = 8 * 1024;

/// Longest accepted method token.
const MAX_METHOD: usize = 16;

// ---------------------------------------------------------------------------------------------
// Shared head scanning
// ---------------------------------------------------------------------------------------------

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value bytes: VCHAR, SP, HTAB, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Where the head ends (index just past the blank line), or `None` if it has not ended yet.
/// Lines end in CRLF or a bare LF (RFC 9112 2.2).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() && line_start > 0 {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// Splits a complete head (up to `end`) into lines without their terminators; the final blank
/// line is not returned.
fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// One header line: `name ":" OWS value OWS`. `None` if malformed (including obs-fold and
/// stray CR).
fn parse_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, rest) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    if !rest.iter().all(|&b| is_field_byte(b)) {
        return None;
    }
    Some((name, rest.trim_ascii()))
}

fn version_ok(v: &[u8]) -> bool {
    v == b"HTTP/1.1" || v == b"HTTP/1.0"
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// Result of [`parse_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestParse<'a> {
    /// The head is not complete yet: read more (the buffer is under [`MAX_HEAD`]).
    NeedMore,
    /// A complete, well-formed head. `consumed` is its length including the blank line; any
    /// body is left to the caller (the metrics server answers and closes).
    Request {
        consumed: usize,
        /// The method token, e.g. `GET` (case-sensitive, as sent).
        method: &'a str,
        /// The origin-form target without `?query` (and without `#fragment`), not
        /// percent-decoded; always starts with `/`.
        path: &'a str,
    },
    /// Malformed, or no complete head within [`MAX_HEAD`] bytes: answer 400 (or just close).
    Invalid,
}

/// Parses an HTTP/1.0 or 1.1 request head from the start of `buf`. Headers are checked for
/// syntax and skipped.
pub fn parse_request(buf: &[u8]) -> RequestParse<'_> {
    let Some(end) = head_end(buf) else {
        return if buf.len() >= MAX_HEAD || !request_prefix_plausible(buf) {
            RequestParse::Invalid
        } else {
            RequestParse::NeedMore
        };
    };
    if end > MAX_HEAD {
        return RequestParse::Invalid;
    }
    let mut lines = head_lines(&buf[..end]);
    // A request line must be the first line (no leading empty lines: `head_end` would have
    // stopped there, and `head_lines` drops them, so check position explicitly).
    if buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
        return RequestParse::Invalid;
    }
    let Some(first) = lines.next() else {
        return RequestParse::Invalid;
    };
    let mut parts = first.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return RequestParse::Invalid;
    };
    if method.is_empty() || method.len() > MAX_METHOD || !method.iter().all(|&b| is_tchar(b)) {
        return RequestParse::Invalid;
    }
    if target.first() != Some(&b'/') || !target.iter().all(|&b| (0x21..=0x7E).contains(&b)) {
        return RequestParse::Invalid;
    }
    if !version_ok(version) {
        return RequestParse::Invalid;
    }
    for line in lines {
        if parse_header(line).is_none() {
            return RequestParse::Invalid;
        }
    }
    let path_end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    // Both slices are ASCII (checked above), so these conversions cannot fail.
    match (
        std::str::from_utf8(method),
        std::str::from_utf8(&target[..path_end]),
    ) {
        (Ok(method), Ok(path)) => RequestParse::Request {
            consumed: end,
            method,
            path,
        },
        _ => RequestParse::Invalid,
    }
}

/// Early rejection of a partial head whose request line is already impossible (so garbage is
/// answered at once rather than after 8 KiB or a timeout). Never rejects a prefix of a valid
/// request.
fn request_prefix_plausible(buf: &[u8]) -> bool {
    let first_line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..first_line_end];
    let method_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let method = &line[..method_end];
    if method.len() > MAX_METHOD || !method.iter().all(|&b| is_tchar(b)) {
        return false;
    }
    if method_end < line.len() {
        // A target has begun: it must start with '/'.
        match line.get(method_end + 1) {
            Some(&b) if b != b'/' => return false,
            _ => {}
        }
    }
    !buf.contains(&0)
}

/// The standard reason phrase for the statuses a small server sends (empty for others, which
/// HTTP allows).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Appends a response head: status line, `Content-Type`, `Content-Length`, `Connection:
/// close`. Use alone for `HEAD` requests. `status` outside 100..=999 is written as 500; CR, LF
/// and other control bytes in `content_type` are dropped (no header injection).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
) {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend(
        content_type
            .bytes()
            .filter(|&b| is_field_byte(b) && b != b'\t'),
    );
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(content_length.to_string().as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
}

/// Appends a whole response: [`write_response_head`] then `body`.
pub fn write_response(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8]) {
    write_response_head(out, status, content_type, body.len());
    out.extend_from_slice(body);
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// The `Host` header value for `host` and `port`: IPv6 literals in brackets, `:port` unless 80.
pub fn host_header(host: &str, port: u16) -> String {
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == 80 { h } else { format!("{h}:{port}") }
}

/// A `GET` request for `path` (origin-form, e.g. from [`parse_http_url`]) with `Host: host`
/// (see [`host_header`]), `Connection: close`, `Accept: */*` and a `User-Agent`. Bytes that
/// may not appear in a request line are percent-encoded in `path`; control bytes and spaces
/// are dropped from `host`.
pub fn build_get(host: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + host.len() + path.len() * 3);
    out.extend_from_slice(b"GET ");
    if !path.starts_with('/') {
        out.push(b'/');
    }
    for b in path.bytes() {
        if (0x21..=0x7E).contains(&b) && b != b'#' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend(host.bytes().filter(|&b| (0x21..=0x7E).contains(&b)));
    out.extend_from_slice(
        b"\r\nUser-Agent: mtpx\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
    );
    out
}

/// Result of [`parse_response_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseParse<'a> {
    /// The head is not complete yet (and under [`MAX_HEAD`]).
    NeedMore,
    /// A complete head. The body starts at `consumed`. Framing: `chunked` → feed the body to
    /// a [`ChunkedDecoder`]; else `content_length` → exactly that many bytes; else the body
    /// runs to connection close. (Responses to HEAD and statuses 1xx, 204, 304 have no body.)
    Head {
        consumed: usize,
        status: u16,
        /// `None` when absent or overridden by `Transfer-Encoding`.
        content_length: Option<usize>,
        /// The final transfer coding is `chunked`.
        chunked: bool,
        /// The `Location` header (for following 3xx redirects), if any.
        location: Option<&'a str>,
    },
    /// Malformed, conflicting `Content-Length`s, or no complete head within [`MAX_HEAD`].
    Invalid,
}

/// Parses an HTTP/1.0 or 1.1 response head from the start of `buf`.
pub fn parse_response_head(buf: &[u8]) -> ResponseParse<'_> {
    let Some(end) = head_end(buf) else {
        let plausible = buf.iter().zip(b"HTTP/1.").all(|(a, b)| a == b);
        return if buf.len() >= MAX_HEAD || !plausible {
            ResponseParse::Invalid
        } else {
            ResponseParse::NeedMore
        };
    };
    if end > MAX_HEAD {
        return ResponseParse::Invalid;
    }
    // The status line must be the first line: `head_end` steps over one leading empty line and
    // `head_lines` drops it, but a prefix of such a response ("\r\n") is already refused
    // above, so accepting it whole would make the verdict depend on how the bytes arrive.
    if buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
        return ResponseParse::Invalid;
    }
    let mut lines = head_lines(&buf[..end]);
    let Some(first) = lines.next() else {
        return ResponseParse::Invalid;
    };
    // "HTTP/1.x SP 3DIGIT [SP reason]"
    if first.len() < 12 || !version_ok(&first[..8]) || first[8] != b' ' {
        return ResponseParse::Invalid;
    }
    let code = &first[9..12];
    if !code.iter().all(u8::is_ascii_digit) || (first.len() > 12 && first[12] != b' ') {
        return ResponseParse::Invalid;
    }
    if !first[12..].iter().all(|&b| is_field_byte(b)) {
        return ResponseParse::Invalid;
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return ResponseParse::Invalid;
    }
    let mut content_length: Option<usize> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut location = None;
    for line in lines {
        let Some((name, value)) = parse_header(line) else {
            return ResponseParse::Invalid;
        };
        if name.eq_ignore_ascii_case(b"content-length") {
            // A list of identical values is allowed (RFC 9110 8.6); anything else is not.
            for item in value.split(|&b| b == b',') {
                let Some(n) = parse_decimal(item.trim_ascii()) else {
                    return ResponseParse::Invalid;
                };
                match content_length {
                    Some(prev) if prev != n => return ResponseParse::Invalid,
                    _ => content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Only the final coding decides whether the body is chunked.
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"location") {
            location = std::str::from_utf8(value).ok();
        }
    }
    if transfer_encoding {
        content_length = None;
    }
    ResponseParse::Head {
        consumed: end,
        status,
        content_length,
        chunked,
        location,
    }
}

/// 1..=19 decimal digits, no sign, no overflow.
fn parse_decimal(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &d| {
        acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Why a body could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Malformed chunk framing.
    Invalid,
    /// The body exceeds the cap given to [`ChunkedDecoder::new`].
    TooLarge,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::Invalid => "malformed chunked body",
            BodyError::TooLarge => "body too large",
        })
    }
}

impl std::error::Error for BodyError {}

/// Progress of one [`ChunkedDecoder::feed`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes used. Less than the input only once `done` (the rest follows the body).
    pub consumed: usize,
    /// The last chunk and the trailer section have been read.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the chunk size (`digits` seen so far).
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// Inside chunk extensions, up to CR.
    Ext,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Chunk data bytes left.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting LF after a trailer line's CR.
    TrailerLf,
    /// Expecting LF after the final empty line's CR.
    EndLf,
    Done,
    /// After an error: every later call fails.
    Failed,
}

/// Streaming decoder for `Transfer-Encoding: chunked` (RFC 9112 7.1). Feed it the bytes after
/// the head, in as many pieces as they arrive; it appends the body to `out`. Chunk extensions
/// and trailer fields are skipped (each line at most 4 KiB).
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    total: usize,
    cap: usize,
    line_len: usize,
}

const MAX_CHUNK_LINE: usize = 4096;

impl ChunkedDecoder {
    /// A decoder that fails with [`BodyError::TooLarge`] once the body exceeds `cap` bytes.
    pub fn new(cap: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            remaining: 0,
            total: 0,
            cap,
            line_len: 0,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Body bytes produced so far.
    pub fn body_len(&self) -> usize {
        self.total
    }

    /// Decodes as much of `input` as possible, appending body bytes to `out`. After an error
    /// the decoder stays failed (every later call returns [`BodyError::Invalid`]).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, BodyError> {
        if self.state == ChunkState::Failed {
            return Err(BodyError::Invalid);
        }
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Done => break,
                ChunkState::Failed => return Err(BodyError::Invalid),
                ChunkState::Data => {
                    let avail = input.len() - i;
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(avail);
                    if self.total.saturating_add(take) > self.cap {
                        return self.fail(BodyError::TooLarge);
                    }
                    out.extend_from_slice(&input[i..i + take]);
                    self.total += take;
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size { digits } => {
                    if let Some(v) = hex_val(b) {
                        if digits >= 15 {
                            return self.fail(BodyError::Invalid);
                        }
                        self.remaining = (self.remaining << 4) | u64::from(v);
                        self.state = ChunkState::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return self.fail(BodyError::Invalid);
                    } else {
                        match b {
                            b' ' | b'\t' => self.state = ChunkState::SizeWs,
                            b';' => {
                                self.line_len = 0;
                                self.state = ChunkState::Ext;
                            }
                            b'\r' => self.state = ChunkState::SizeLf,
                            _ => return self.fail(BodyError::Invalid),
                        }
                        if self.remaining > self.cap.saturating_sub(self.total) as u64 {
                            return self.fail(BodyError::TooLarge);
                        }
                    }
                }
                ChunkState::SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => {
                        self.line_len = 0;
                        self.state = ChunkState::Ext;
                    }
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return self.fail(BodyError::Invalid),
                },
                ChunkState::Ext => {
                    self.line_len += 1;
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' || b == 0 || self.line_len > MAX_CHUNK_LINE {
                        return self.fail(BodyError::Invalid);
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return self.fail(BodyError::Invalid);
                    }
                    self.state = if self.remaining == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return self.fail(BodyError::Invalid);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return self.fail(BodyError::Invalid);
                    }
                    self.state = ChunkState::Size { digits: 0 };
                }
                ChunkState::TrailerStart => {
                    if b == b'\r' {
                        self.state = ChunkState::EndLf;
                    } else if is_tchar(b) {
                        self.line_len = 1;
                        self.state = ChunkState::Trailer;
                    } else {
                        return self.fail(BodyError::Invalid);
                    }
                }
                ChunkState::Trailer => {
                    self.line_len += 1;
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if !is_field_byte(b) || self.line_len > MAX_CHUNK_LINE {
                        return self.fail(BodyError::Invalid);
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return self.fail(BodyError::Invalid);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return self.fail(BodyError::Invalid);
                    }
                    self.state = ChunkState::Done;
                    i += 1;
                    break;
                }
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            done: self.state == ChunkState::Done,
        })
    }

    fn fail(&mut self, e: BodyError) -> Result<Progress, BodyError> {
        self.state = ChunkState::Failed;
        Err(e)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an `http://host[:port][/path][?query]` URL into `(host, port, path)`: host without
/// IPv6 brackets, port 80 by default, path with its query (default `/`), fragment dropped.
/// `https://` is refused with a message saying so (lists are not fetched over unchecked TLS); so are user info,
/// other schemes, and bytes that cannot appear in a URL.
#[inline(never)]
pub fn parse_http_url(s: &str) -> Result<(String, u16, String), String> {
    let s = s.trim();
    let lower_scheme = s.get(..8).map(str::to_ascii_lowercase);
    if lower_scheme.as_deref() == Some("https://") {
        return Err(format!(
            "{s}: https URLs are not fetched (mtpx checks no certificates); use an http:// URL or a local file"
        ));
    }
    let rest = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("http://") => &s[7..],
        _ => return Err(format!("{s}: not an http:// URL")),
    };
    split_url(s, rest, 80)
}

/// Splits an `http://` or `https://` URL into `(https, host, port, path)` as
/// [`parse_http_url`] does (port 443 by default for `https://`). For sources whose content is
/// checked before use (Telegram's proxy config), where unchecked TLS still hides the request.
pub fn parse_web_url(s: &str) -> Result<(bool, String, u16, String), String> {
    let s = s.trim();
    match s.get(..8) {
        Some(p) if p.eq_ignore_ascii_case("https://") => {
            split_url(s, &s[8..], 443).map(|(h, port, path)| (true, h, port, path))
        }
        _ => parse_http_url(s).map(|(h, port, path)| (false, h, port, path)),
    }
}

/// The part of a URL after `scheme://`: authority and path (see [`parse_http_url`]).
fn split_url(s: &str, rest: &str, default_port: u16) -> Result<(String, u16, String), String> {
    if !rest.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return Err(format!(
            "{s}: URL contains spaces, control or non-ASCII bytes"
        ));
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err(format!("{s}: user info in URLs is not supported"));
    }
    let (host, port_str) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(close) = v6.find(']') else {
            return Err(format!("{s}: unterminated IPv6 literal"));
        };
        let host = &v6[..close];
        let after = &v6[close + 1..];
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("{s}: invalid IPv6 literal"));
        }
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{s}: junk after IPv6 literal")),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s}: missing host"));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!("{s}: invalid host name"));
    }
    let port = match port_str {
        None | Some("") => default_port,
        Some(p) => match parse_decimal(p.as_bytes()) {
            Some(n) if (1..=65535).contains(&n) => n as u16,
            _ => return Err(format!("{s}: invalid port")),
        },
    };
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.is_empty() {
        "/".to_string()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_string()
    };
    Ok((host.to_string(), port, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::XorShift64;

    fn req(buf: &[u8]) -> RequestParse<'_> {
        parse_request(buf)
    }

    #[test]
    fn accepts_simple_requests() {
        let r = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nBODY";
        assert_eq!(
            req(r),
            RequestParse::Request {
                consumed: r.len() - 4,
                method: "GET",
                path: "/metrics"
            }
        );
        let r = b"HEAD / HTTP/1.0\r\n\r\n";
        assert_eq!(
            req(r),
            RequestParse::Request {
                consumed: r.len(),
                method: "HEAD",
                path: "/"
            }
        );
        // Bare LF line endings, empty header value, OWS, obs-text in a value.
        let r = b"GET /a#frag HTTP/1.1\nX-Empty:\nX-Y: \t v\xff \n\n";
        assert_eq!(
            req(r),
            RequestParse::Request {
                consumed: r.len(),
                method: "GET",
                path: "/a"
            }
        );
    }

    #[test]
    fn rejects_bad_requests() {
        for bad in [
            &b"GET  / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\n: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"AVERYVERYLONGMETHODNAME / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"GET x",
        ] {
            assert_eq!(
                req(bad),
                RequestParse::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Over the head limit without an end.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(req(&big), RequestParse::Invalid);
        assert_eq!(req(&big[..MAX_HEAD - 1]), RequestParse::NeedMore);
        // Complete but longer than the limit.
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req(&big), RequestParse::Invalid);
    }

    #[test]
    fn request_truncation_sweep() {
        let r = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nUser-Agent: curl/8\r\n\r\n";
        for n in 0..r.len() {
            assert_eq!(req(&r[..n]), RequestParse::NeedMore, "prefix {n}");
        }
        assert!(matches!(req(r), RequestParse::Request { consumed, .. } if consumed == r.len()));
    }

    #[test]
    fn request_garbage_sweep() {
        let mut rng = XorShift64(0xB0D1);
        let base = b"GET /m?q HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n";
        for _ in 0..20_000 {
            let mut buf = base.to_vec();
            for _ in 0..1 + rng.next_u64() % 4 {
                let i = (rng.next_u64() as usize) % buf.len();
                buf[i] = rng.next_u64() as u8;
            }
            let len = (rng.next_u64() as usize) % (buf.len() + 1);
            if let RequestParse::Request {
                consumed,
                method,
                path,
            } = req(&buf[..len])
            {
                assert!(consumed <= len && path.starts_with('/') && !method.is_empty());
            }
            let junk: Vec<u8> = (0..rng.next_u64() % 64)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let _ = req(&junk);
        }
    }

    #[test]
    fn response_writer_exact() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            b"a 1\n",
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let mut out = Vec::new();
        write_response(&mut out, 404, "text/plain\r\nX-Evil: 1", b"");
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plainX-Evil: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response_head(&mut out, 7, "t", 10);
        assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
        let mut out = Vec::new();
        write_response_head(&mut out, 599, "t", 0);
        assert!(out.starts_with(b"HTTP/1.1 599 \r\n"));
    }

    #[test]
    fn client_request_bytes() {
        assert_eq!(host_header("example.com", 80), "example.com");
        assert_eq!(host_header("example.com", 8080), "example.com:8080");
        assert_eq!(host_header("2001:db8::1", 80), "[2001:db8::1]");
        assert_eq!(host_header("::1", 81), "[::1]:81");
        assert_eq!(
            build_get("iplists.example:8080", "/firehol_level1.netset?x=1"),
            b"GET /firehol_level1.netset?x=1 HTTP/1.1\r\nHost: iplists.example:8080\r\nUser-Agent: mtpx\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        );
        let g = build_get("h\r\nX: y", "a b\r\n\u{e9}");
        assert!(g.starts_with(b"GET /a%20b%0D%0A%C3%A9 HTTP/1.1\r\nHost: hX:y\r\n"));
    }

    fn head(buf: &[u8]) -> ResponseParse<'_> {
        parse_response_head(buf)
    }

    #[test]
    fn accepts_response_heads() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n1.2.3.0/24\n\n";
        assert_eq!(
            head(r),
            ResponseParse::Head {
                consumed: r.len() - 12,
                status: 200,
                content_length: Some(12),
                chunked: false,
                location: None
            }
        );
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            head(r),
            ResponseParse::Head {
                consumed: r.len(),
                status: 200,
                content_length: None,
                chunked: true,
                location: None
            }
        );
        let r = b"HTTP/1.0 301\r\nLocation: http://b.example/x\r\nContent-Length: 3, 3\r\n\r\n";
        assert_eq!(
            head(r),
            ResponseParse::Head {
                consumed: r.len(),
                status: 301,
                content_length: Some(3),
                chunked: false,
                location: Some("http://b.example/x")
            }
        );
        // Body to close.
        let r = b"HTTP/1.1 404 Not Found\n\n";
        assert!(matches!(
            head(r),
            ResponseParse::Head {
                status: 404,
                content_length: None,
                chunked: false,
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_response_heads() {
        for bad in [
            &b"HTTP/1.1 20 OK\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 X\r\n\r\n",
            b"HTTP/1.1 600 X\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad\r\n\r\n",
            b"SSH-2.0-OpenSSH",
            b"<html>",
        ] {
            assert_eq!(
                head(bad),
                ResponseParse::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(head(&big), ResponseParse::Invalid);
    }

    #[test]
    fn response_with_a_leading_empty_line_is_refused_whole_and_in_part() {
        // Found by fuzz/fuzz_targets/http.rs: accepted whole, Invalid on its 1-byte prefix.
        let r = b"\nHTTP/1.1 200 Oer-En0\r\nT*: v\r\n\r\n";
        assert_eq!(head(&r[..1]), ResponseParse::Invalid);
        assert_eq!(head(r), ResponseParse::Invalid);
        assert_eq!(head(b"\r\nHTTP/1.1 200 OK\r\n\r\n"), ResponseParse::Invalid);
        assert!(matches!(
            head(&r[1..]),
            ResponseParse::Head { status: 200, .. }
        ));
    }

    #[test]
    fn response_truncation_and_garbage_sweep() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nLocation: /x\r\n\r\n";
        for n in 0..r.len() {
            assert_eq!(head(&r[..n]), ResponseParse::NeedMore, "prefix {n}");
        }
        let mut rng = XorShift64(0xF00D);
        for _ in 0..20_000 {
            let mut buf = r.to_vec();
            for _ in 0..1 + rng.next_u64() % 4 {
                let i = (rng.next_u64() as usize) % buf.len();
                buf[i] = rng.next_u64() as u8;
            }
            let len = (rng.next_u64() as usize) % (buf.len() + 1);
            if let ResponseParse::Head {
                consumed, status, ..
            } = head(&buf[..len])
            {
                assert!(consumed <= len && (100..=599).contains(&status));
            }
            let junk: Vec<u8> = (0..rng.next_u64() % 64)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let _ = head(&junk);
        }
    }

    fn dechunk_all(input: &[u8], cap: usize) -> Result<(Vec<u8>, usize), BodyError> {
        let mut d = ChunkedDecoder::new(cap);
        let mut out = Vec::new();
        let p = d.feed(input, &mut out)?;
        if !p.done {
            return Err(BodyError::Invalid);
        }
        Ok((out, p.consumed))
    }

    const CHUNKED: &[u8] =
        b"5\r\n1.2.3\r\n1B;name=\"v\"\r\n.4/32\n10.0.0.0/8\n# comment\n\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";

    #[test]
    fn chunked_decodes_whole_and_byte_by_byte() {
        let (body, used) = dechunk_all(CHUNKED, 1 << 20).unwrap();
        assert_eq!(body, b"1.2.3.4/32\n10.0.0.0/8\n# comment\n");
        assert_eq!(&CHUNKED[used..], b"NEXT");
        // One byte at a time: NeedMore (done=false, all consumed) until the end.
        let mut d = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        let end = CHUNKED.len() - 4;
        for (i, b) in CHUNKED[..end].iter().enumerate() {
            let p = d.feed(std::slice::from_ref(b), &mut out).unwrap();
            assert_eq!(p.consumed, 1);
            assert_eq!(p.done, i + 1 == end, "byte {i}");
        }
        assert!(d.is_done());
        assert_eq!(d.body_len(), out.len());
        assert_eq!(out, body);
        assert_eq!(
            d.feed(b"NEXT", &mut out).unwrap(),
            Progress {
                consumed: 0,
                done: true
            }
        );
        // Every split point gives the same body.
        for split in 0..=end {
            let mut d = ChunkedDecoder::new(1 << 20);
            let mut out = Vec::new();
            let a = d.feed(&CHUNKED[..split], &mut out).unwrap();
            assert_eq!(a.consumed, split);
            let b = d.feed(&CHUNKED[split..], &mut out).unwrap();
            assert!(b.done);
            assert_eq!(out, body);
        }
        // Empty body; hex case; whitespace before CRLF.
        assert_eq!(dechunk_all(b"0\r\n\r\n", 0).unwrap().0, b"");
        assert_eq!(
            dechunk_all(b"a \r\n0123456789\r\n0\r\n\r\n", 10).unwrap().0,
            b"0123456789"
        );
    }

    #[test]
    fn chunked_rejects_bad_framing_and_caps() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\r\nabcdeX\r\n",
            b"5\nabcde\r\n0\r\n\r\n",
            b"5\r\nabcde\n0\r\n\r\n",
            b"-5\r\n",
            b"5 5\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\n:bad\r\n\r\n",
            b"0\r\n\rX",
        ] {
            let mut d = ChunkedDecoder::new(1 << 30);
            let r = d.feed(bad, &mut Vec::new());
            assert_eq!(
                r,
                Err(BodyError::Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            // Stays failed.
            assert!(d.feed(b"0\r\n\r\n", &mut Vec::new()).is_err());
        }
        // The cap is enforced from the announced size, before the data arrives.
        let mut d = ChunkedDecoder::new(8);
        assert_eq!(d.feed(b"9\r\n", &mut Vec::new()), Err(BodyError::TooLarge));
        assert_eq!(
            dechunk_all(b"4\r\nabcd\r\n4\r\nefgh\r\n0\r\n\r\n", 8)
                .unwrap()
                .0,
            b"abcdefgh"
        );
        assert_eq!(
            dechunk_all(b"4\r\nabcd\r\n5\r\nefghi\r\n0\r\n\r\n", 8),
            Err(BodyError::TooLarge)
        );
        let mut d = ChunkedDecoder::new(usize::MAX);
        assert_eq!(
            d.feed(b"fffffffffffffff\r\n", &mut Vec::new())
                .unwrap()
                .consumed,
            17
        );
        // Extension line too long.
        let mut long = b"1;".to_vec();
        long.resize(5000, b'a');
        assert_eq!(
            ChunkedDecoder::new(10).feed(&long, &mut Vec::new()),
            Err(BodyError::Invalid)
        );
    }

    #[test]
    fn chunked_garbage_sweep() {
        let mut rng = XorShift64(0xC4C4);
        for _ in 0..20_000 {
            let mut buf = CHUNKED.to_vec();
            for _ in 0..1 + rng.next_u64() % 3 {
                let i = (rng.next_u64() as usize) % buf.len();
                buf[i] = rng.next_u64() as u8;
            }
            let cap = (rng.next_u64() % 64) as usize;
            let mut d = ChunkedDecoder::new(cap);
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < buf.len() {
                let n = 1 + (rng.next_u64() as usize) % 9;
                let piece = &buf[pos..(pos + n).min(buf.len())];
                match d.feed(piece, &mut out) {
                    Ok(p) => {
                        assert!(p.consumed <= piece.len());
                        if p.done {
                            break;
                        }
                        assert_eq!(p.consumed, piece.len());
                    }
                    Err(_) => break,
                }
                pos += n;
            }
            assert!(out.len() <= cap);
        }
    }

    #[test]
    fn urls() {
        let ok = |s: &str| parse_http_url(s).unwrap();
        assert_eq!(
            ok("http://example.com"),
            ("example.com".into(), 80, "/".into())
        );
        assert_eq!(
            ok(" HTTP://Lists.Example:8080/a/b.netset?x=1#frag "),
            ("Lists.Example".into(), 8080, "/a/b.netset?x=1".into())
        );
        assert_eq!(
            ok("http://1.2.3.4:81?q"),
            ("1.2.3.4".into(), 81, "/?q".into())
        );
        assert_eq!(
            ok("http://[2001:db8::1]/x"),
            ("2001:db8::1".into(), 80, "/x".into())
        );
        assert_eq!(ok("http://[::1]:9/"), ("::1".into(), 9, "/".into()));
        assert_eq!(ok("http://h:/"), ("h".into(), 80, "/".into()));
        let err =
            parse_http_url("https://iplists.firehol.org/files/firehol_level1.netset").unwrap_err();
        assert!(err.contains("https URLs are not fetched"), "{err}");
        assert!(parse_http_url("HTTPS://x").unwrap_err().contains("https"));
        assert_eq!(
            parse_web_url("https://core.telegram.org/getProxyConfig").unwrap(),
            (
                true,
                "core.telegram.org".into(),
                443,
                "/getProxyConfig".into()
            )
        );
        assert_eq!(
            parse_web_url("HTTPS://[::1]:8443").unwrap(),
            (true, "::1".into(), 8443, "/".into())
        );
        assert_eq!(
            parse_web_url("http://127.0.0.1/x").unwrap(),
            (false, "127.0.0.1".into(), 80, "/x".into())
        );
        assert!(parse_web_url("ftp://x").is_err());
        for bad in [
            "ftp://x/",
            "http://",
            "http:///x",
            "http://u:p@h/",
            "http://h:0/",
            "http://h:65536/",
            "http://h:8a/",
            "http://[::1/",
            "http://[::1]x/",
            "http://[]/",
            "http://[fe80::1%eth0]/",
            "http://h h/",
            "http://h/\u{e9}",
            "http://h!/",
            "/etc/passwd",
            "",
            "h\u{e9}ttp://x",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }
}
