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
mod tests;
