//! Who may review: the identity of each request (an SSO proxy's header, a signed-in session, or
//! a typed name on loopback), the token file, sessions, and CSRF tokens.
//!
//! Sessions live in this process's memory and CSRF tokens are keyed by a per-process secret:
//! a restart signs everyone out, and several instances need session affinity (README).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{AuthMode, ConsoleConfig, MAX_NAME_CHARS};

/// The form field every POST carries.
pub const CSRF_FIELD: &str = "csrf";

/// How often the token file's modification time is looked at.
const TOKEN_FILE_CHECK: Duration = Duration::from_secs(5);

/// Signed-in sessions per process, at most; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// A signed-in reviewer, as one request sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub name: String,
    /// The token this reviewer's forms must carry.
    pub csrf: String,
}

/// Why a request has no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIdentity {
    /// `auth = "header"` and the header is missing or unusable: nothing can fix it here.
    MissingHeader,
    /// `auth = "none"` / `"tokens"` and no live session: sign in.
    SignInNeeded,
}

/// The reviewers allowed by `auth = "tokens"`: `name sha256:<hex>` per line, `#` comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFile {
    digests: HashMap<String, [u8; 32]>,
}

impl TokenFile {
    /// Reads and checks the file; the error names the line and never echoes a hash.
    pub fn load(path: &Path) -> Result<TokenFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        TokenFile::parse(&text)
    }

    pub fn parse(text: &str) -> Result<TokenFile, String> {
        let mut digests = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: &str| format!("line {}: {message}", number + 1);
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected `name sha256:<64 hex digits>`"));
            };
            if valid_identity(name).is_none() {
                return Err(at(&format!(
                    "reviewer names are 1-{MAX_NAME_CHARS} visible characters"
                )));
            }
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(|hex_digits| hex::decode(hex_digits).ok())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    at("the hash must be sha256: and 64 hex digits (printf %s TOKEN | sha256sum)")
                })?;
            if digests.insert(name.to_owned(), digest).is_some() {
                return Err(at(&format!("{name:?} is listed twice")));
            }
        }
        if digests.is_empty() {
            return Err("lists no reviewer".into());
        }
        Ok(TokenFile { digests })
    }

    /// Whether `token` is `name`'s. Constant time in the token.
    pub fn verify(&self, name: &str, token: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.digests.get(name) {
            Some(expected) => bool::from(expected.ct_eq(&given)),
            None => {
                // Same work for an unknown name, so timing does not reveal who exists.
                let _ = [0u8; 32].ct_eq(&given);
                false
            }
        }
    }

    fn digest_of(&self, name: &str) -> Option<[u8; 32]> {
        self.digests.get(name).copied()
    }
}

/// The token file as last read, re-read when it changes on disk.
struct Tokens {
    path: PathBuf,
    file: TokenFile,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl Tokens {
    fn refresh(&mut self) {
        if self.checked.elapsed() < TOKEN_FILE_CHECK {
            return;
        }
        self.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.modified {
            return;
        }
        match TokenFile::load(&self.path) {
            Ok(file) => {
                tracing::info!(path = %self.path.display(), "reviewer token file reloaded");
                self.file = file;
                self.modified = modified;
            }
            // A file caught half-written keeps the previous list; the next check retries.
            Err(message) => tracing::warn!(
                path = %self.path.display(),
                problem = %message,
                "reviewer token file not reloaded"
            ),
        }
    }
}

struct Session {
    reviewer: String,
    csrf: String,
    /// The token's digest at sign-in: a reviewer removed from the file (or given a new token)
    /// is signed out.
    digest: Option<[u8; 32]>,
    expires: Instant,
}

/// Sign-in failures a reviewer is told about (never which part was wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInError {
    BadName,
    BadCredentials,
}

/// The console's authentication: one per process.
pub struct Auth {
    mode: AuthMode,
    header: http::HeaderName,
    tokens: Option<Mutex<Tokens>>,
    sessions: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    secure: bool,
    /// Keys the CSRF tokens of `auth = "header"` (per process).
    key: [u8; 32],
}

impl Auth {
    /// Built from a checked config; fails only if the token file became unreadable since.
    pub fn new(config: &ConsoleConfig) -> Result<Auth, String> {
        let tokens = match (&config.tokens_file, config.auth) {
            (Some(path), AuthMode::Tokens) => {
                let file = TokenFile::load(path)
                    .map_err(|e| format!("console.tokens_file {}: {e}", path.display()))?;
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                Some(Mutex::new(Tokens {
                    path: path.clone(),
                    file,
                    modified,
                    checked: Instant::now(),
                }))
            }
            (None, AuthMode::Tokens) => return Err("console.tokens_file is required".into()),
            _ => None,
        };
        let header = http::HeaderName::from_bytes(config.identity_header.as_bytes())
            .map_err(|_| "console.identity_header is not a header name".to_owned())?;
        Ok(Auth {
            mode: config.auth,
            header,
            tokens,
            sessions: Mutex::new(HashMap::new()),
            ttl: config.session_ttl,
            secure: config.cookie_secure,
            key: random_bytes(),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn identity_header(&self) -> &str {
        self.header.as_str()
    }

    /// Who is asking.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Reviewer, NoIdentity> {
        match self.mode {
            AuthMode::Header => {
                let name = headers
                    .get(&self.header)
                    .and_then(|v| v.to_str().ok())
                    .and_then(valid_identity)
                    .ok_or(NoIdentity::MissingHeader)?;
                Ok(Reviewer {
                    name: name.to_owned(),
                    csrf: self.keyed_token(name),
                })
            }
            AuthMode::None | AuthMode::Tokens => {
                let id = cookie(headers, &self.session_cookie()).ok_or(NoIdentity::SignInNeeded)?;
                // One lock at a time (sign_in takes them in the other order).
                let (reviewer, expires, digest) = {
                    let sessions = self.sessions.lock().expect("sessions lock");
                    let session = sessions.get(id).ok_or(NoIdentity::SignInNeeded)?;
                    let reviewer = Reviewer {
                        name: session.reviewer.clone(),
                        csrf: session.csrf.clone(),
                    };
                    (reviewer, session.expires, session.digest)
                };
                let revoked = self.tokens.as_ref().is_some_and(|tokens| {
                    let mut tokens = tokens.lock().expect("tokens lock");
                    tokens.refresh();
                    tokens.file.digest_of(&reviewer.name) != digest
                });
                if expires <= Instant::now() || revoked {
                    self.sessions.lock().expect("sessions lock").remove(id);
                    return Err(NoIdentity::SignInNeeded);
                }
                Ok(reviewer)
            }
        }
    }

    /// Signs `name` in (checking `token` when `auth = "tokens"`); returns the session cookie.
    pub fn sign_in(&self, name: &str, token: &str) -> Result<String, SignInError> {
        let name = valid_identity(name.trim()).ok_or(SignInError::BadName)?;
        let digest = match &self.tokens {
            Some(tokens) => {
                let mut tokens = tokens.lock().expect("tokens lock");
                tokens.refresh();
                if !tokens.file.verify(name, token) {
                    return Err(SignInError::BadCredentials);
                }
                tokens.file.digest_of(name)
            }
            None if self.mode == AuthMode::None => None,
            None => return Err(SignInError::BadCredentials),
        };
        let id = hex::encode(random_bytes());
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                reviewer: name.to_owned(),
                csrf: hex::encode(random_bytes()),
                digest,
                expires: now + self.ttl,
            },
        );
        Ok(self.set_cookie(&self.session_cookie(), &id, self.ttl))
    }

    /// Ends the request's session; returns the cookie that clears it.
    pub fn sign_out(&self, headers: &HeaderMap) -> String {
        if let Some(id) = cookie(headers, &self.session_cookie()) {
            self.sessions.lock().expect("sessions lock").remove(id);
        }
        self.set_cookie(&self.session_cookie(), "", Duration::ZERO)
    }

    /// Whether a form's CSRF token is `expected`. Constant time.
    pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
        given.is_some_and(|given| bool::from(expected.as_bytes().ct_eq(given.as_bytes())))
    }

    /// The sign-in form's CSRF token (double-submit: the same value in a cookie and the form)
    /// and the cookie that carries it.
    pub fn sign_in_token(&self) -> (String, String) {
        let token = hex::encode(random_bytes());
        let cookie = self.set_cookie(&self.sign_in_cookie(), &token, Duration::from_secs(3600));
        (token, cookie)
    }

    /// The sign-in form's expected CSRF token: the value of its cookie.
    pub fn sign_in_expected<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, &self.sign_in_cookie())
    }

    fn keyed_token(&self, name: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(b"reviewloop-console-csrf\0");
        mac.update(name.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn session_cookie(&self) -> String {
        self.cookie_name("reviewloop_session")
    }

    fn sign_in_cookie(&self) -> String {
        self.cookie_name("reviewloop_signin")
    }

    /// `__Host-` binds a Secure cookie to this host and path `/`.
    fn cookie_name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    fn set_cookie(&self, name: &str, value: &str, max_age: Duration) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
            max_age.as_secs()
        )
    }
}

/// A usable reviewer name: 1–128 visible characters, no whitespace or controls.
pub fn valid_identity(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control());
    ok.then_some(name)
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // The thread RNG is a CSPRNG seeded from the OS.
    rand::fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn config(auth: AuthMode, tokens: Option<PathBuf>) -> ConsoleConfig {
        ConsoleConfig {
            auth,
            tokens_file: tokens,
            ..ConsoleConfig::default()
        }
    }

    fn with_cookie(set_cookie: &str) -> HeaderMap {
        let pair = set_cookie.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap(),
        );
        headers
    }

    #[test]
    fn token_files_are_checked_line_by_line() {
        let good = format!(
            "# reviewers\nalice sha256:{}\n\nbob  sha256:{}\n",
            sha("a"),
            sha("b")
        );
        let file = TokenFile::parse(&good).unwrap();
        assert!(file.verify("alice", "a"));
        assert!(!file.verify("alice", "b"));
        assert!(!file.verify("carol", "a"));
        for (bad, message) in [
            ("alice\n", "line 1: expected"),
            ("alice sha256:00\n", "line 1: the hash must be"),
            ("alice md5:abc\n", "line 1: the hash must be"),
            (
                &format!("a sha256:{0}\na sha256:{0}\n", sha("x")),
                "line 2: \"a\" is listed twice",
            ),
            ("# nobody\n", "lists no reviewer"),
        ] {
            let err = TokenFile::parse(bad).unwrap_err();
            assert!(err.starts_with(message), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_token_signs_in_and_the_session_cookie_is_httponly_and_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reviewers");
        std::fs::write(&path, format!("alice sha256:{}\n", sha("s3cret"))).unwrap();
        let auth = Auth::new(&config(AuthMode::Tokens, Some(path))).unwrap();
        assert_eq!(
            auth.sign_in("alice", "wrong"),
            Err(SignInError::BadCredentials)
        );
        assert_eq!(
            auth.sign_in("mallory", "s3cret"),
            Err(SignInError::BadCredentials)
        );
        assert_eq!(
            auth.identify(&HeaderMap::new()),
            Err(NoIdentity::SignInNeeded)
        );
        let set_cookie = auth.sign_in("alice", "s3cret").unwrap();
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        let headers = with_cookie(&set_cookie);
        let reviewer = auth.identify(&headers).unwrap();
        assert_eq!(reviewer.name, "alice");
        assert_eq!(reviewer.csrf.len(), 64);
        assert!(Auth::csrf_matches(&reviewer.csrf, Some(&reviewer.csrf)));
        assert!(!Auth::csrf_matches(&reviewer.csrf, Some("00")));
        assert!(!Auth::csrf_matches(&reviewer.csrf, None));
        auth.sign_out(&headers);
        assert_eq!(auth.identify(&headers), Err(NoIdentity::SignInNeeded));
    }

    #[test]
    fn a_reviewer_removed_from_the_token_file_is_signed_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reviewers");
        std::fs::write(&path, format!("alice sha256:{}\n", sha("t"))).unwrap();
        let auth = Auth::new(&config(AuthMode::Tokens, Some(path.clone()))).unwrap();
        let headers = with_cookie(&auth.sign_in("alice", "t").unwrap());
        assert!(auth.identify(&headers).is_ok());
        std::fs::write(&path, format!("bob sha256:{}\n", sha("u"))).unwrap();
        // Make the change visible without waiting for the check interval.
        {
            let mut tokens = auth.tokens.as_ref().unwrap().lock().unwrap();
            tokens.checked = Instant::now() - TOKEN_FILE_CHECK;
            tokens.modified = None;
        }
        assert_eq!(auth.identify(&headers), Err(NoIdentity::SignInNeeded));
        assert!(auth.sign_in("bob", "u").is_ok());
    }

    #[test]
    fn header_mode_trusts_only_a_usable_header() {
        let auth = Auth::new(&config(AuthMode::Header, None)).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(auth.identify(&headers), Err(NoIdentity::MissingHeader));
        headers.insert("x-forwarded-user", HeaderValue::from_static(""));
        assert_eq!(auth.identify(&headers), Err(NoIdentity::MissingHeader));
        headers.insert(
            "x-forwarded-user",
            HeaderValue::from_static("alice@example.com"),
        );
        let alice = auth.identify(&headers).unwrap();
        assert_eq!(alice.name, "alice@example.com");
        headers.insert("x-forwarded-user", HeaderValue::from_static("bob"));
        let bob = auth.identify(&headers).unwrap();
        assert_ne!(alice.csrf, bob.csrf, "CSRF tokens are per identity");
        // Sessions do not apply: a cookie alone is no identity.
        assert!(auth.sign_in("alice", "").is_err());
    }

    #[test]
    fn none_mode_signs_in_any_visible_name() {
        let auth = Auth::new(&config(AuthMode::None, None)).unwrap();
        assert_eq!(auth.sign_in("  ", ""), Err(SignInError::BadName));
        assert_eq!(auth.sign_in("a b", ""), Err(SignInError::BadName));
        assert_eq!(
            auth.sign_in(&"x".repeat(129), ""),
            Err(SignInError::BadName)
        );
        let headers = with_cookie(&auth.sign_in("you", "").unwrap());
        assert_eq!(auth.identify(&headers).unwrap().name, "you");
    }

    #[test]
    fn secure_cookies_are_host_bound() {
        let auth = Auth::new(&ConsoleConfig {
            auth: AuthMode::None,
            cookie_secure: true,
            ..ConsoleConfig::default()
        })
        .unwrap();
        let set_cookie = auth.sign_in("you", "").unwrap();
        assert!(
            set_cookie.starts_with("__Host-reviewloop_session="),
            "{set_cookie}"
        );
        assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
        assert_eq!(
            auth.identify(&with_cookie(&set_cookie)).unwrap().name,
            "you"
        );
    }
}
