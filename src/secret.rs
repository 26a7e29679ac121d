//! Newtypes for every secret the service handles.
//!
//! One macro stamps them out so they all behave alike: the value lives in a
//! [`secrecy::SecretString`] (zeroized on drop), `Debug` prints only the type name, there is
//! no `Display`, `Serialize` or `Clone`, and the plaintext is reachable only through
//! `pub(crate) reveal()`, whose call sites are few and reviewed (`grep -rn 'reveal()' src`).
//! Equality, where a secret must be compared at all, is constant-time.

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(SecretString);

        impl $name {
            /// Takes ownership of the secret; the `String` is moved, not copied.
            pub fn new(value: String) -> Self {
                Self(SecretString::from(value))
            }

            /// The plaintext. Call only where the secret must leave the process or be
            /// sealed; never log or format it.
            pub(crate) fn reveal(&self) -> &str {
                self.0.expose_secret()
            }

            /// Constant-time comparison.
            pub fn ct_eq(&self, other: &Self) -> bool {
                crate::crypto::constant_time_eq(self.reveal().as_bytes(), other.reveal().as_bytes())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }
    };
}

secret_string!(
    /// An OAuth access token.
    AccessToken
);
secret_string!(
    /// An OAuth refresh token.
    RefreshToken
);
secret_string!(
    /// An OpenID Connect ID token (a signed JWT carrying personal data).
    IdToken
);
secret_string!(
    /// An OAuth client secret from configuration.
    ClientSecret
);
secret_string!(
    /// An agent service's bearer secret. Shown once at registration; only its SHA-256
    /// digest is stored.
    AgentSecret
);
secret_string!(
    /// A delegation token, held by an agent. Only its SHA-256 digest is stored.
    DelegationToken
);
secret_string!(
    /// An access token Strongbox issued to an agent under a grant (SPEC §11). Only its
    /// SHA-256 digest is stored.
    GrantAccessToken
);
secret_string!(
    /// A refresh token Strongbox issued to an agent under a grant. Only its SHA-256 digest
    /// is stored; it is rotated on every use.
    GrantRefreshToken
);
secret_string!(
    /// An authorization code Strongbox issued (one-time, 60 s). Only its digest is stored.
    AuthorizationCode
);
secret_string!(
    /// A secret an OAuth client presents at the token endpoint: its agent secret, a
    /// `private_key_jwt` assertion, a code, a refresh token or a PKCE verifier.
    ClientPresented
);
secret_string!(
    /// The secret in a browser's session cookie. Only its SHA-256 digest is stored.
    SessionToken
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let token = AccessToken::new("ya29.very-secret".into());
        let printed = format!("{token:?}");
        assert_eq!(printed, "AccessToken([REDACTED])");
        assert!(!printed.contains("secret"));
        assert_eq!(token.reveal(), "ya29.very-secret");
    }

    #[test]
    fn comparison_is_by_value() {
        let a = RefreshToken::new("r1".into());
        assert!(a.ct_eq(&RefreshToken::new("r1".into())));
        assert!(!a.ct_eq(&RefreshToken::new("r2".into())));
    }
}
