//! The plaintext inside an envelope: one provider token set, and its byte encoding.
//!
//! Anyone may build a [`TokenSet`] (the OAuth callback does, to store it); only the
//! executor can get one back out of the vault. The encoding is a small length-prefixed
//! format written into a zeroizing buffer, so no serializer ever holds a token.

use zeroize::Zeroizing;

use crate::secret::{AccessToken, IdToken, RefreshToken};

/// A provider's tokens for one connection.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub id_token: Option<IdToken>,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Unix seconds when the access token expires, if the provider said.
    pub expires_at: Option<i64>,
    /// Scopes granted.
    pub scopes: Vec<String>,
}

const ENCODING_V1: u8 = 1;

/// The plaintext did not decode. Only reachable after authenticated decryption succeeded,
/// so it means a bug or a foreign writer, never an attacker's bit flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the decrypted token set is malformed")]
pub struct MalformedTokenSet;

impl TokenSet {
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        self.encode_with(&self.scopes)
    }

    /// The encoding with `scopes` in place of the set's own.
    pub(crate) fn encode_with(&self, scopes: &[String]) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        out.push(ENCODING_V1);
        put(&mut out, self.access_token.reveal().as_bytes());
        put_opt(
            &mut out,
            self.refresh_token.as_ref().map(|t| t.reveal().as_bytes()),
        );
        put_opt(
            &mut out,
            self.id_token.as_ref().map(|t| t.reveal().as_bytes()),
        );
        put(&mut out, self.token_type.as_bytes());
        match self.expires_at {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&u32::try_from(scopes.len()).unwrap_or(0).to_be_bytes());
        for s in scopes {
            put(&mut out, s.as_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<TokenSet, MalformedTokenSet> {
        let mut r = Reader(bytes);
        if r.byte()? != ENCODING_V1 {
            return Err(MalformedTokenSet);
        }
        let access_token = AccessToken::new(r.string()?);
        let refresh_token = r.opt_string()?.map(RefreshToken::new);
        let id_token = r.opt_string()?.map(IdToken::new);
        let token_type = r.string()?;
        let expires_at = match r.byte()? {
            0 => None,
            1 => Some(i64::from_be_bytes(r.array::<8>()?)),
            _ => return Err(MalformedTokenSet),
        };
        let n = u32::from_be_bytes(r.array::<4>()?);
        let mut scopes = Vec::new();
        for _ in 0..n {
            scopes.push(r.string()?);
        }
        if !r.0.is_empty() {
            return Err(MalformedTokenSet);
        }
        Ok(TokenSet {
            access_token,
            refresh_token,
            id_token,
            token_type,
            expires_at,
            scopes,
        })
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.push(1);
            put(out, b);
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, MalformedTokenSet> {
        let (&b, rest) = self.0.split_first().ok_or(MalformedTokenSet)?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MalformedTokenSet> {
        let (a, rest) = self.0.split_first_chunk::<N>().ok_or(MalformedTokenSet)?;
        self.0 = rest;
        Ok(*a)
    }

    fn string(&mut self) -> Result<String, MalformedTokenSet> {
        let len = usize::try_from(u32::from_be_bytes(self.array::<4>()?))
            .map_err(|_| MalformedTokenSet)?;
        let (s, rest) = self.0.split_at_checked(len).ok_or(MalformedTokenSet)?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| MalformedTokenSet)
    }

    fn opt_string(&mut self) -> Result<Option<String>, MalformedTokenSet> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(MalformedTokenSet),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let set = TokenSet {
            access_token: AccessToken::new("at".into()),
            refresh_token: Some(RefreshToken::new("rt".into())),
            id_token: None,
            token_type: "Bearer".into(),
            expires_at: Some(1_700_000_000),
            scopes: vec!["a".into(), "b c".into()],
        };
        let bytes = set.encode();
        let back = TokenSet::decode(&bytes).unwrap();
        assert_eq!(back.access_token.reveal(), "at");
        assert_eq!(back.refresh_token.unwrap().reveal(), "rt");
        assert!(back.id_token.is_none());
        assert_eq!(back.expires_at, Some(1_700_000_000));
        assert_eq!(back.scopes, vec!["a", "b c"]);
        for len in 0..bytes.len() {
            assert!(TokenSet::decode(&bytes[..len]).is_err());
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(TokenSet::decode(&longer).is_err());
    }
}
