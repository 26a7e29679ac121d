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

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), unique-local, documentation, benchmarking, multicast, reserved or
/// unspecified, nor an IPv4-mapped form of one. Where an outside party chooses the URL (a
/// client ID metadata document), only these are connected to.
pub fn public_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

/// A resolver that answers only public addresses (and loopback ones, with
/// `allow_loopback`), so a name cannot lead an outbound call into the private network
/// (DNS rebinding included: the addresses connected to are the ones checked here).
pub struct PublicOnly {
    pub allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| public_address(a.ip()) || (allow_loopback && a.ip().is_loopback()))
                .collect();
            if addrs.is_empty() {
                return Err("the name has no public address".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
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

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
        ] {
            assert!(
                !super::public_address(private.parse().unwrap()),
                "{private}"
            );
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(super::public_address(public.parse().unwrap()), "{public}");
        }
    }
}
