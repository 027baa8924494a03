//! Sans-IO digest authentication for the registrar and proxy (RFC 3261 §22,
//! RFC 2617, RFC 7616, RFC 8760).
//!
//! No sockets and no clock reads: every call that depends on time takes
//! `now: Duration`, the time since an epoch of the caller's choice (e.g. a
//! process-start `Instant`'s `elapsed()`). All instances that share a secret
//! must share that epoch, and it should be monotonic: a nonce that appears to
//! come from the future is treated as stale.
//!
//! Nonces are stateless: `hex(issued_ms ‖ serial ‖ HMAC-SHA256(secret,
//! issued_ms ‖ serial ‖ realm)[..16])`. Any instance holding the secret can
//! check one, and nobody without it can forge one. Replay protection (the
//! nonce-count table) is per [`NonceManager`] instance, so a client's
//! requests should reach the same instance (route by source address).
//!
//! Typical flow: a request without credentials gets [`NonceManager::challenges`]
//! (one `WWW-Authenticate` / `Proxy-Authenticate` header per algorithm,
//! MD5 first); a request with credentials goes to
//! [`NonceManager::verify`], and on [`AuthError::wants_stale_challenge`] the
//! caller re-challenges with `stale=true`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use hmac::Mac as _;
use hmac::digest::KeyInit;
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// How long a nonce is accepted after it was issued, unless configured.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// How many nonces' counters are remembered at most, unless configured.
pub const DEFAULT_MAX_TRACKED: usize = 65_536;

/// Length of a raw nonce: issued_ms (8) ‖ serial (8) ‖ truncated MAC (16).
const NONCE_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// A digest algorithm token (`algorithm=` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`, the RFC 2617 default when the parameter is absent.
    Md5,
    /// `MD5-sess`: HA1 is re-hashed with the nonce and cnonce.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// The algorithms to offer, in this order. RFC 8760 lets a server list
    /// them by its own preference, and a client answers the topmost one it
    /// supports; but clients that read only the topmost challenge and know
    /// only MD5 are common (sipp, older phones, which fail on a SHA-256
    /// one), so MD5 comes first and SHA-256 is there for clients whose own
    /// policy prefers it. Credentials of either are verified. The `-sess`
    /// variants are accepted but not offered.
    pub const OFFERED: [Algorithm; 2] = [Algorithm::Md5, Algorithm::Sha256];

    /// Parses a header token, case-insensitively. `None` for anything else
    /// (e.g. `SHA-512-256`, which is not supported).
    pub fn parse(token: &str) -> Option<Self> {
        [Self::Md5, Self::Md5Sess, Self::Sha256, Self::Sha256Sess]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token))
    }

    /// The canonical header token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Whether this is a `-sess` variant (needs a cnonce).
    pub fn is_session(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }

    fn is_md5(self) -> bool {
        matches!(self, Self::Md5 | Self::Md5Sess)
    }

    /// H(p1:p2:…) as lowercase hex: every digest formula joins with colons.
    fn h(self, parts: &[&str]) -> String {
        if self.is_md5() {
            hash_hex::<Md5>(parts)
        } else {
            hash_hex::<Sha256>(parts)
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The digest parameters of an `Authorization` / `Proxy-Authorization`
/// header, unquoted and unescaped ([`unq`]). Absent optional parameters
/// are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// `username`, compared as given (no case folding).
    pub username: &'a str,
    /// `realm`.
    pub realm: &'a str,
    /// `nonce`, as issued by [`NonceManager`].
    pub nonce: &'a str,
    /// `uri` (the digest-uri; the caller may check it against the
    /// Request-URI).
    pub uri: &'a str,
    /// `response`, hex.
    pub response: &'a str,
    /// `algorithm`; absent means MD5.
    pub algorithm: Option<&'a str>,
    /// `cnonce`; required with `qop` and with `-sess` algorithms.
    pub cnonce: Option<&'a str>,
    /// `qop`; only `auth` is supported.
    pub qop: Option<&'a str>,
    /// `nc`, 8 hex digits; required with `qop`.
    pub nc: Option<&'a str>,
    /// `opaque`; ignored, since we never send one.
    pub opaque: Option<&'a str>,
}

/// An agent's provisioned credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret<'a> {
    /// The clear-text password: every algorithm can be verified.
    Password(&'a str),
    /// HA1s (RFC 7616 §3.4.2): H(`extension:realm:password`) as hex.
    /// Each verifies its own hash's algorithms only (`md5` MD5 and
    /// MD5-sess, `sha256` SHA-256 and SHA-256-sess), so offer the agent
    /// [`Secret::algorithms`] only: another algorithm is answered
    /// [`AuthError::AlgorithmUnavailable`].
    Ha1 {
        /// MD5, 32 hex digits.
        md5: Option<&'a str>,
        /// SHA-256, 64 hex digits.
        sha256: Option<&'a str>,
    },
}

impl<'a> Secret<'a> {
    /// An MD5 HA1 alone.
    pub fn md5_ha1(hex: &'a str) -> Self {
        Secret::Ha1 {
            md5: Some(hex),
            sha256: None,
        }
    }

    /// The algorithms to offer an agent with this secret, in order: those
    /// it can verify. With no HA1 at all (which provisioning refuses) it
    /// verifies nothing, and is offered what a password is, like anyone.
    pub fn algorithms(&self) -> &'static [Algorithm] {
        match self {
            Secret::Ha1 {
                md5: Some(_),
                sha256: None,
            } => &[Algorithm::Md5],
            Secret::Ha1 {
                md5: None,
                sha256: Some(_),
            } => &[Algorithm::Sha256],
            Secret::Password(_) | Secret::Ha1 { .. } => &Algorithm::OFFERED,
        }
    }

    /// Whether a response computed with `algorithm` can be verified.
    pub fn supports(&self, algorithm: Algorithm) -> bool {
        match self {
            Secret::Password(_) => true,
            Secret::Ha1 { md5, sha256 } => {
                if algorithm.is_md5() {
                    md5.is_some()
                } else {
                    sha256.is_some()
                }
            }
        }
    }
}

/// Why a set of credentials was refused.
///
/// Suggested answers: [`Malformed`](Self::Malformed) → 400; everything else
/// → a fresh 401/407 challenge (with `stale=true` when
/// [`wants_stale_challenge`](Self::wants_stale_challenge)), or 403 for
/// repeated [`WrongPassword`](Self::WrongPassword).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A parameter is missing or unusable (the name says which).
    #[error("malformed digest credentials: {0}")]
    Malformed(&'static str),
    /// The `algorithm` token is not one we know.
    #[error("unknown digest algorithm")]
    UnknownAlgorithm,
    /// Known algorithm, but the provisioned secret cannot verify it
    /// (SHA-256 against an MD5 HA1 alone, or MD5 against a SHA-256 one).
    #[error("digest algorithm not available for this agent")]
    AlgorithmUnavailable,
    /// The provisioned HA1 is not hex of its hash's length (32 digits for
    /// MD5, 64 for SHA-256): a configuration error.
    #[error("provisioned HA1 is not 32 (MD5) or 64 (SHA-256) hex digits")]
    BadSecret,
    /// `realm` is not the realm we challenge with.
    #[error("realm mismatch")]
    RealmMismatch,
    /// Ours, and the response was right, but the nonce has expired or can no
    /// longer be checked for replay: re-challenge with `stale=true` so the
    /// client retries without asking the user.
    #[error("stale nonce")]
    StaleNonce,
    /// Not a nonce we issued for this realm (forged, corrupted, or from
    /// before a secret change).
    #[error("invalid nonce")]
    InvalidNonce,
    /// `nc` is not above the highest already accepted for this nonce.
    #[error("replayed nonce count")]
    Replay,
    /// The response does not match the secret.
    #[error("wrong password")]
    WrongPassword,
}

impl AuthError {
    /// Whether the caller should answer with a fresh challenge carrying
    /// `stale=true` (RFC 7616 §3.3: only when the digest itself was valid).
    pub fn wants_stale_challenge(&self) -> bool {
        matches!(self, AuthError::StaleNonce)
    }
}

/// One challenge: the value of a `WWW-Authenticate` or `Proxy-Authenticate`
/// header, rendered by `Display`, e.g.
/// `Digest realm="cc.example", nonce="…", algorithm=SHA-256, qop="auth"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The realm (escaped when rendered).
    pub realm: String,
    /// The nonce (hex, needs no escaping).
    pub nonce: String,
    /// The algorithm offered.
    pub algorithm: Algorithm,
    /// Whether to add `stale=true`.
    pub stale: bool,
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest realm=\"")?;
        for c in self.realm.chars() {
            // Control characters could split the header: drop them.
            if c.is_control() {
                continue;
            }
            if c == '"' || c == '\\' {
                f.write_char('\\')?;
            }
            f.write_char(c)?;
        }
        write!(
            f,
            "\", nonce=\"{}\", algorithm={}, qop=\"auth\"",
            self.nonce, self.algorithm
        )?;
        if self.stale {
            f.write_str(", stale=true")?;
        }
        Ok(())
    }
}

/// A nonce's serial: the issuer in the top 16 bits, a counter below.
const ISSUER_SHIFT: u32 = 48;
const SERIAL_MASK: u64 = (1 << ISSUER_SHIFT) - 1;

/// Orders nonces by issue time, so expiry pruning pops from the front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct NonceId {
    issued_ms: u64,
    serial: u64,
}

/// Issues and checks nonces, and remembers nonce counts against replay.
pub struct NonceManager {
    /// Keyed once; cloned per MAC so the key schedule is not redone.
    mac: HmacSha256,
    lifetime_ms: u64,
    max_tracked: usize,
    single_use_without_qop: bool,
    /// Makes nonces issued in the same millisecond distinct.
    serial: u64,
    /// Who issues: each core's manager has its own, written into the
    /// nonce's top serial bits, and counts only its own nonces.
    issuer: u16,
    /// Highest nc accepted per nonce (u32::MAX: used once without qop).
    seen: BTreeMap<NonceId, u32>,
    /// Nonces at or below this were evicted for space: their history is
    /// lost, so they are refused as stale rather than trusted again.
    evicted_up_to: Option<NonceId>,
}

impl fmt::Debug for NonceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Leaves the key out on purpose.
        f.debug_struct("NonceManager")
            .field("lifetime_ms", &self.lifetime_ms)
            .field("max_tracked", &self.max_tracked)
            .field("single_use_without_qop", &self.single_use_without_qop)
            .field("tracked", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl NonceManager {
    /// A manager with a fresh 256-bit secret from the OS, the default
    /// lifetime and table cap, and single-use nonces without qop.
    pub fn new() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::from_secret(seed))
    }

    /// A manager keyed with `secret`, which must be random and kept private.
    /// Give every instance (e.g. one per core) the same secret and clock
    /// epoch so each can check the others' nonces.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        // HMAC zero-pads short keys to the block size anyway; padding here
        // makes keying infallible.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&secret);
        Self {
            mac: <HmacSha256 as KeyInit>::new(&key.into()),
            lifetime_ms: millis(DEFAULT_NONCE_LIFETIME),
            max_tracked: DEFAULT_MAX_TRACKED,
            single_use_without_qop: true,
            serial: 0,
            issuer: 0,
            seen: BTreeMap::new(),
            evicted_up_to: None,
        }
    }

    /// Sets who issues (a core's index). Managers sharing a secret accept
    /// each other's nonces as genuine, but a nonce's counts are tracked
    /// only where it was issued: another manager answers
    /// [`AuthError::StaleNonce`], and the client fetches a nonce of its
    /// own. Otherwise a replay would find its count fresh on every other
    /// core.
    pub fn with_issuer(mut self, issuer: u16) -> Self {
        self.issuer = issuer;
        self
    }

    /// Sets how long a nonce stays valid after it is issued.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime_ms = millis(lifetime);
        self
    }

    /// Caps how many nonces' counts are remembered (at least 1). When full,
    /// the oldest nonces are forgotten and then refused as stale, so memory
    /// stays bounded without opening a replay window.
    pub fn with_max_tracked(mut self, max: usize) -> Self {
        self.max_tracked = max.max(1);
        self
    }

    /// Without `qop` (RFC 2069 style) there is no nonce count. When `true`
    /// (the default) such a nonce is accepted once and a reuse is answered
    /// [`AuthError::StaleNonce`], so the client silently fetches a new one.
    /// When `false` it is accepted until it expires, so replay is bounded by
    /// the nonce lifetime only.
    pub fn with_single_use_without_qop(mut self, single_use: bool) -> Self {
        self.single_use_without_qop = single_use;
        self
    }

    /// The nonce lifetime.
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_ms)
    }

    /// How many nonces' counts are remembered now.
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    /// One challenge with a fresh nonce.
    pub fn challenge(
        &mut self,
        now: Duration,
        realm: &str,
        algorithm: Algorithm,
        stale: bool,
    ) -> Challenge {
        let nonce = self.issue_nonce(now, realm);
        Challenge {
            realm: realm.to_owned(),
            nonce,
            algorithm,
            stale,
        }
    }

    /// One challenge per algorithm, sharing one fresh nonce, in the order
    /// given: pass [`Algorithm::OFFERED`] or the agent's
    /// [`Secret::algorithms`], and send one header per challenge.
    pub fn challenges(
        &mut self,
        now: Duration,
        realm: &str,
        algorithms: &[Algorithm],
        stale: bool,
    ) -> Vec<Challenge> {
        let nonce = self.issue_nonce(now, realm);
        algorithms
            .iter()
            .map(|&algorithm| Challenge {
                realm: realm.to_owned(),
                nonce: nonce.clone(),
                algorithm,
                stale,
            })
            .collect()
    }

    /// A fresh nonce for `realm` (64 lowercase hex digits).
    pub fn issue_nonce(&mut self, now: Duration, realm: &str) -> String {
        let id = NonceId {
            issued_ms: millis(now),
            serial: u64::from(self.issuer) << ISSUER_SHIFT | self.serial & SERIAL_MASK,
        };
        self.serial = self.serial.wrapping_add(1);
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&id.issued_ms.to_be_bytes());
        raw[8..16].copy_from_slice(&id.serial.to_be_bytes());
        let tag = self.tag(id, realm).finalize().into_bytes();
        raw[16..].copy_from_slice(&tag[..TAG_LEN]);
        to_hex(&raw)
    }

    /// Checks `creds` for a request with `method`, against the agent's
    /// `secret`, for `expected_realm`. The caller has looked the agent up by
    /// `creds.username`. On success the nonce count is recorded, so the same
    /// credentials are refused next time.
    pub fn verify(
        &mut self,
        now: Duration,
        method: &str,
        creds: &Credentials<'_>,
        secret: Secret<'_>,
        expected_realm: &str,
    ) -> Result<(), AuthError> {
        for (value, name) in [
            (creds.username, "username"),
            (creds.nonce, "nonce"),
            (creds.uri, "uri"),
            (creds.response, "response"),
        ] {
            if value.is_empty() {
                return Err(AuthError::Malformed(name));
            }
        }
        if creds.realm != expected_realm {
            return Err(AuthError::RealmMismatch);
        }
        let params = Params::parse(creds)?;
        let id = self
            .open(creds.nonce, expected_realm)
            .ok_or(AuthError::InvalidNonce)?;
        let expected = response_with(method, creds, secret, &params)?;

        let given = creds.response;
        if given.len() != expected.len() || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed("response"));
        }
        let given = given.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            return Err(AuthError::WrongPassword);
        }

        // Freshness only now: stale=true is for clients that know the
        // password (RFC 7616 §3.3).
        let now_ms = millis(now);
        if id.issued_ms > now_ms || now_ms - id.issued_ms > self.lifetime_ms {
            return Err(AuthError::StaleNonce);
        }
        if id.serial >> ISSUER_SHIFT != u64::from(self.issuer) {
            return Err(AuthError::StaleNonce);
        }
        self.record_use(id, params.qop.map(|q| q.count), now_ms)
    }

    fn tag(&self, id: NonceId, realm: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&id.issued_ms.to_be_bytes());
        mac.update(&id.serial.to_be_bytes());
        // Binding the realm stops a nonce from one realm being used in
        // another.
        mac.update(realm.as_bytes());
        mac
    }

    /// The nonce's identity if we issued it for `realm`.
    fn open(&self, nonce: &str, realm: &str) -> Option<NonceId> {
        let raw: [u8; NONCE_LEN] = from_hex(nonce)?;
        let id = NonceId {
            issued_ms: u64::from_be_bytes(raw[..8].try_into().ok()?),
            serial: u64::from_be_bytes(raw[8..16].try_into().ok()?),
        };
        // Constant-time comparison of the truncated tag.
        self.tag(id, realm).verify_truncated_left(&raw[16..]).ok()?;
        Some(id)
    }

    fn record_use(&mut self, id: NonceId, nc: Option<u32>, now_ms: u64) -> Result<(), AuthError> {
        if nc.is_none() && !self.single_use_without_qop {
            return Ok(());
        }
        self.prune_expired(now_ms);
        if let Some(highest) = self.seen.get_mut(&id) {
            return match nc {
                Some(n) if n > *highest => {
                    *highest = n;
                    Ok(())
                }
                Some(_) => Err(AuthError::Replay),
                // A second use without qop: hand out a new nonce.
                None => Err(AuthError::StaleNonce),
            };
        }
        if self.evicted_up_to.is_some_and(|mark| id <= mark) {
            return Err(AuthError::StaleNonce);
        }
        while self.seen.len() >= self.max_tracked {
            let Some((oldest, _)) = self.seen.pop_first() else {
                break;
            };
            self.evicted_up_to = self.evicted_up_to.max(Some(oldest));
        }
        self.seen.insert(id, nc.unwrap_or(u32::MAX));
        Ok(())
    }

    /// [`NonceManager::prune_expired`] at `now`: for a periodic tidy, as
    /// the table is otherwise pruned only when a nonce is used.
    pub fn forget_expired(&mut self, now: Duration) {
        self.prune_expired(millis(now));
    }

    /// Drops expired nonces: they fail the freshness check before the table
    /// is consulted, so their counts are no longer needed.
    fn prune_expired(&mut self, now_ms: u64) {
        while let Some(entry) = self.seen.first_entry() {
            if now_ms.saturating_sub(entry.key().issued_ms) <= self.lifetime_ms {
                break;
            }
            entry.remove();
        }
    }
}

/// The response a client with `secret` should send for `creds` (whose own
/// `response` is ignored). For simulated clients and tests; the server side
/// uses [`NonceManager::verify`].
pub fn expected_response(
    method: &str,
    creds: &Credentials<'_>,
    secret: Secret<'_>,
) -> Result<String, AuthError> {
    let params = Params::parse(creds)?;
    response_with(method, creds, secret, &params)
}

/// `unq(value)` (RFC 7616 §3.4): a quoted-string's value, which the SIP
/// parser gives without its quotes but with its quoting backslashes
/// (RFC 3261 §25.1 `quoted-pair`), here removed. Borrows unless there is
/// a backslash.
pub fn unq(value: &str) -> Cow<'_, str> {
    if !value.contains('\\') {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        // A backslash quotes the next character, whatever it is.
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    Cow::Owned(out)
}

/// MD5(`username:realm:password`) as lowercase hex: the HA1 that
/// [`Secret::Ha1`] expects as `md5`.
pub fn md5_ha1(username: &str, realm: &str, password: &str) -> String {
    Algorithm::Md5.h(&[username, realm, password])
}

/// SHA-256(`username:realm:password`) as lowercase hex: the HA1 that
/// [`Secret::Ha1`] expects as `sha256`.
pub fn sha256_ha1(username: &str, realm: &str, password: &str) -> String {
    Algorithm::Sha256.h(&[username, realm, password])
}

/// The parameters of `creds` that the formulas need, checked.
struct Params<'a> {
    algorithm: Algorithm,
    qop: Option<QopAuth<'a>>,
}

struct QopAuth<'a> {
    qop: &'a str,
    nc: &'a str,
    count: u32,
    cnonce: &'a str,
}

impl<'a> Params<'a> {
    fn parse(creds: &Credentials<'a>) -> Result<Self, AuthError> {
        let algorithm = match creds.algorithm {
            None => Algorithm::Md5,
            Some(token) => Algorithm::parse(token).ok_or(AuthError::UnknownAlgorithm)?,
        };
        let cnonce = creds.cnonce.filter(|c| !c.is_empty());
        let qop = match creds.qop {
            None => None,
            // auth-int is never offered, so a client must not use it.
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {
                let nc = creds.nc.ok_or(AuthError::Malformed("nc"))?;
                Some(QopAuth {
                    qop,
                    nc,
                    count: parse_nc(nc).ok_or(AuthError::Malformed("nc"))?,
                    cnonce: cnonce.ok_or(AuthError::Malformed("cnonce"))?,
                })
            }
            Some(_) => return Err(AuthError::Malformed("qop")),
        };
        if algorithm.is_session() && cnonce.is_none() {
            return Err(AuthError::Malformed("cnonce"));
        }
        Ok(Self { algorithm, qop })
    }
}

/// RFC 7616 §3.4.1-3.4.3 (and RFC 2617 §3.2.2 without qop).
fn response_with(
    method: &str,
    creds: &Credentials<'_>,
    secret: Secret<'_>,
    params: &Params<'_>,
) -> Result<String, AuthError> {
    let alg = params.algorithm;
    if !secret.supports(alg) {
        return Err(AuthError::AlgorithmUnavailable);
    }
    let mut ha1 = match secret {
        Secret::Password(password) => alg.h(&[creds.username, creds.realm, password]),
        Secret::Ha1 { md5, sha256 } => {
            let (ha1, digits) = if alg.is_md5() {
                (md5, 32)
            } else {
                (sha256, 64)
            };
            let ha1 = ha1.ok_or(AuthError::AlgorithmUnavailable)?;
            if ha1.len() != digits || !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AuthError::BadSecret);
            }
            ha1.to_ascii_lowercase()
        }
    };
    if alg.is_session() {
        let cnonce = creds.cnonce.unwrap_or_default();
        ha1 = alg.h(&[&ha1, creds.nonce, cnonce]);
    }
    let ha2 = alg.h(&[method, creds.uri]);
    Ok(match &params.qop {
        Some(q) => alg.h(&[&ha1, creds.nonce, q.nc, q.cnonce, q.qop, &ha2]),
        None => alg.h(&[&ha1, creds.nonce, &ha2]),
    })
}

/// `nc`: exactly 8 hex digits, not zero (counts start at 1).
fn parse_nc(nc: &str) -> Option<u32> {
    if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(nc, 16).ok().filter(|&n| n > 0)
}

fn hash_hex<D: Digest>(parts: &[&str]) -> String {
    let mut hasher = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    to_hex(&hasher.finalize())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes exactly `N` bytes of hex (either case); works on bytes so no
/// input can hit a char boundary.
fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "cc.example";
    const T0: Duration = Duration::from_secs(1_000);

    fn manager() -> NonceManager {
        NonceManager::from_secret([7; 32])
    }

    /// Credentials as a well-behaved client would send them.
    fn answer<'a>(
        nonce: &'a str,
        alg: Option<&'a str>,
        nc: Option<&'a str>,
        password: &str,
    ) -> (Credentials<'a>, String) {
        let creds = Credentials {
            username: "1001",
            realm: REALM,
            nonce,
            uri: "sip:cc.example",
            response: "",
            algorithm: alg,
            cnonce: Some("c0ffee"),
            qop: nc.map(|_| "auth"),
            nc,
            opaque: None,
        };
        let response = expected_response("REGISTER", &creds, Secret::Password(password)).unwrap();
        (creds, response)
    }

    fn verify_as(
        m: &mut NonceManager,
        now: Duration,
        nonce: &str,
        alg: Option<&str>,
        nc: Option<&str>,
        password: &str,
    ) -> Result<(), AuthError> {
        let (creds, response) = answer(nonce, alg, nc, password);
        let creds = Credentials {
            response: &response,
            ..creds
        };
        m.verify(now, "REGISTER", &creds, Secret::Password("s3cret"), REALM)
    }

    #[test]
    fn rfc2617_md5_vector() {
        let creds = Credentials {
            username: "Mufasa",
            realm: "testrealm@host.com",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            uri: "/dir/index.html",
            qop: Some("auth"),
            nc: Some("00000001"),
            cnonce: Some("0a4f113b"),
            ..Credentials::default()
        };
        let got = expected_response("GET", &creds, Secret::Password("Circle Of Life")).unwrap();
        assert_eq!(got, "6629fae49393a05397450978507c4ef1");
        // The same through a provisioned HA1.
        let ha1 = md5_ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        let got = expected_response("GET", &creds, Secret::md5_ha1(&ha1)).unwrap();
        assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    }

    fn rfc7616_creds(alg: &'static str) -> Credentials<'static> {
        Credentials {
            username: "Mufasa",
            realm: "http-auth@example.org",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            uri: "/dir/index.html",
            algorithm: Some(alg),
            qop: Some("auth"),
            nc: Some("00000001"),
            cnonce: Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"),
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"),
            ..Credentials::default()
        }
    }

    #[test]
    fn rfc7616_vectors() {
        let pw = Secret::Password("Circle of Life");
        let sha = expected_response("GET", &rfc7616_creds("SHA-256"), pw).unwrap();
        assert_eq!(
            sha,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let md5 = expected_response("GET", &rfc7616_creds("MD5"), pw).unwrap();
        assert_eq!(md5, "8ca523f5e9506fed4657c9700eebdbec");
        // The same through provisioned HA1s.
        let md5_hex = md5_ha1("Mufasa", "http-auth@example.org", "Circle of Life");
        let sha_hex = sha256_ha1("Mufasa", "http-auth@example.org", "Circle of Life");
        let both = Secret::Ha1 {
            md5: Some(&md5_hex),
            sha256: Some(&sha_hex),
        };
        assert_eq!(
            expected_response("GET", &rfc7616_creds("SHA-256"), both).unwrap(),
            sha
        );
        assert_eq!(
            expected_response("GET", &rfc7616_creds("MD5"), both).unwrap(),
            md5
        );
    }

    #[test]
    fn algorithm_tokens() {
        assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("md5-SESS"), Some(Algorithm::Md5Sess));
        assert_eq!(Algorithm::parse("SHA-512-256"), None);
        for a in [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ] {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
    }

    #[test]
    fn challenge_rendering() {
        let mut m = manager();
        let cs = m.challenges(T0, REALM, &Algorithm::OFFERED, false);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].nonce, cs[1].nonce);
        assert_eq!(
            cs[0].to_string(),
            format!(
                "Digest realm=\"cc.example\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
                cs[0].nonce
            )
        );
        assert!(cs[1].to_string().contains("algorithm=SHA-256,"));
        let c = m.challenge(T0, "a\"b\\c\r\n", Algorithm::Md5, true);
        let s = c.to_string();
        assert!(s.starts_with("Digest realm=\"a\\\"b\\\\c\", nonce=\""));
        assert!(s.ends_with(", stale=true"));
        assert_ne!(c.nonce, cs[0].nonce);
    }

    #[test]
    fn good_credentials_both_algorithms() {
        let mut m = manager();
        for alg in [
            None,
            Some("MD5"),
            Some("SHA-256"),
            Some("md5-sess"),
            Some("SHA-256-sess"),
        ] {
            let n = m.issue_nonce(T0, REALM);
            assert_eq!(
                verify_as(&mut m, T0, &n, alg, Some("00000001"), "s3cret"),
                Ok(())
            );
        }
        // No qop (RFC 2069 style) works too.
        let n = m.issue_nonce(T0, REALM);
        assert_eq!(
            verify_as(&mut m, T0, &n, Some("SHA-256"), None, "s3cret"),
            Ok(())
        );
    }

    #[test]
    fn uppercase_response_hex_accepted() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        let (creds, response) = answer(&n, None, Some("00000001"), "s3cret");
        let upper = response.to_ascii_uppercase();
        let creds = Credentials {
            response: &upper,
            ..creds
        };
        assert_eq!(
            m.verify(T0, "REGISTER", &creds, Secret::Password("s3cret"), REALM),
            Ok(())
        );
    }

    #[test]
    fn wrong_password() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        let r = verify_as(&mut m, T0, &n, Some("SHA-256"), Some("00000001"), "guess");
        assert_eq!(r, Err(AuthError::WrongPassword));
        assert!(!AuthError::WrongPassword.wants_stale_challenge());
        // A failed attempt must not burn the count for the real client.
        assert_eq!(m.tracked_nonces(), 0);
        let r = verify_as(&mut m, T0, &n, Some("SHA-256"), Some("00000001"), "s3cret");
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn expired_nonce_is_stale_only_with_right_password() {
        let mut m = manager().with_lifetime(Duration::from_secs(30));
        let n = m.issue_nonce(T0, REALM);
        let later = T0 + Duration::from_secs(31);
        let r = verify_as(&mut m, later, &n, None, Some("00000001"), "s3cret");
        assert_eq!(r, Err(AuthError::StaleNonce));
        assert!(r.unwrap_err().wants_stale_challenge());
        let r = verify_as(&mut m, later, &n, None, Some("00000001"), "guess");
        assert_eq!(r, Err(AuthError::WrongPassword));
        // Exactly at the lifetime is still fresh.
        let n = m.issue_nonce(T0, REALM);
        let edge = T0 + Duration::from_secs(30);
        assert_eq!(
            verify_as(&mut m, edge, &n, None, Some("00000001"), "s3cret"),
            Ok(())
        );
        // A nonce "from the future" (clock went back) is stale too.
        let n = m.issue_nonce(later, REALM);
        let r = verify_as(&mut m, T0, &n, None, Some("00000001"), "s3cret");
        assert_eq!(r, Err(AuthError::StaleNonce));
    }

    #[test]
    fn forged_and_foreign_nonces_are_invalid() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        // Flip one tag digit.
        let mut forged = n.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        // Move the timestamp forward without the key.
        let moved = format!("{:016x}{}", u64::MAX / 2, &n[16..]);
        let other_key = NonceManager::from_secret([8; 32]).issue_nonce(T0, REALM);
        let other_realm = m.issue_nonce(T0, "other.example");
        for bad in [
            forged,
            moved,
            other_key,
            other_realm,
            "abc".into(),
            "zz".repeat(32),
        ] {
            let r = verify_as(&mut m, T0, &bad, None, Some("00000001"), "s3cret");
            assert_eq!(r, Err(AuthError::InvalidNonce), "{bad}");
        }
    }

    #[test]
    fn a_nonce_is_counted_only_by_its_issuer() {
        let mut issuer = manager();
        let mut other = NonceManager::from_secret([7; 32]).with_issuer(1);
        let nonce = issuer.issue_nonce(T0, REALM);
        let (c1, r1) = answer(&nonce, None, Some("00000001"), "s3cret");
        let good = Credentials {
            response: &r1,
            ..c1
        };
        assert_eq!(
            other.verify(T0, "REGISTER", &good, Secret::Password("s3cret"), REALM),
            Err(AuthError::StaleNonce),
            "another core re-challenges"
        );
        let wrong = Credentials {
            response: "00000000000000000000000000000000",
            ..c1
        };
        assert_eq!(
            other.verify(T0, "REGISTER", &wrong, Secret::Password("s3cret"), REALM),
            Err(AuthError::WrongPassword),
            "a wrong password is told as such first"
        );
        assert_eq!(
            issuer.verify(T0, "REGISTER", &good, Secret::Password("s3cret"), REALM),
            Ok(())
        );
    }

    #[test]
    fn nonce_count_must_increase() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        let ok = |m: &mut NonceManager, nc| verify_as(m, T0, &n, None, Some(nc), "s3cret");
        assert_eq!(ok(&mut m, "00000001"), Ok(()));
        assert_eq!(ok(&mut m, "00000001"), Err(AuthError::Replay));
        assert_eq!(ok(&mut m, "00000002"), Ok(()));
        // Gaps are fine (lost requests); going back is not.
        assert_eq!(ok(&mut m, "0000000A"), Ok(()));
        assert_eq!(ok(&mut m, "00000005"), Err(AuthError::Replay));
        assert_eq!(ok(&mut m, "0000000b"), Ok(()));
        assert_eq!(m.tracked_nonces(), 1);
    }

    #[test]
    fn no_qop_nonce_is_single_use_by_default() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        assert_eq!(verify_as(&mut m, T0, &n, None, None, "s3cret"), Ok(()));
        let r = verify_as(&mut m, T0, &n, None, None, "s3cret");
        assert_eq!(r, Err(AuthError::StaleNonce));

        let mut m = manager().with_single_use_without_qop(false);
        let n = m.issue_nonce(T0, REALM);
        for _ in 0..3 {
            assert_eq!(verify_as(&mut m, T0, &n, None, None, "s3cret"), Ok(()));
        }
        assert_eq!(m.tracked_nonces(), 0);
    }

    #[test]
    fn table_stays_bounded_and_evicted_nonces_are_not_replayable() {
        let mut m = manager().with_max_tracked(100);
        let mut nonces = Vec::new();
        for i in 0..1_000u64 {
            let now = T0 + Duration::from_millis(i);
            let n = m.issue_nonce(now, REALM);
            assert_eq!(
                verify_as(&mut m, now, &n, None, Some("00000001"), "s3cret"),
                Ok(())
            );
            assert!(m.tracked_nonces() <= 100);
            nonces.push(n);
        }
        assert_eq!(m.tracked_nonces(), 100);
        // Evicted: history lost, so refused (stale → client re-fetches).
        let now = T0 + Duration::from_secs(1);
        let r = verify_as(&mut m, now, &nonces[0], None, Some("00000002"), "s3cret");
        assert_eq!(r, Err(AuthError::StaleNonce));
        // Still tracked: normal rules.
        let r = verify_as(&mut m, now, &nonces[999], None, Some("00000001"), "s3cret");
        assert_eq!(r, Err(AuthError::Replay));
        // Once everything expires, the next use prunes the table.
        let later = T0 + Duration::from_secs(400);
        let n = m.issue_nonce(later, REALM);
        assert_eq!(
            verify_as(&mut m, later, &n, None, Some("00000001"), "s3cret"),
            Ok(())
        );
        assert_eq!(m.tracked_nonces(), 1);
    }

    #[test]
    fn realm_mismatch() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        let (creds, response) = answer(&n, None, Some("00000001"), "s3cret");
        let creds = Credentials {
            response: &response,
            realm: "evil.example",
            ..creds
        };
        let r = m.verify(T0, "REGISTER", &creds, Secret::Password("s3cret"), REALM);
        assert_eq!(r, Err(AuthError::RealmMismatch));
    }

    /// Verifies an answer with `alg` computed from the password `s3cret`
    /// against `secret`.
    fn verify_against(
        m: &mut NonceManager,
        alg: Option<&str>,
        secret: Secret<'_>,
    ) -> Result<(), AuthError> {
        let n = m.issue_nonce(T0, REALM);
        let (creds, response) = answer(&n, alg, Some("00000001"), "s3cret");
        let creds = Credentials {
            response: &response,
            ..creds
        };
        m.verify(T0, "REGISTER", &creds, secret, REALM)
    }

    #[test]
    fn provisioned_ha1() {
        let mut m = manager();
        let ha1 = md5_ha1("1001", REALM, "s3cret").to_ascii_uppercase();
        let secret = Secret::md5_ha1(&ha1);
        assert_eq!(secret.algorithms(), &[Algorithm::Md5]);
        for (alg, want) in [
            (Some("MD5"), Ok(())),
            (Some("MD5-sess"), Ok(())),
            (Some("SHA-256"), Err(AuthError::AlgorithmUnavailable)),
            (Some("SHA-256-sess"), Err(AuthError::AlgorithmUnavailable)),
        ] {
            assert_eq!(verify_against(&mut m, alg, secret), want, "{alg:?}");
        }
        let r = verify_against(&mut m, None, Secret::md5_ha1("not-hex"));
        assert_eq!(r, Err(AuthError::BadSecret));
    }

    /// With the SHA-256 HA1 beside the MD5 one, every algorithm a
    /// password allows is offered and verified; with it alone, SHA-256
    /// (and SHA-256-sess) only.
    #[test]
    fn provisioned_sha256_ha1() {
        let mut m = manager();
        let md5 = md5_ha1("1001", REALM, "s3cret");
        let sha = sha256_ha1("1001", REALM, "s3cret").to_ascii_uppercase();
        assert_eq!(sha.len(), 64);
        let both = Secret::Ha1 {
            md5: Some(&md5),
            sha256: Some(&sha),
        };
        assert_eq!(both.algorithms(), &Algorithm::OFFERED);
        let alone = Secret::Ha1 {
            md5: None,
            sha256: Some(&sha),
        };
        assert_eq!(alone.algorithms(), &[Algorithm::Sha256]);
        for alg in [
            None,
            Some("MD5"),
            Some("MD5-sess"),
            Some("SHA-256"),
            Some("sha-256-sess"),
        ] {
            assert_eq!(verify_against(&mut m, alg, both), Ok(()), "{alg:?}");
            let sha = alg.is_some_and(|a| a.to_ascii_uppercase().starts_with("SHA"));
            let want = if sha {
                Ok(())
            } else {
                Err(AuthError::AlgorithmUnavailable)
            };
            assert_eq!(verify_against(&mut m, alg, alone), want, "{alg:?}");
        }
        // A wrong password is wrong with either hash.
        let other = sha256_ha1("1001", REALM, "guess");
        let wrong = Secret::Ha1 {
            md5: Some(&md5),
            sha256: Some(&other),
        };
        let r = verify_against(&mut m, Some("SHA-256"), wrong);
        assert_eq!(r, Err(AuthError::WrongPassword));
        assert_eq!(verify_against(&mut m, Some("MD5"), wrong), Ok(()));
        // An MD5-length value where SHA-256 is expected is refused as a
        // bad secret, not compared.
        let short = Secret::Ha1 {
            md5: None,
            sha256: Some(&md5),
        };
        let r = verify_against(&mut m, Some("SHA-256"), short);
        assert_eq!(r, Err(AuthError::BadSecret));
        // No HA1 at all verifies nothing, but is offered like anyone.
        let none = Secret::Ha1 {
            md5: None,
            sha256: None,
        };
        assert_eq!(none.algorithms(), &Algorithm::OFFERED);
        let r = verify_against(&mut m, Some("MD5"), none);
        assert_eq!(r, Err(AuthError::AlgorithmUnavailable));
    }

    #[test]
    fn malformed_parameters() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        let (good, response) = answer(&n, None, Some("00000001"), "s3cret");
        let good = Credentials {
            response: &response,
            ..good
        };
        let cases = [
            (
                Credentials {
                    username: "",
                    ..good
                },
                AuthError::Malformed("username"),
            ),
            (Credentials { uri: "", ..good }, AuthError::Malformed("uri")),
            (
                Credentials {
                    response: "",
                    ..good
                },
                AuthError::Malformed("response"),
            ),
            (
                Credentials {
                    response: "abc",
                    ..good
                },
                AuthError::Malformed("response"),
            ),
            (Credentials { nc: None, ..good }, AuthError::Malformed("nc")),
            (
                Credentials {
                    nc: Some("1"),
                    ..good
                },
                AuthError::Malformed("nc"),
            ),
            (
                Credentials {
                    nc: Some("0000000g"),
                    ..good
                },
                AuthError::Malformed("nc"),
            ),
            (
                Credentials {
                    nc: Some("00000000"),
                    ..good
                },
                AuthError::Malformed("nc"),
            ),
            (
                Credentials {
                    nc: Some("+0000001"),
                    ..good
                },
                AuthError::Malformed("nc"),
            ),
            (
                Credentials {
                    cnonce: None,
                    ..good
                },
                AuthError::Malformed("cnonce"),
            ),
            (
                Credentials {
                    qop: Some("auth-int"),
                    ..good
                },
                AuthError::Malformed("qop"),
            ),
            (
                Credentials {
                    algorithm: Some("SHA-512-256"),
                    ..good
                },
                AuthError::UnknownAlgorithm,
            ),
            (
                Credentials {
                    algorithm: Some("MD5-sess"),
                    qop: None,
                    cnonce: None,
                    ..good
                },
                AuthError::Malformed("cnonce"),
            ),
        ];
        for (creds, want) in cases {
            let r = m.verify(T0, "REGISTER", &creds, Secret::Password("s3cret"), REALM);
            assert_eq!(r, Err(want), "{creds:?}");
        }
        // The good one still works: nothing above consumed the count.
        let r = m.verify(T0, "REGISTER", &good, Secret::Password("s3cret"), REALM);
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn odd_strings_never_panic() {
        let mut m = manager();
        let n = m.issue_nonce(T0, REALM);
        let odd = [
            "",
            "\0",
            "é",
            "\u{1F600}",
            "\"",
            "\\",
            "ffffffff",
            "00000000",
            n.as_str(),
            &n[..63],
        ];
        let long = "é".repeat(32); // 64 bytes, multibyte at every boundary
        let odd: Vec<&str> = odd.into_iter().chain([long.as_str()]).collect();
        for &a in &odd {
            for &b in &odd {
                let creds = Credentials {
                    username: a,
                    realm: REALM,
                    nonce: b,
                    uri: a,
                    response: b,
                    algorithm: Some(a),
                    cnonce: Some(b),
                    qop: Some("auth"),
                    nc: Some(a),
                    opaque: Some(b),
                };
                let ha1 = Secret::Ha1 {
                    md5: Some(b),
                    sha256: Some(b),
                };
                let _ = m.verify(T0, a, &creds, ha1, REALM);
                let _ = m.verify(T0, b, &creds, Secret::Password(a), REALM);
                let _ = expected_response(a, &creds, Secret::Password(b));
            }
        }
        let _ = verify_as(&mut m, Duration::MAX, &n, None, Some("ffffffff"), "s3cret");
        let _ = m
            .challenge(Duration::MAX, "é\u{7f}", Algorithm::Sha256, true)
            .to_string();
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn opt() -> impl Strategy<Value = Option<String>> {
            proptest::option::of(any::<String>())
        }

        proptest! {
            #[test]
            fn verify_never_panics(
                strs in proptest::collection::vec(any::<String>(), 6),
                opts in proptest::collection::vec(opt(), 5),
                now_ms in any::<u64>(),
                use_ha1 in any::<bool>(),
            ) {
                let mut m = manager();
                let creds = Credentials {
                    username: &strs[0],
                    realm: &strs[1],
                    nonce: &strs[2],
                    uri: &strs[3],
                    response: &strs[4],
                    algorithm: opts[0].as_deref(),
                    cnonce: opts[1].as_deref(),
                    qop: opts[2].as_deref(),
                    nc: opts[3].as_deref(),
                    opaque: opts[4].as_deref(),
                };
                let secret = if use_ha1 {
                    Secret::Ha1 { md5: Some(&strs[5]), sha256: Some(&strs[5]) }
                } else {
                    Secret::Password(&strs[5])
                };
                let now = Duration::from_millis(now_ms);
                let r = m.verify(now, &strs[0], &creds, secret, &strs[1]);
                // Random nonces are never ours.
                prop_assert!(r.is_err());
                let _ = expected_response(&strs[3], &creds, secret);
                let _ = m.challenge(now, &strs[1], Algorithm::Md5, true).to_string();
            }

            #[test]
            fn right_answer_always_accepted_once(
                user in "[a-z0-9]{1,12}",
                pw in any::<String>(),
                sha in any::<bool>(),
                nc in 1u32..,
            ) {
                let mut m = manager();
                let alg = if sha { "SHA-256" } else { "MD5" };
                let n = m.issue_nonce(T0, REALM);
                let nc = format!("{nc:08x}");
                let mut creds = Credentials {
                    username: &user,
                    realm: REALM,
                    nonce: &n,
                    uri: "sip:cc.example",
                    algorithm: Some(alg),
                    cnonce: Some("xyz"),
                    qop: Some("auth"),
                    nc: Some(&nc),
                    ..Credentials::default()
                };
                let response = expected_response("INVITE", &creds, Secret::Password(&pw)).unwrap();
                creds.response = &response;
                prop_assert_eq!(m.verify(T0, "INVITE", &creds, Secret::Password(&pw), REALM), Ok(()));
                prop_assert_eq!(
                    m.verify(T0, "INVITE", &creds, Secret::Password(&pw), REALM),
                    Err(AuthError::Replay)
                );
            }
        }
    }
}
