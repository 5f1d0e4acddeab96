//! The parsed request as routing and forwarding read it: borrowed views into the head bytes.
//!
//! Built once per request by the connection loop (`proxy`) and read by route matching and by
//! `forward` (rewrites, hash keys). Borrows only; never allocates.

use ringmesh_api::snapshot::RequestHead as RouteRequest;

use super::h1::RequestHead;

/// A parsed request as routing sees it: borrowed views into the head bytes.
#[derive(Clone, Copy)]
pub(crate) struct RouteView<'a> {
    pub(crate) src: &'a [u8],
    pub(crate) head: &'a RequestHead,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The path was changed by normalization: the upstream receives `path` (and `query`)
    /// instead of the target as sent.
    pub(crate) path_changed: bool,
}

impl<'a> RouteView<'a> {
    pub(crate) fn new(src: &'a [u8], head: &'a RequestHead) -> Self {
        let method = std::str::from_utf8(head.method().as_bytes(src)).unwrap_or("");
        let pq = std::str::from_utf8(head.path_and_query(src)).unwrap_or("/");
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        RouteView {
            src,
            head,
            method,
            path,
            query,
            path_changed: false,
        }
    }
}

impl RouteRequest for RouteView<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.src, name.as_bytes())
    }
}

/// An HTTP/2 request as routing sees it: views into `h2`'s decoded request.
pub(crate) struct H2RouteView<'a> {
    pub(crate) parts: &'a http::request::Parts,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The path was changed by normalization (the upstream receives `path`).
    pub(crate) path_changed: bool,
}

impl<'a> H2RouteView<'a> {
    pub(crate) fn new(parts: &'a http::request::Parts) -> Self {
        H2RouteView {
            parts,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            path_changed: false,
        }
    }
}

impl RouteRequest for H2RouteView<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.parts.headers.get(name).map(http::HeaderValue::as_bytes)
    }
}
