//! Reading the body of an answer from a server outside our control (a provider's token,
//! userinfo, discovery or JWKS endpoint, or a tool's API) with a byte cap. The one place
//! both `oauth` and `executor` read such bodies, so neither can forget the cap.
//!
//! The body is read chunk by chunk and reading stops at the first chunk that would pass
//! the cap: an endless or huge chunked answer (no `Content-Length`) costs at most the cap
//! in memory, and dropping the response closes the connection instead of draining it.

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Over the cap, by `Content-Length` or by what arrived.
    TooLarge,
    /// The client's timeout passed while reading.
    Timeout,
    /// The connection failed while reading.
    Interrupted,
}

/// Reads `resp`'s body, at most `cap` bytes; more is [`BodyError::TooLarge`].
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        if e.is_timeout() {
            BodyError::Timeout
        } else {
            BodyError::Interrupted
        }
    })? {
        if bytes.len().saturating_add(chunk.len()) > cap {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Largest answer read from a provider's token, userinfo, discovery or JWKS endpoint.
pub const MAX_PROVIDER_RESPONSE: usize = 1 << 20;

/// A provider's JSON answer, read up to [`MAX_PROVIDER_RESPONSE`] bytes; `Err` is a short
/// reason code, safe to show (`response_too_large`, `malformed_response`, …).
pub async fn read_json(resp: reqwest::Response) -> Result<serde_json::Value, String> {
    let bytes = read_capped(resp, MAX_PROVIDER_RESPONSE)
        .await
        .map_err(|e| {
            match e {
                BodyError::TooLarge => "response_too_large",
                BodyError::Timeout => "response_timeout",
                BodyError::Interrupted => "response_interrupted",
            }
            .to_owned()
        })?;
    serde_json::from_slice(&bytes).map_err(|_| "malformed_response".to_owned())
}

/// `GET url` for JSON (discovery, JWKS); `Err` as in [`read_json`], or `unreachable`,
/// `status_N`.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let resp = http
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|_| "unreachable".to_owned())?;
    if !resp.status().is_success() {
        return Err(format!("status_{}", resp.status().as_u16()));
    }
    read_json(resp).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{BodyError, read_capped};

    /// Answers one request with `head` and then `chunks` chunked (or, with a
    /// `Content-Length` in `head`, nothing more); returns the URL.
    async fn serve(head: &'static str, chunks: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(head.as_bytes()).await;
            for _ in 0..chunks {
                if sock.write_all(b"400\r\n").await.is_err()
                    || sock.write_all(&[b'x'; 1024]).await.is_err()
                    || sock.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
            let _ = sock.write_all(b"0\r\n\r\n").await;
            // Keep the connection open: the reader must not wait for more.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        url
    }

    /// How many bytes were read, so a failure prints a number, not the body.
    async fn read(url: &str, cap: usize) -> Result<usize, BodyError> {
        let resp = reqwest::get(url).await.unwrap();
        read_capped(resp, cap).await.map(|b| {
            assert!(b.iter().all(|&c| c == b'x'));
            b.len()
        })
    }

    const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn reads_up_to_the_cap_and_no_further() {
        assert_eq!(read(&serve(CHUNKED, 4).await, 4096).await, Ok(4096));
        // Chunked, no length: refused at the chunk that passes the cap.
        assert_eq!(
            read(&serve(CHUNKED, 1 << 12).await, 4096).await,
            Err(BodyError::TooLarge)
        );
        // A declared length over the cap is refused before any of the body is read.
        let long = "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n";
        assert_eq!(
            read(&serve(long, 0).await, 4096).await,
            Err(BodyError::TooLarge)
        );
    }
}
