//! S3 faults a real server will not produce on demand: throttling then success, 500s that
//! do not stop, a server that hangs, a garbage answer, a connection cut mid-upload. Served
//! by wiremock (or a bare TCP listener) to the S3 backend; each test checks the outcome and
//! that the store never panics or hangs past its bounds.

use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arca::repo::store::s3::{S3Settings, S3Store};
use arca::repo::store::Store;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn store(endpoint: &str, attempts: u32, timeout: u64) -> S3Store {
    crate::common::in_process_aws_credentials();
    S3Store::open_with(
        "bucket",
        "p",
        S3Settings {
            endpoint: Some(endpoint.to_string()),
            path_style: Some(true),
            region: Some("us-east-1".into()),
            max_attempts: Some(attempts),
            timeout_seconds: Some(timeout),
            ..Default::default()
        },
    )
    .unwrap()
}

fn s3_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message><RequestId>1</RequestId></Error>"),
        "application/xml",
    )
}

/// Runs blocking store calls off the test's runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_then_success_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/bucket/p/points/a.json"))
        .respond_with(s3_error(503, "SlowDown"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bucket/p/points/a.json"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"payload".to_vec()))
        .with_priority(2)
        .mount(&server)
        .await;
    let uri = server.uri();
    let got = blocking(move || store(&uri, 4, 10).get("points/a.json", 1000)).await;
    assert_eq!(got.unwrap(), b"payload");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_that_persist_fail_after_bounded_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(s3_error(500, "InternalError"))
        .mount(&server)
        .await;
    let uri = server.uri();
    let err = blocking(move || store(&uri, 3, 10).get("index/x", 1000))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other);
    assert!(err.to_string().contains("S3 GET index/x"), "{err}");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_server_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let uri = server.uri();
    let started = std::time::Instant::now();
    let err = blocking(move || store(&uri, 2, 1).get("config", 1000))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(25), "{err}");
    assert_eq!(err.kind(), ErrorKind::Other, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_answers_are_errors_not_panics() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw("<<<this is not a listing", "application/xml"),
        )
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .respond_with(ResponseTemplate::new(200).insert_header("content-length", "not-a-number"))
        .mount(&server)
        .await;
    let uri = server.uri();
    let (list, size) = blocking(move || {
        let s = store(&uri, 1, 5);
        (s.list("points"), s.size("packs/aa/aa00"))
    })
    .await;
    assert!(list.is_err(), "{list:?}");
    // A HEAD answer without a usable length reaches here at all: no panic on the way (a
    // panic in the blocking task fails the test at its join).
    drop(size);
    // A body larger than the bound asked for is refused, even when the server says less.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![7u8; 10_000]))
        .mount(&server)
        .await;
    let uri = server.uri();
    let big = blocking(move || store(&uri, 1, 5).get("points/x.json", 100)).await;
    assert_eq!(big.unwrap_err().kind(), ErrorKind::InvalidData);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_not_modified_answer_to_a_plain_get_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(304))
        .mount(&server)
        .await;
    let uri = server.uri();
    let r = blocking(move || store(&uri, 1, 5).get("points/a.json", 1000)).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidData);
}

#[tokio::test(flavor = "multi_thread")]
async fn background_upload_failures_surface_at_flush() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(s3_error(500, "InternalError"))
        .mount(&server)
        .await;
    let uri = server.uri();
    let r = blocking(move || {
        let s = store(&uri, 2, 5);
        s.put_background("packs/aa/aa00".into(), vec![1u8; 1000])?;
        s.flush()
    })
    .await;
    let e = r.unwrap_err();
    assert!(e.to_string().contains("packs/aa/aa00"), "{e}");
}

#[test]
fn a_connection_cut_mid_upload_is_retried_then_reported() {
    // A server that reads the start of each request and hangs up.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            c.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            drop(s);
        }
    });
    let s = store(&format!("http://{addr}"), 3, 5);
    let data = vec![9u8; 2 << 20];
    let err = s.put("packs/bb/bb00", &[&data]).unwrap_err();
    assert!(err.to_string().contains("packs/bb/bb00"), "{err}");
    assert!(
        conns.load(Ordering::SeqCst) >= 2,
        "the cut upload was retried"
    );
}
