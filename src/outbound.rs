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
