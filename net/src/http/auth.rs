//! The bearer token that mutating endpoints require: read from a file, or created in one (mode
//! 0600) on first run. The token is compared in constant time and never printed or returned.

use std::fs;
use std::io::Read;
use std::path::Path;

use rand::RngCore;

use super::limits::{TOKEN_BYTES, TOKEN_FILE_BYTES_MAX};
use crate::error::NetError;
use crate::identity::write_secret;

/// A secret that authorizes changes through the API.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(hidden)")
    }
}

impl Token {
    /// The token in `path` (surrounding whitespace ignored); the file must exist and hold one.
    pub fn load(path: &Path) -> Result<Token, NetError> {
        let file = fs::File::open(path).map_err(NetError::io("open the token file", path))?;
        let mut text = String::new();
        file.take(TOKEN_FILE_BYTES_MAX).read_to_string(&mut text).map_err(NetError::io("read the token file", path))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(NetError::Corrupt { path: path.to_owned(), reason: "the token file is empty".into() });
        }
        Ok(Token(token.to_owned()))
    }

    /// The token in `path`, created there first (random, readable by the owner only) when the
    /// file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Token, NetError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        write_secret(path, &bytes)?;
        Token::load(path)
    }

    /// Whether an `Authorization` header value carries this token (`Bearer TOKEN`).
    pub fn authorizes(&self, header: &str) -> bool {
        let Some(presented) = header.strip_prefix("Bearer ") else { return false };
        let (a, b) = (presented.trim().as_bytes(), self.0.as_bytes());
        // Constant time for tokens of the right length: every byte is compared.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_is_private_stable_and_authorizes_only_itself() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("token");
        let token = Token::load_or_create(&path).expect("created");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Token::load_or_create(&path).expect("read back");
        let header = format!("Bearer {}", fs::read_to_string(&path).expect("read").trim());
        assert!(token.authorizes(&header) && again.authorizes(&header));
        assert!(!token.authorizes("Bearer wrong"));
        assert!(!token.authorizes(header.trim_start_matches("Bearer ")), "the scheme is required");
        assert_eq!(format!("{token:?}"), "Token(hidden)");
    }
}
