//! The HTTP listeners of walflow (the metrics endpoint, the dashboard, the fake API) served
//! with limits `axum::serve` does not have: a connection that sends no complete request
//! header within [`Limits::header_read_timeout`] (a new one, or an idle keep-alive one) is
//! closed, and at most [`Limits::max_connections`] are open at once, the next waiting in
//! the kernel's backlog. Idle or slow clients cannot pile up until file descriptors run out.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a connection may take to send a whole request header, counted from its
    /// opening or from the end of the previous response (an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 128,
        }
    }
}

/// Serves `router` on `listener` under `limits`, until the listener fails for good.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // The peer gave up before it was accepted: nothing to serve.
            Err(error) if is_connection_error(&error) => continue,
            // Out of file descriptors, for instance: pause rather than spin.
            Err(error) => {
                tracing::warn!(%error, "cannot accept an HTTP connection; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(listener, router, limits));
        address
    }

    async fn get(address: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Reads until the server closes the connection; `None` if it is still open after `wait`.
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        let mut received = Vec::new();
        let read = tokio::time::timeout(wait, stream.read_to_end(&mut received)).await;
        read.ok().map(|_| received)
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_header_is_closed() {
        let address = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 8,
        })
        .await;
        let mut silent = TcpStream::connect(address).await.unwrap();
        let mut partial = TcpStream::connect(address).await.unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        for stream in [&mut silent, &mut partial] {
            assert!(
                closed_within(stream, Duration::from_secs(5))
                    .await
                    .is_some(),
                "the server kept a connection that sent no whole header"
            );
        }
        assert!(get(address).await.ends_with("ok"));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_its_response() {
        let address = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 8,
        })
        .await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let received = closed_within(&mut stream, Duration::from_secs(5))
            .await
            .expect("the idle keep-alive connection stayed open");
        assert!(String::from_utf8_lossy(&received).ends_with("ok"));
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_one() {
        let address = start(Limits {
            header_read_timeout: Duration::from_secs(600),
            max_connections: 2,
        })
        .await;
        let first = TcpStream::connect(address).await.unwrap();
        let _second = TcpStream::connect(address).await.unwrap();
        let third = tokio::spawn(get(address));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !third.is_finished(),
            "a third connection was served while two were open under a limit of 2"
        );
        // The first one closes: its slot goes to the third.
        drop(first);
        let response = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("the third connection was not served once a slot was free")
            .unwrap();
        assert!(response.ends_with("ok"), "{response}");
    }
}
