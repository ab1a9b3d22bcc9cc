//! The native client against real sockets: canned upstream answers, hostile framing, pooling.

use std::collections::HashMap;
use std::net::SocketAddr;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A head parsed from `raw`, for a GET unless `method` says otherwise.
fn head_of(raw: &[u8], method: Method) -> Result<Option<(Head, usize)>, Error> {
    let mut buf = BytesMut::from(raw);
    let before = buf.len();
    Ok(parse_head(&mut buf, &method)?.map(|h| (h, before - buf.len())))
}

#[test]
fn response_heads_are_framed_one_way_or_refused() {
    let refused: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX A: a\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 5\r\r\n\r\n",
    ];
    for raw in refused {
        assert!(
            head_of(raw, Method::GET).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let too_many = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "X-A: a\r\n".repeat(MAX_HEADERS + 1)
    );
    assert!(matches!(
        head_of(too_many.as_bytes(), Method::GET),
        Err(Error::Invalid("too many response header fields"))
    ));

    let framed = |raw: &[u8], method: Method| {
        let (h, _) = head_of(raw, method).unwrap().unwrap();
        (format!("{:?}", h.body), h.keep_alive, h.headers)
    };
    let (body, keep, _) = framed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::GET);
    assert_eq!((body.as_str(), keep), ("Length(5)", true));
    // Repeated equal lengths are one length.
    let (body, _, _) = framed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        Method::GET,
    );
    assert_eq!(body, "Length(5)");
    // Transfer-Encoding wins; the length is dropped and the connection not reused.
    let (body, keep, headers) = framed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n",
        Method::GET,
    );
    assert_eq!((body.as_str(), keep), ("Chunked(Size)", false));
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    let (body, keep, _) = framed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Method::GET,
    );
    assert_eq!((body.as_str(), keep), ("Chunked(Size)", true));
    // A coding that is not chunked, or no framing at all: read to the end, never reused.
    let (body, keep, _) = framed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        Method::GET,
    );
    assert_eq!((body.as_str(), keep), ("Eof", false));
    let (body, keep, _) = framed(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET);
    assert_eq!((body.as_str(), keep), ("Eof", false));
    // No body, whatever the framing says.
    for (raw, method) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..],
            Method::HEAD,
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        ),
    ] {
        let (body, keep, _) = framed(raw, method);
        assert_eq!((body.as_str(), keep), ("Length(0)", true));
    }
    // Keep-alive: HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`.
    for (raw, keep) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: x, Close\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            true,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n",
            false,
        ),
    ] {
        assert_eq!(
            framed(raw, Method::GET).1,
            keep,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Interim answers are skipped; a partial head is not an answer yet.
    let (h, used) = head_of(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nrest",
        Method::POST,
    )
    .unwrap()
    .unwrap();
    assert_eq!((h.status, used), (StatusCode::CREATED, 108));
    assert!(
        head_of(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none()
    );
}

#[test]
fn chunk_size_lines_are_strict() {
    for (line, want) in [
        (&b"5\r\n"[..], Some(5)),
        (b"1aF\r\n", Some(0x1af)),
        (b"0\r\n", Some(0)),
        (b"5;ext=1\r\n", Some(5)),
        (b"5 ;ext\r\n", Some(5)),
        (b"5\n", None),
        (b" 5\r\n", None),
        (b"+5\r\n", None),
        (b"-5\r\n", None),
        (b"0x5\r\n", None),
        (b"\r\n", None),
        (b"5;a\rb\r\n", None),
        (b"1000000000000000\r\n", None),
        (b"fffffffffffffff\r\n", Some(0xfff_ffff_ffff_ffff)),
    ] {
        assert_eq!(
            chunk_size(line),
            want,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// An upstream that answers each connection's requests with `answers`, in order, one per
/// request head; it counts connections and records what it read.
struct Canned {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Canned {
    async fn start(answers: Vec<&'static [u8]>, close_after: bool) -> Canned {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (connections.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (answers, seen) = (answers.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answers = answers.into_iter();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                            seen.lock().unwrap().extend_from_slice(&buf[..end + 4]);
                            buf.drain(..end + 4);
                            let Some(a) = answers.next() else { return };
                            if sock.write_all(a).await.is_err() {
                                return;
                            }
                            if close_after {
                                return;
                            }
                        }
                        match sock.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                });
            }
        });
        Canned {
            addr,
            connections,
            seen,
        }
    }

    fn client(&self) -> Client {
        let connector = Connector {
            timeout: Duration::from_secs(2),
            tls: None,
            stats: Arc::new(HashMap::new()),
            fixed: None,
            limit: None,
        };
        let uri: Uri = format!("http://{}/", self.addr).parse().unwrap();
        Client::new(connector, [uri], 4, Duration::from_secs(60))
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn get(path: &str) -> Request<ProxyBody> {
    Request::builder()
        .uri(path)
        .header("host", "site.test")
        .body(ProxyBody::empty())
        .unwrap()
}

async fn body_of(res: Response<Body>) -> Result<Bytes, Error> {
    Ok(res.into_body().collect().await?.to_bytes())
}

#[tokio::test]
async fn a_clean_exchange_parks_the_connection_and_the_next_request_reuses_it() {
    let up = Canned::start(
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nwor\r\n2\r\nld\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ],
        false,
    )
    .await;
    let client = up.client();
    let res = client.send(0, get("/a"), None).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(client.idle(0), 0, "parked before its body was read");
    assert_eq!(body_of(res).await.unwrap(), "hello");
    assert_eq!(client.idle(0), 1);

    let res = client.send(0, get("/b"), None).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("x-t"))
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(collected.to_bytes(), "world");
    assert_eq!(client.idle(0), 1);

    // `Connection: close`: read, then closed rather than parked.
    let res = client.send(0, get("/c"), None).await.unwrap();
    assert_eq!(body_of(res).await.unwrap(), "ok");
    assert_eq!(client.idle(0), 0);
    assert_eq!(up.connections(), 1);
    let seen = String::from_utf8(up.seen.lock().unwrap().clone()).unwrap();
    assert_eq!(
        seen,
        "GET /a HTTP/1.1\r\nhost: site.test\r\n\r\nGET /b HTTP/1.1\r\nhost: site.test\r\n\r\nGET /c HTTP/1.1\r\nhost: site.test\r\n\r\n"
    );
}

#[tokio::test]
async fn a_body_dropped_early_or_cut_short_never_returns_its_connection() {
    let up = Canned::start(
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"],
        true,
    )
    .await;
    let client = up.client();
    // Dropped unread.
    drop(client.send(0, get("/a"), None).await.unwrap());
    assert_eq!(client.idle(0), 0);
    // Read: the upstream closes after 5 of 10 bytes.
    let res = client.send(0, get("/a"), None).await.unwrap();
    assert!(matches!(
        body_of(res).await,
        Err(Error::Invalid("body cut short"))
    ));
    assert_eq!(client.idle(0), 0);
}

#[tokio::test]
async fn hostile_bodies_fail_and_close_the_connection() {
    for (answer, why) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"[..],
            "bare LF after a chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            "no CRLF after chunk data",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "a chunk size that is not hex",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            "a chunk size that overflows",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX A: b\r\n\r\n",
            "an invalid trailer",
        ),
    ] {
        let up = Canned::start(vec![answer], false).await;
        let client = up.client();
        let res = client.send(0, get("/"), None).await.unwrap();
        assert!(body_of(res).await.is_err(), "{why}: accepted");
        assert_eq!(client.idle(0), 0, "{why}: parked");
    }
    // A chunk-size line that never ends is bounded.
    let long: &'static [u8] = Box::leak(
        [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;"[..],
            &vec![b'a'; 2 * MAX_CHUNK_LINE],
        ]
        .concat()
        .into_boxed_slice(),
    );
    let up = Canned::start(vec![long], false).await;
    let res = up.client().send(0, get("/"), None).await.unwrap();
    assert!(matches!(
        body_of(res).await,
        Err(Error::Invalid("chunk size line too long"))
    ));
    // Bytes after a complete response: the body is fine, the connection is not reused.
    let up = Canned::start(
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"],
        false,
    )
    .await;
    let client = up.client();
    let res = client.send(0, get("/"), None).await.unwrap();
    assert_eq!(body_of(res).await.unwrap(), "ok");
    assert_eq!(client.idle(0), 0);
}

#[tokio::test]
async fn an_endless_response_head_is_refused() {
    let endless: &'static [u8] = Box::leak(
        [&b"HTTP/1.1 200 OK\r\nX-A: "[..], &vec![b'a'; 2 * MAX_HEAD]]
            .concat()
            .into_boxed_slice(),
    );
    let up = Canned::start(vec![endless], false).await;
    let got = up.client().send(0, get("/"), None).await;
    assert!(matches!(
        got,
        Err(Error::Invalid("response head too large"))
    ));
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_for_a_bodyless_request() {
    // Each connection answers once and closes without saying so.
    let up = Canned::start(
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        true,
    )
    .await;
    let client = up.client();
    for _ in 0..3 {
        let res = client.send(0, get("/"), None).await.unwrap();
        assert_eq!(body_of(res).await.unwrap(), "ok");
        // Let the close arrive (or not: the resend covers the race either way).
        tokio::task::yield_now().await;
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn request_bodies_are_framed_by_their_length_or_chunked() {
    let up = Canned::start(
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ],
        false,
    )
    .await;
    let client = up.client();
    let req = Request::post("/full").body(ProxyBody::full("abc")).unwrap();
    client.send(0, req, None).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
        .await
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 2000]))))
        .await
        .unwrap();
    drop(tx);
    let req = Request::post("/stream")
        .body(ProxyBody::channel(rx))
        .unwrap();
    client.send(0, req, None).await.unwrap();
    // The upstream reads heads only: what it saw of the bodies is what followed each head.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = String::from_utf8(up.seen.lock().unwrap().clone()).unwrap();
    assert!(
        seen.starts_with("POST /full HTTP/1.1\r\ncontent-length: 3\r\n\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("POST /stream HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
        "{seen}"
    );
    // A declared length the body does not keep is the request's failure, not sent short.
    let up = Canned::start(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], false).await;
    let req = Request::post("/")
        .header("content-length", "10")
        .body(ProxyBody::full("abc"))
        .unwrap();
    assert!(matches!(
        up.client().send(0, req, None).await,
        Err(Error::BodyLength)
    ));
}

#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_body_is_heard_at_once() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        // Keeps the connection open without reading the body.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    let up = Canned {
        addr,
        connections: Arc::default(),
        seen: Arc::default(),
    };
    let client = up.client();
    // A body that never ends.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))))
        .await
        .unwrap();
    let req = Request::post("/").body(ProxyBody::channel(rx)).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), client.send(0, req, None))
        .await
        .expect("the early answer was not heard")
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_of(res).await.unwrap(), "");
    // The request was not written whole: the connection is not reused.
    assert_eq!(client.idle(0), 0);
    drop(tx);
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let up = Canned {
        addr,
        connections: Arc::default(),
        seen: Arc::default(),
    };
    let got = up.client().send(0, get("/"), None).await;
    assert!(matches!(
        got,
        Err(Error::Connect(ConnectError::Failed { .. }))
    ));
}
