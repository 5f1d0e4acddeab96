//! An HTTP/2 client for tests (h2c with prior knowledge): the `h2` crate on a tokio runtime of
//! its own, behind a blocking API, so a test drives it like [`crate::client::Client`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request, StatusCode};

/// A response read to its end.
#[derive(Debug)]
pub struct H2Response {
    /// Status.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailer fields, if the response had any.
    pub trailers: Option<HeaderMap>,
}

impl H2Response {
    /// A header (or, failing that, trailer) value as text.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .or_else(|| self.trailers.as_ref().and_then(|t| t.get(name)))
            .and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/2 connection.
#[derive(Debug)]
pub struct H2Client {
    rt: tokio::runtime::Runtime,
    send: SendRequest<Bytes>,
}

/// How long any one exchange may take before the test fails.
const WITHIN: Duration = Duration::from_secs(20);

impl H2Client {
    /// Connects and completes the HTTP/2 handshake.
    pub fn connect(addr: SocketAddr) -> H2Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        });
        H2Client { rt, send }
    }

    /// Sends a request with `body` (and `trailers`) and reads the whole response.
    pub fn request(&mut self, req: Request<()>, body: &[u8], trailers: Option<HeaderMap>) -> H2Response {
        let send = self.send.clone();
        let body = Bytes::copy_from_slice(body);
        self.rt
            .block_on(async move { tokio::time::timeout(WITHIN, exchange(send, req, body, trailers)).await })
            .expect("HTTP/2 exchange timed out")
            .expect("HTTP/2 exchange failed")
    }

    /// `GET http://authority/path`.
    pub fn get(&mut self, authority: &str, path: &str) -> H2Response {
        let req = Request::get(format!("http://{authority}{path}"))
            .body(())
            .expect("request");
        self.request(req, b"", None)
    }

    /// Runs `f` on this client's runtime (for tests that drive streams themselves).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The connection's request handle.
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.send.clone()
    }
}

async fn exchange(
    send: SendRequest<Bytes>,
    req: Request<()>,
    body: Bytes,
    trailers: Option<HeaderMap>,
) -> Result<H2Response, h2::Error> {
    let mut send = send.ready().await?;
    let end = body.is_empty() && trailers.is_none();
    let (response, mut stream) = send.send_request(req, end)?;
    if !end {
        if !body.is_empty() {
            stream.send_data(body, trailers.is_none())?;
        }
        if let Some(t) = trailers {
            stream.send_trailers(t)?;
        }
    }
    read_response(response.await?).await
}

/// Reads a response's body and trailers.
pub async fn read_response(resp: http::Response<h2::RecvStream>) -> Result<H2Response, h2::Error> {
    let (parts, mut recv) = resp.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    Ok(H2Response {
        status: parts.status,
        headers: parts.headers,
        body: body.into(),
        trailers,
    })
}
