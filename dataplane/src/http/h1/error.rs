//! Errors of the HTTP/1.1 codec.
//!
//! Every way a head or a chunked body can be refused has its own variant, so that a test can assert
//! exactly which rule fired and an access log can say why a connection was dropped. The codec
//! never answers the peer itself: the proxy loop turns an `H1Error` into a locally generated
//! response with [`H1Error::status`] (for a request from downstream) or into a 502 (for a response
//! from upstream), and then closes the connection, because after a framing error nothing that
//! follows on the same connection can be trusted. Variants carry no data so that the type is
//! `Copy`, allocation-free and cheap to return from the hot path.

/// A request head, response head or chunked body that the codec refuses.
///
/// [`status`](H1Error::status) is the status to send downstream when the error comes from a
/// request. An error in an upstream *response* always becomes a 502 at the proxy, whatever the
/// variant says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum H1Error {
    // ---- size limits (431) ----
    /// No complete head within `HeadLimits::max_head_bytes`.
    #[error("head larger than the configured limit")]
    HeadTooLarge,
    /// More header fields than `HeadLimits::max_headers`.
    #[error("too many header fields")]
    TooManyHeaders,
    /// Chunked trailer section larger than `ChunkedLimits::max_trailer_bytes`.
    #[error("trailer section larger than the configured limit")]
    TrailersTooLarge,

    // ---- line syntax (400) ----
    /// A line in the head or the chunked framing ends with LF alone.
    #[error("bare LF line ending")]
    BareLf,
    /// A line starts with SP or HTAB: obsolete line folding, or whitespace before the first header.
    #[error("obsolete line folding or whitespace at the start of a header line")]
    ObsFold,
    /// Request line, status line or head otherwise malformed (e.g. CR without LF).
    #[error("malformed start line or head")]
    Malformed,

    // ---- request line (400 / 505) ----
    /// Method is not a token.
    #[error("invalid method")]
    InvalidMethod,
    /// Request target has bad bytes or a form that does not fit the method.
    #[error("invalid request target")]
    InvalidTarget,
    /// The path percent-decodes to a control byte (`%00`-`%1F`, `%7F`): no route or file name
    /// holds one, and a next hop that decodes it may cut the path at a NUL or a line break.
    #[error("percent-encoded control character in the path")]
    EncodedControlInPath,
    /// A CONNECT request: after a 2xx the connection would carry a tunnel, which no route sets
    /// up, so the request is refused and the connection closed before its next bytes are read.
    #[error("CONNECT is not supported: no route tunnels")]
    ConnectNotSupported,
    /// The version field is not `HTTP/<digit>.<digit>`.
    #[error("invalid HTTP version")]
    InvalidVersion,
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1 (505).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// Status code outside 100..=599 or status line malformed.
    #[error("invalid status line")]
    InvalidStatus,
    /// `101 Switching Protocols` answering a request that did not ask to upgrade: the upstream
    /// would speak another protocol on a connection the client still reads as HTTP/1.1.
    #[error("101 to a request that did not ask to upgrade")]
    UnrequestedUpgrade,

    // ---- header fields (400) ----
    /// Header name is not a token (includes a space before the colon).
    #[error("invalid header name")]
    InvalidHeaderName,
    /// Header value holds NUL or another control byte.
    #[error("invalid header value")]
    InvalidHeaderValue,
    /// HTTP/1.1 request without a Host header.
    #[error("missing host header")]
    MissingHost,
    /// More than one Host header.
    #[error("multiple host headers")]
    MultipleHost,
    /// Host value is not a valid authority.
    #[error("invalid host header")]
    InvalidHost,

    // ---- message framing / smuggling (400) ----
    /// Both Content-Length and Transfer-Encoding.
    #[error("content-length and transfer-encoding both present")]
    ContentLengthAndTransferEncoding,
    /// Content-Length not a plain decimal number, or larger than u64.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// Several Content-Length values that differ.
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    /// Transfer-Encoding that is not a well-formed list ending in one `chunked`.
    #[error("invalid transfer-encoding")]
    InvalidTransferEncoding,
    /// A well-formed transfer coding other than `chunked` (501 for requests).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// Transfer-Encoding in an HTTP/1.0 message: its framing cannot be trusted.
    #[error("transfer-encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,

    // ---- chunked body (400) ----
    /// Chunk size line is not hex digits followed by optional extensions and CRLF.
    #[error("invalid chunk size")]
    InvalidChunkSize,
    /// Chunk size larger than `ChunkedLimits::max_chunk_size` (by default 2^52 - 1).
    #[error("chunk size too large")]
    ChunkSizeTooLarge,
    /// Chunk extension that is not `;name[=token|quoted-string]`.
    #[error("invalid chunk extension")]
    InvalidChunkExtension,
    /// Chunk size line longer than `ChunkedLimits::max_line_bytes`.
    #[error("chunk size line too long")]
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF.
    #[error("missing CRLF after chunk data")]
    MissingChunkCrlf,
    /// Trailer field line malformed.
    #[error("invalid trailer field")]
    InvalidTrailer,
    /// Trailer field that may only appear in the head (content-length, transfer-encoding, host).
    #[error("forbidden field in trailer section")]
    ForbiddenTrailer,
}

impl H1Error {
    /// Status to answer downstream with when this error comes from a *request*.
    ///
    /// Size limits are 431, an unsupported version 505, an unsupported transfer coding 501
    /// (RFC 9112 §6.1), everything else 400. Errors in upstream responses become 502 at the proxy.
    pub fn status(&self) -> u16 {
        match self {
            H1Error::HeadTooLarge | H1Error::TooManyHeaders | H1Error::TrailersTooLarge => 431,
            H1Error::UnsupportedVersion => 505,
            H1Error::UnsupportedTransferCoding => 501,
            _ => 400,
        }
    }

    /// Short fixed text for logs and metrics labels, e.g.
    /// `"content-length and transfer-encoding both present"`.
    pub fn reason(&self) -> &'static str {
        match self {
            H1Error::HeadTooLarge => "head larger than the configured limit",
            H1Error::TooManyHeaders => "too many header fields",
            H1Error::TrailersTooLarge => "trailer section larger than the configured limit",
            H1Error::BareLf => "bare LF line ending",
            H1Error::ObsFold => "obsolete line folding or whitespace at the start of a header line",
            H1Error::Malformed => "malformed start line or head",
            H1Error::InvalidMethod => "invalid method",
            H1Error::InvalidTarget => "invalid request target",
            H1Error::EncodedControlInPath => "percent-encoded control character in the path",
            H1Error::ConnectNotSupported => "CONNECT is not supported: no route tunnels",
            H1Error::InvalidVersion => "invalid HTTP version",
            H1Error::UnsupportedVersion => "unsupported HTTP version",
            H1Error::InvalidStatus => "invalid status line",
            H1Error::UnrequestedUpgrade => "101 to a request that did not ask to upgrade",
            H1Error::InvalidHeaderName => "invalid header name",
            H1Error::InvalidHeaderValue => "invalid header value",
            H1Error::MissingHost => "missing host header",
            H1Error::MultipleHost => "multiple host headers",
            H1Error::InvalidHost => "invalid host header",
            H1Error::ContentLengthAndTransferEncoding => "content-length and transfer-encoding both present",
            H1Error::InvalidContentLength => "invalid content-length",
            H1Error::ConflictingContentLength => "conflicting content-length values",
            H1Error::InvalidTransferEncoding => "invalid transfer-encoding",
            H1Error::UnsupportedTransferCoding => "unsupported transfer coding",
            H1Error::TransferEncodingInHttp10 => "transfer-encoding in an HTTP/1.0 message",
            H1Error::InvalidChunkSize => "invalid chunk size",
            H1Error::ChunkSizeTooLarge => "chunk size too large",
            H1Error::InvalidChunkExtension => "invalid chunk extension",
            H1Error::ChunkLineTooLong => "chunk size line too long",
            H1Error::MissingChunkCrlf => "missing CRLF after chunk data",
            H1Error::InvalidTrailer => "invalid trailer field",
            H1Error::ForbiddenTrailer => "forbidden field in trailer section",
        }
    }

    /// True for the size-limit errors (431): the peer may be legitimate but too big for us.
    pub fn is_too_large(&self) -> bool {
        self.status() == 431
    }
}

#[cfg(test)]
mod tests {
    use super::H1Error;

    #[test]
    fn display_matches_reason() {
        let all = [
            H1Error::HeadTooLarge,
            H1Error::TooManyHeaders,
            H1Error::TrailersTooLarge,
            H1Error::BareLf,
            H1Error::ObsFold,
            H1Error::Malformed,
            H1Error::InvalidMethod,
            H1Error::InvalidTarget,
            H1Error::EncodedControlInPath,
            H1Error::ConnectNotSupported,
            H1Error::InvalidVersion,
            H1Error::UnsupportedVersion,
            H1Error::InvalidStatus,
            H1Error::UnrequestedUpgrade,
            H1Error::InvalidHeaderName,
            H1Error::InvalidHeaderValue,
            H1Error::MissingHost,
            H1Error::MultipleHost,
            H1Error::InvalidHost,
            H1Error::ContentLengthAndTransferEncoding,
            H1Error::InvalidContentLength,
            H1Error::ConflictingContentLength,
            H1Error::InvalidTransferEncoding,
            H1Error::UnsupportedTransferCoding,
            H1Error::TransferEncodingInHttp10,
            H1Error::InvalidChunkSize,
            H1Error::ChunkSizeTooLarge,
            H1Error::InvalidChunkExtension,
            H1Error::ChunkLineTooLong,
            H1Error::MissingChunkCrlf,
            H1Error::InvalidTrailer,
            H1Error::ForbiddenTrailer,
        ];
        for e in all {
            assert_eq!(e.to_string(), e.reason());
            let s = e.status();
            assert!(matches!(s, 400 | 431 | 501 | 505), "{e:?}");
        }
        assert_eq!(H1Error::HeadTooLarge.status(), 431);
        assert_eq!(H1Error::UnsupportedVersion.status(), 505);
        assert_eq!(H1Error::ContentLengthAndTransferEncoding.status(), 400);
    }
}
