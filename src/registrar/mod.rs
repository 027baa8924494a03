//! The registrar (RFC 3261 §10.3, SPEC §5): REGISTER is an agent's login,
//! expiry or `Expires: 0` its logout. Sans-IO: a parsed REGISTER and the
//! time go in; the response bytes and what changed come out.

pub mod digest;
pub mod location;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::config::{Agent, Credential};
use crate::sip::{
    AuthValue, DigestParams, HeaderName, Message, Peer, Scheme, Span, Transport, edit::derived_tag,
};
use digest::{AuthError, Credentials, NonceManager, Secret, unq};
use location::{Binding, Location};

/// Expiry when a REGISTER names none (RFC 3261 §10.2.1.1 suggests 3600).
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Shortest registration accepted; shorter ones get 423 (RFC 3261 §10.3).
pub const MIN_EXPIRES: u32 = 60;
/// Longest registration granted; longer requests are shortened.
pub const MAX_EXPIRES: u32 = 86_400;

/// What a REGISTER did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent logged in (it was logged out).
    LoggedIn(String),
    /// A logged-in agent refreshed or moved its binding.
    Refreshed(String),
    /// The agent logged out.
    LoggedOut(String),
    /// Bindings were queried; nothing changed.
    Queried(String),
    /// Challenged (401): the client retries with credentials.
    Challenged,
    /// Refused with this status.
    Refused(u16),
}

impl Outcome {
    /// The status of the response the registrar wrote.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Challenged => 401,
            Outcome::Refused(status) => *status,
            _ => 200,
        }
    }
}

/// How the registrar is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The SIP domain, also the digest realm.
    pub domain: String,
    /// Whether REGISTER is challenged (SPEC §4 `[agents] auth`).
    pub auth: bool,
    /// The blade's SIP address's IP: a digest `uri` may name it (sipp
    /// answers challenges with `uri="sip:IP:PORT"` of the server).
    pub own_ip: Option<IpAddr>,
    /// The wall-clock time (since the Unix epoch) at the epoch of the
    /// `now` the registrar is given, for the Date of a 200; `None`: no
    /// Date.
    pub unix_at_epoch: Option<Duration>,
}

/// One shard's registrar: the agents it owns and their bindings.
#[derive(Debug)]
pub struct Registrar {
    settings: Settings,
    location: Location,
    nonces: NonceManager,
}

impl Registrar {
    /// A registrar owning `agents`, verifying nonces with `nonces`.
    pub fn new(
        settings: Settings,
        agents: impl IntoIterator<Item = Arc<Agent>>,
        nonces: NonceManager,
    ) -> Self {
        Registrar {
            settings,
            location: Location::new(agents),
            nonces,
        }
    }

    /// Wall-clock time (since 1970) at `now`, when the blade knows it.
    pub fn unix_time(&self, now: Duration) -> Option<Duration> {
        self.settings.unix_at_epoch.map(|at| at + now)
    }

    /// The location store.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The location store, mutable (call state changes).
    pub fn location_mut(&mut self) -> &mut Location {
        &mut self.location
    }

    /// The nonce manager, shared with proxy authentication on this shard.
    pub fn nonces(&self) -> &NonceManager {
        &self.nonces
    }

    /// The nonce manager, to change.
    pub fn nonces_mut(&mut self) -> &mut NonceManager {
        &mut self.nonces
    }

    /// Logs out agents whose binding lapsed; returns their extensions.
    pub fn expire(&mut self, now: Duration) -> Vec<String> {
        self.location.expire(now)
    }

    /// Handles a REGISTER received from `source` over `transport` at `now`;
    /// writes the response into `out`.
    pub fn handle_register(
        &mut self,
        now: Duration,
        msg: &Message,
        source: Peer,
        out: &mut BytesMut,
    ) -> Outcome {
        match self.register(now, msg, source, out) {
            Ok(outcome) => outcome,
            Err(refusal) => {
                refusal.respond(msg, &tag(msg), out);
                if refusal.status == 401 {
                    Outcome::Challenged
                } else {
                    Outcome::Refused(refusal.status)
                }
            }
        }
    }

    fn register(
        &mut self,
        now: Duration,
        msg: &Message,
        source: Peer,
        out: &mut BytesMut,
    ) -> Result<Outcome, Refusal> {
        let to = msg.to();
        let aor = to.uri();
        if !matches!(aor.scheme(), Scheme::Sip | Scheme::Sips) {
            return Err(Refusal::new(400, "To Must Be a SIP URI"));
        }
        let user = aor.user_str().unwrap_or_default();
        let extension: &str = &user;
        let agent = match self.location.get(extension) {
            Some(record) => record.agent.clone(),
            None if self.settings.auth => {
                // Answered as a wrong password would be, so that a
                // REGISTER does not tell which extensions exist: a
                // challenge, then 403 (a fresh challenge for a stale or
                // forged nonce, as for an agent).
                self.authenticate(now, msg, &Agent::nobody(extension))?;
                return Err(Refusal::new(403, "Forbidden"));
            }
            None => return Err(Refusal::new(404, "Not Found")),
        };
        if let Some(refusal) = Refusal::unsupported(msg.require()) {
            return Err(refusal);
        }
        if self.settings.auth {
            self.authenticate(now, msg, &agent)?;
        }

        // An Expires that is no delta-seconds (RFC 3261 §20.19) is not
        // taken for an absent one: the terminal asked for something else.
        if msg.header(HeaderName::Expires).is_some() && msg.expires().is_none() {
            return Err(Refusal::new(400, "Bad Request (malformed Expires)"));
        }

        let existing = self.location.get(extension).and_then(|r| r.binding.clone());
        // RFC 3261 §10.3 step 6: `*` in any Contact header stands alone,
        // with Expires 0 (the first header alone would let `*` after a
        // contact pass as that contact's unregistration).
        let contact_headers = || msg.header_values(HeaderName::Contact);
        if contact_headers().any(|v| v.trim_ascii() == b"*") {
            if contact_headers().count() != 1 {
                return Err(Refusal::new(400, "Wildcard Contact Must Stand Alone"));
            }
            if msg.expires() != Some(0) {
                return Err(Refusal::new(400, "Wildcard Contact Needs Expires 0"));
            }
            check_order(existing.as_ref(), msg)?;
            let was_in = self.location.unbind(extension);
            self.respond_ok(now, msg, &[], out);
            // Not logged in: nothing to announce to the peers, whose
            // directory may place the agent on another blade.
            return Ok(if was_in {
                Outcome::LoggedOut(extension.to_owned())
            } else {
                Outcome::Queried(extension.to_owned())
            });
        }
        let contacts: Vec<_> = msg.contacts().collect();
        if contacts.is_empty() {
            let listing = existing.as_ref().map(|b| contact_header(b, now));
            let extra: Vec<(&str, &str)> =
                listing.iter().map(|v| ("Contact", v.as_str())).collect();
            self.respond_ok(now, msg, &extra, out);
            return Ok(Outcome::Queried(extension.to_owned()));
        }
        // Nor is a bad expires parameter left to the Expires header.
        if contacts
            .iter()
            .any(|c| c.params().get("expires").is_some() && c.expires().is_none())
        {
            return Err(Refusal::new(400, "Bad Request (malformed expires)"));
        }
        // Nor a q that is no qvalue (RFC 3261 §20.10): unused with one
        // binding, but a phone that sends `q=2` is told, not ignored.
        if contacts.iter().any(|c| {
            c.params()
                .get("q")
                .is_some_and(|q| !q.is_some_and(is_qvalue))
        }) {
            return Err(Refusal::new(400, "Bad Request (malformed q)"));
        }
        let expiry =
            |c: &crate::sip::NameAddr<'_>| c.expires().or(msg.expires()).unwrap_or(DEFAULT_EXPIRES);
        // One binding per agent: one contact at most may stay bound (the
        // same URI listed twice is one). The others may only be removals
        // (expires 0), as a phone that moves sends its old address with
        // expires=0 beside its new one (RFC 3261 §10.2.1 lets a REGISTER
        // carry several contacts).
        let mut live = contacts.iter().filter(|c| expiry(c) != 0);
        let kept = live.next();
        if let Some(kept) = kept {
            let kept_uri = kept.uri();
            if live.any(|c| !same_contact(kept_uri.as_str(), &c.uri())) {
                return Err(Refusal::new(400, "One Contact Per Agent"));
            }
        }
        if kept.is_some_and(|c| expiry(c) < MIN_EXPIRES) {
            return Err(Refusal::new(423, "Interval Too Brief")
                .with("Min-Expires", MIN_EXPIRES.to_string()));
        }
        check_order(existing.as_ref(), msg)?;
        let Some(kept) = kept else {
            // RFC 3261 §10.3 step 7: expires 0 removes the binding of
            // that contact only. A terminal the agent has left (its
            // binding replaced since) unregistering must not log the
            // agent out of the terminal it uses now.
            let removes_current = existing
                .as_ref()
                .is_some_and(|b| contacts.iter().any(|c| same_contact(&b.uri, &c.uri())));
            if !removes_current {
                let listing = existing.as_ref().map(|b| contact_header(b, now));
                let extra: Vec<(&str, &str)> =
                    listing.iter().map(|v| ("Contact", v.as_str())).collect();
                self.respond_ok(now, msg, &extra, out);
                return Ok(Outcome::Queried(extension.to_owned()));
            }
            self.location.unbind(extension);
            self.respond_ok(now, msg, &[], out);
            return Ok(Outcome::LoggedOut(extension.to_owned()));
        };
        let expires = expiry(kept);
        let uri = kept.uri();
        if let Some(reason) = unreachable(&uri, self.settings.own_ip) {
            return Err(Refusal::new(400, reason));
        }
        let expires = expires.min(MAX_EXPIRES);
        let binding = Binding {
            uri: uri.as_str().to_owned(),
            peer: contact_peer(&uri, source),
            expires_at: now + Duration::from_secs(u64::from(expires)),
            call_id: msg.call_id().to_owned(),
            cseq: msg.cseq().seq,
        };
        let was_in = existing.is_some();
        let listing = contact_header(&binding, now);
        self.location.bind(extension, binding);
        self.respond_ok(now, msg, &[("Contact", &listing)], out);
        Ok(if was_in {
            Outcome::Refreshed(extension.to_owned())
        } else {
            Outcome::LoggedIn(extension.to_owned())
        })
    }

    /// Writes the 200 to a REGISTER with `extra` headers (the bindings)
    /// and, when the wall clock is known, a Date (RFC 3261 §10.3 step 8:
    /// phones without NTP set their clock by it).
    fn respond_ok(&self, now: Duration, msg: &Message, extra: &[(&str, &str)], out: &mut BytesMut) {
        let date = self.settings.unix_at_epoch.map(|at| http_date(at + now));
        let mut headers = extra.to_vec();
        if let Some(date) = &date {
            headers.push(("Date", date));
        }
        msg.response(200, "OK", Some(&tag(msg)), &headers, out);
    }

    /// Checks the Authorization of a REGISTER for `agent`.
    fn authenticate(&mut self, now: Duration, msg: &Message, agent: &Agent) -> Result<(), Refusal> {
        self.check_digest(now, msg, agent, Challenger::Registrar)
    }

    /// Checks the digest credentials of `msg` (Authorization for the
    /// registrar, Proxy-Authorization for the proxy) for `agent` (who must
    /// be the one authenticating); on failure, the refusal to send: 400
    /// for malformed credentials, 403 for a wrong password or someone
    /// else's credentials, else a fresh 401/407 challenge (`stale=true`
    /// when the nonce only expired).
    pub(crate) fn check_digest(
        &mut self,
        now: Duration,
        msg: &Message,
        agent: &Agent,
        challenger: Challenger,
    ) -> Result<(), Refusal> {
        let secret = secret_of(agent);
        let Some(d) = digest_for(msg, challenger.credentials_header(), &self.settings.domain)
        else {
            return Err(self.challenge(now, secret, false, challenger));
        };
        // RFC 2617 §3.2.2: without a required directive the credentials
        // are a 400. Checked first: a missing username is not someone
        // else's (403), nor a missing realm another realm's (a challenge).
        let required = [d.username, d.realm, d.nonce, d.uri, d.response];
        if required.iter().any(|v| v.is_none_or(str::is_empty)) {
            return Err(Refusal::new(400, "Malformed Authorization"));
        }
        let [username, realm, nonce, uri, response] = required.map(|v| unq(v.unwrap_or_default()));
        let [algorithm, cnonce, qop, nc, opaque] =
            [d.algorithm, d.cnonce, d.qop, d.nc, d.opaque].map(|v| v.map(unq));
        let creds = Credentials {
            username: &username,
            realm: &realm,
            nonce: &nonce,
            uri: &uri,
            response: &response,
            algorithm: algorithm.as_deref(),
            cnonce: cnonce.as_deref(),
            qop: qop.as_deref(),
            nc: nc.as_deref(),
            opaque: opaque.as_deref(),
        };
        if !is_own_username(agent, creds.username) {
            return Err(Refusal::new(403, "Forbidden"));
        }
        // Credentials answer for one request target (RFC 7616 §3.4.6):
        // without this check, the same header would authorise a request
        // to anyone else, e.g. replayed by the callee that received it.
        if !self.digest_uri_fits(creds.uri, msg) {
            return Err(Refusal::new(
                400,
                "Bad Request (digest uri is not the Request-URI)",
            ));
        }
        let our_realm = self.settings.domain.clone();
        match self.nonces.verify(
            now,
            msg.method_str().unwrap_or_default(),
            &creds,
            secret,
            &our_realm,
        ) {
            Ok(()) => Ok(()),
            Err(AuthError::Malformed(_)) => Err(Refusal::new(400, "Malformed Authorization")),
            Err(AuthError::WrongPassword) | Err(AuthError::BadSecret) => {
                Err(Refusal::new(403, "Forbidden"))
            }
            Err(e) => Err(self.challenge(now, secret, e.wants_stale_challenge(), challenger)),
        }
    }

    /// Whether credentials with digest `uri` may answer for `msg`: the
    /// `uri` names its Request-URI (RFC 7616 §3.4.6), or names no user but
    /// this registrar itself, by domain or by the blade's IP (sipp's
    /// form). Credentials for another agent's address are never reused
    /// for a request to someone else.
    fn digest_uri_fits(&self, uri: &str, msg: &Message) -> bool {
        let Some(given) = crate::sip::Uri::parse(uri.as_bytes()) else {
            return false;
        };
        if names_request_uri(&given, msg) {
            return true;
        }
        let host = given.host();
        given.user().is_none()
            && (host.eq_ignore_ascii_case(&self.settings.domain)
                || given
                    .ip()
                    .is_some_and(|ip| Some(ip) == self.settings.own_ip))
    }

    fn challenge(
        &mut self,
        now: Duration,
        secret: Secret<'_>,
        stale: bool,
        challenger: Challenger,
    ) -> Refusal {
        let realm = self.settings.domain.clone();
        let (status, reason, header) = match challenger {
            Challenger::Registrar => (401, "Unauthorized", "WWW-Authenticate"),
            Challenger::Proxy => (407, "Proxy Authentication Required", "Proxy-Authenticate"),
        };
        let mut refusal = Refusal::new(status, reason);
        for challenge in self
            .nonces
            .challenges(now, &realm, secret.algorithms(), stale)
        {
            refusal = refusal.with(header, challenge.to_string());
        }
        refusal
    }
}

/// Whether a digest `uri` names the Request-URI of `msg`: the same text,
/// or the same scheme, user, host and port (parameters aside, which
/// clients are not consistent about).
fn names_request_uri(given: &crate::sip::Uri<'_>, msg: &Message) -> bool {
    let Some(target) = msg.request_uri() else {
        return false;
    };
    given.as_str() == target.as_str()
        || given.scheme() == target.scheme()
            && given.user() == target.user()
            && given.same_host(&target)
            && given.port() == target.port()
}

/// Who challenges: the registrar (401, WWW-Authenticate) or the proxy (407,
/// Proxy-Authenticate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenger {
    Registrar,
    Proxy,
}

impl Challenger {
    /// The header a client answers this challenger's challenge in.
    fn credentials_header(self) -> HeaderName {
        match self {
            Challenger::Registrar => HeaderName::Authorization,
            Challenger::Proxy => HeaderName::ProxyAuthorization,
        }
    }
}

/// The Digest credentials in `msg`'s `header` lines for `realm`, else the
/// first ones (which then fail as another realm's). A request may carry
/// several, one per realm that challenged it (RFC 3261 §22.3: a server
/// uses its own realm's only), and another realm's listed first must not
/// hide ours.
fn digest_for<'m>(msg: &'m Message, header: HeaderName, realm: &str) -> Option<DigestParams<'m>> {
    let mut all = msg
        .header_values(header)
        .filter_map(|v| AuthValue::parse(v, Span::new(0, v.len()))?.digest());
    let ours = |d: &DigestParams<'_>| d.realm.is_some_and(|r| unq(r) == realm);
    let first = all.next()?;
    if ours(&first) {
        return Some(first);
    }
    Some(all.find(ours).unwrap_or(first))
}

/// Whether `username` names `agent`: its extension, or its badge (its
/// login id, which a phone may be set up to authenticate with) when the
/// agent has a password. An HA1 credential is bound to the extension.
fn is_own_username(agent: &Agent, username: &str) -> bool {
    username == agent.extension
        || (username == agent.badge && matches!(agent.credential, Credential::Password(_)))
}

/// The digest secret of a provisioned agent.
fn secret_of(agent: &Agent) -> Secret<'_> {
    match &agent.credential {
        Credential::Password(p) => Secret::Password(p),
        Credential::Ha1 { md5, sha256 } => Secret::Ha1 {
            md5: md5.as_deref(),
            sha256: sha256.as_deref(),
        },
    }
}

/// A refusal: status, reason and extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: &'static str,
    /// Extra headers (challenges, Min-Expires, Unsupported, Retry-After).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// A refusal with no extra headers.
    pub fn new(status: u16, reason: &'static str) -> Self {
        Refusal {
            status,
            reason,
            headers: Vec::new(),
        }
    }

    /// 420 Bad Extension naming the option `tags` a request requires
    /// (RFC 3261 §8.2.2.3), none of which sipblade supports; `None` when
    /// it requires none.
    pub fn unsupported<'a>(tags: impl Iterator<Item = &'a str>) -> Option<Self> {
        let tags: Vec<&str> = tags.collect();
        (!tags.is_empty())
            .then(|| Refusal::new(420, "Bad Extension").with("Unsupported", tags.join(", ")))
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Writes the response to `request` with `to_tag` into `out`.
    pub fn respond(&self, request: &Message, to_tag: &str, out: &mut BytesMut) {
        let extra: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        request.response(self.status, self.reason, Some(to_tag), &extra, out);
    }
}

/// RFC 3261 §10.3 step 7: a REGISTER in the same Call-ID as the binding
/// must carry a higher CSeq, or it is out of order.
fn check_order(existing: Option<&Binding>, msg: &Message) -> Result<(), Refusal> {
    match existing {
        Some(b) if b.call_id == msg.call_id() && msg.cseq().seq <= b.cseq => {
            Err(Refusal::new(500, "Out Of Order CSeq").with("Retry-After", "1".to_owned()))
        }
        _ => Ok(()),
    }
}

/// Why the blade could never send to a Contact (a 400's reason), if it
/// could not: calls
/// to such a binding would wait for timer B (32 s) with both agents held
/// in the call, so the REGISTER is refused instead. A host name is not
/// judged (it is not resolved: requests then go to the REGISTER's source).
fn unreachable(uri: &crate::sip::Uri<'_>, own_ip: Option<IpAddr>) -> Option<&'static str> {
    match uri.scheme() {
        Scheme::Sip => {}
        Scheme::Sips => return Some("Unreachable Contact (sips: no TLS here)"),
        _ => return Some("Unreachable Contact (not a sip: URI)"),
    }
    if let Some(transport) = uri.param("transport") {
        if transport.and_then(Transport::parse).is_none() {
            return Some("Unreachable Contact (transport not UDP or TCP)");
        }
    }
    if uri.port() == Some(0) {
        return Some("Unreachable Contact (port 0)");
    }
    let ip = uri.ip()?;
    let unroutable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if unroutable {
        return Some("Unreachable Contact (not a unicast address)");
    }
    // The blade's sockets are of its SIP address's family.
    if own_ip.is_some_and(|own| !own.is_unspecified() && own.is_ipv4() != ip.is_ipv4()) {
        return Some("Unreachable Contact (IP version not the blade's)");
    }
    None
}

/// Where to reach a registered contact: the Contact's IP literal and
/// port (a host name is not resolved on the hot path: then the
/// REGISTER's source). Over a stream, also the connection the REGISTER
/// came on, which requests use while it lasts (an agent behind NAT is
/// reachable only through it); once it has closed, a new connection goes
/// to the Contact (RFC 3261 §18.1.1), as a UA that accepts connections
/// (sipp over TCP, for one) expects.
fn contact_peer(uri: &crate::sip::Uri<'_>, source: Peer) -> Peer {
    let contact = uri
        .ip()
        .map(|ip| SocketAddr::new(ip, uri.port().unwrap_or(5060)));
    if source.transport.is_reliable() {
        return Peer {
            addr: contact.unwrap_or(source.addr),
            ..source
        };
    }
    let transport = uri
        .param("transport")
        .flatten()
        .and_then(Transport::parse)
        .unwrap_or(Transport::Udp);
    match contact {
        Some(addr) => Peer::new(addr, transport),
        None => source,
    }
}

/// Whether a Contact URI names the bound contact `bound` (RFC 3261
/// §19.1.4, in the parts that tell terminals apart: scheme, user, host,
/// port and transport, a port or transport left out meaning the default,
/// an IP address compared as one, however spelled).
fn same_contact(bound: &str, uri: &crate::sip::Uri<'_>) -> bool {
    let Some(bound) = crate::sip::Uri::parse(bound.as_bytes()) else {
        return false;
    };
    let port = |u: &crate::sip::Uri<'_>| {
        u.port().unwrap_or(if u.scheme() == Scheme::Sips {
            5061
        } else {
            5060
        })
    };
    let transport = |u: &crate::sip::Uri<'_>| {
        u.param("transport")
            .flatten()
            .map_or_else(|| b"udp".to_vec(), <[u8]>::to_ascii_lowercase)
    };
    bound.scheme() == uri.scheme()
        && bound.user() == uri.user()
        && bound.same_host(uri)
        && port(&bound) == port(uri)
        && transport(&bound) == transport(uri)
}

/// Whether `q` is a qvalue (RFC 3261 §25.1): `0` to `1` with at most
/// three decimals, `"0" [ "." 0*3DIGIT ] / "1" [ "." 0*3("0") ]`.
fn is_qvalue(q: &[u8]) -> bool {
    let (int, frac) = match q.iter().position(|&b| b == b'.') {
        Some(dot) => (&q[..dot], &q[dot + 1..]),
        None => (q, &[][..]),
    };
    frac.len() <= 3
        && match int {
            b"0" => frac.iter().all(u8::is_ascii_digit),
            b"1" => frac.iter().all(|&b| b == b'0'),
            _ => false,
        }
}

/// `<uri>;expires=N` for a 200 OK listing.
fn contact_header(binding: &Binding, now: Duration) -> String {
    let left = binding.expires_at.saturating_sub(now).as_secs();
    format!("<{}>;expires={}", binding.uri, left)
}

/// `unix` (time since the Unix epoch) as an RFC 3261 §20.17 date
/// (RFC 1123 form, always GMT): `Sat, 13 Nov 2010 23:29:00 GMT`.
fn http_date(unix: Duration) -> String {
    let secs = i64::try_from(unix.as_secs()).unwrap_or(i64::MAX);
    let at =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // The English names' first three letters are the RFC 1123 ones.
    let (weekday, month) = (at.weekday().to_string(), at.month().to_string());
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        &weekday[..3],
        at.day(),
        &month[..3],
        at.year(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The To tag of locally generated responses: stable across
/// retransmissions of the request.
pub fn tag(msg: &Message) -> String {
    derived_tag(&[
        msg.call_id_bytes(),
        msg.from().tag().unwrap_or_default().as_bytes(),
    ])
}

#[cfg(test)]
mod tests;
