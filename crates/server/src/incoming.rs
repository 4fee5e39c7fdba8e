//! The connections the gRPC endpoint serves.
//!
//! A client that speaks plaintext to a TLS port fails the TLS handshake, and all it can say is
//! "h2 protocol error" (tonic) or "error reading server preface" (grpcurl): nothing points at
//! the scheme. When the server serves TLS, each new connection's first bytes are therefore
//! peeked at (without consuming them) before tonic sees it: the HTTP/2 connection preface of a
//! plaintext client is answered here, over plaintext HTTP/2, with a gRPC status that says to
//! use TLS; a plaintext HTTP/1 request gets a one-line answer. Anything else — a TLS
//! ClientHello, or a client that has sent nothing yet — goes to tonic unchanged.

use std::{io, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;

/// The answer to a plaintext gRPC call on a TLS port.
pub const PLAINTEXT_ON_TLS: &str = "this server requires TLS: connect with an https:// URL \
                                    (grpcurl: without -plaintext)";

/// What a client first sent, as far as choosing a path goes.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// The HTTP/2 connection preface: gRPC without TLS.
    PlaintextHttp2,
    /// An HTTP/1 request line (`GET / HTTP/1.1` from curl or a browser).
    PlaintextHttp1,
    /// A TLS record, or nothing recognisable: tonic's handshake decides.
    Other,
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// How long a new connection may stay silent before it is handed to tonic as it is.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(5);
/// How long a plaintext client is answered before its connection is closed.
const PLAINTEXT_ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by tonic.
const BACKLOG: usize = 64;

fn opening(first: &[u8]) -> Opening {
    if first.is_empty() {
        return Opening::Other;
    }
    let n = first.len().min(HTTP2_PREFACE.len());
    if first[..n] == HTTP2_PREFACE[..n] {
        return Opening::PlaintextHttp2;
    }
    // A TLS record starts with its content type (22 for a handshake), never a capital letter.
    if first.iter().take(3).all(u8::is_ascii_uppercase) {
        return Opening::PlaintextHttp1;
    }
    Opening::Other
}

/// The connections of `listener` for tonic, until `stop` is cancelled or tonic stops taking
/// them. With `tls`, plaintext clients are answered here (see the module's documentation).
pub fn connections(
    listener: TcpListener,
    tls: bool,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<TcpStream>> {
    let (to_tonic, from_listener) = tokio::sync::mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Small messages (heartbeats, assignments) must not wait for Nagle's timer; tonic
            // sets this itself only on listeners it binds.
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "TCP_NODELAY not set");
            }
            if !tls {
                if to_tonic.send(Ok(stream)).await.is_err() {
                    return;
                }
                continue;
            }
            let to_tonic = to_tonic.clone();
            tokio::spawn(async move {
                match first_bytes(&stream).await {
                    Opening::PlaintextHttp2 => answer_plaintext_grpc(stream).await,
                    Opening::PlaintextHttp1 => answer_plaintext_http1(stream).await,
                    Opening::Other => {
                        let _ = to_tonic.send(Ok(stream)).await;
                    }
                }
            });
        }
    });
    ReceiverStream::new(from_listener)
}

async fn first_bytes(stream: &TcpStream) -> Opening {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(FIRST_BYTES_WAIT, stream.peek(&mut buf)).await {
        Ok(Ok(n)) => opening(&buf[..n]),
        Ok(Err(_)) | Err(_) => Opening::Other,
    }
}

/// Speaks just enough plaintext HTTP/2 to answer every call with `FAILED_PRECONDITION` and
/// [`PLAINTEXT_ON_TLS`] (a trailers-only gRPC response), then closes.
async fn answer_plaintext_grpc(stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let answered = tokio::time::timeout(PLAINTEXT_ANSWER_LIMIT, async move {
        let mut connection = h2::server::handshake(stream).await?;
        while let Some(request) = connection.accept().await {
            let (_request, mut respond) = request?;
            let response = http::Response::builder()
                .status(http::StatusCode::OK)
                .header("content-type", "application/grpc")
                .header(
                    "grpc-status",
                    (tonic::Code::FailedPrecondition as i32).to_string(),
                )
                .header("grpc-message", PLAINTEXT_ON_TLS)
                .body(())
                .map_err(|_| h2::Error::from(h2::Reason::INTERNAL_ERROR))?;
            respond.send_response(response, true)?;
            // Answer what is in flight, then let the client go.
            connection.graceful_shutdown();
        }
        Ok::<_, h2::Error>(())
    })
    .await;
    tracing::info!(?peer, done = ?answered.map(|r| r.is_ok()).ok(),
        "answered a plaintext gRPC client on the TLS port");
}

async fn answer_plaintext_http1(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let body = format!("{PLAINTEXT_ON_TLS}\n");
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(PLAINTEXT_ANSWER_LIMIT, stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_plaintext_http2_and_http1_from_tls() {
        assert_eq!(opening(b"PRI * HTTP/2.0\r\n"), Opening::PlaintextHttp2);
        assert_eq!(
            opening(b"PRI"),
            Opening::PlaintextHttp2,
            "a partial preface"
        );
        assert_eq!(opening(b"GET / HTTP/1.1\r\n"), Opening::PlaintextHttp1);
        assert_eq!(opening(b"POST /x"), Opening::PlaintextHttp1);
        // A TLS 1.2/1.3 ClientHello record header.
        assert_eq!(opening(&[0x16, 0x03, 0x01, 0x02, 0x00]), Opening::Other);
        assert_eq!(opening(b""), Opening::Other);
        assert_eq!(opening(b"PRX"), Opening::PlaintextHttp1);
    }
}
