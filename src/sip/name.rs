//! Header names: long and compact forms, compared case-insensitively.

/// The headers sipblade reads, plus [`HeaderName::Other`] for the rest
/// (kept verbatim, never split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentLength,
    ContentType,
    Contact,
    Route,
    RecordRoute,
    Expires,
    MinExpires,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Allow,
    RetryAfter,
    UserAgent,
    Server,
    Subject,
    ContentEncoding,
    Event,
    AllowEvents,
    ReferTo,
    ReferredBy,
    SessionExpires,
    Identity,
    /// Any other header.
    Other,
}

impl HeaderName {
    /// Classifies a header name, long or compact form, any case.
    #[inline]
    pub fn from_bytes(n: &[u8]) -> HeaderName {
        use HeaderName::*;
        if n.len() == 1 {
            return match n[0] | 0x20 {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'k' => Supported,
                b's' => Subject,
                b'e' => ContentEncoding,
                b'o' => Event,
                b'u' => AllowEvents,
                b'r' => ReferTo,
                b'b' => ReferredBy,
                b'x' => SessionExpires,
                b'y' => Identity,
                _ => Other,
            };
        }
        // The stream framer classifies whatever precedes a colon, which may
        // be nothing: an empty name is no known header, not a panic.
        let Some(&first) = n.first() else {
            return Other;
        };
        // Each arm compares with its long form(s) in place, so the
        // comparison is specialised to a known length and pattern.
        let is = |lower: &[u8], h: HeaderName| if eq_lower(n, lower) { h } else { Other };
        match (n.len(), first | 0x20) {
            // Under four bytes, a letter or two to fold and compare (the
            // first is matched already): `eq_lower` packs these through an
            // out-of-line closure.
            (3, b'v') if n[1] | 0x20 == b'i' && n[2] | 0x20 == b'a' => Via,
            (4, b'f') => is(b"from", From),
            (2, b't') if n[1] | 0x20 == b'o' => To,
            (7, b'c') => match is(b"call-id", CallId) {
                Other => is(b"contact", Contact),
                h => h,
            },
            (4, b'c') => is(b"cseq", CSeq),
            (12, b'm') => is(b"max-forwards", MaxForwards),
            (14, b'c') => is(b"content-length", ContentLength),
            (12, b'c') => is(b"content-type", ContentType),
            (5, b'r') => is(b"route", Route),
            (12, b'r') => is(b"record-route", RecordRoute),
            (7, b'e') => is(b"expires", Expires),
            (11, b'm') => is(b"min-expires", MinExpires),
            (7, b'r') => is(b"require", Require),
            (13, b'p') => is(b"proxy-require", ProxyRequire),
            (9, b's') => is(b"supported", Supported),
            (11, b'u') => is(b"unsupported", Unsupported),
            (13, b'a') => is(b"authorization", Authorization),
            (19, b'p') => is(b"proxy-authorization", ProxyAuthorization),
            (16, b'w') => is(b"www-authenticate", WwwAuthenticate),
            (18, b'p') => is(b"proxy-authenticate", ProxyAuthenticate),
            (5, b'a') => is(b"allow", Allow),
            (11, b'r') => match is(b"retry-after", RetryAfter) {
                Other => is(b"referred-by", ReferredBy),
                h => h,
            },
            (10, b'u') => is(b"user-agent", UserAgent),
            (6, b's') => is(b"server", Server),
            (7, b's') => is(b"subject", Subject),
            (16, b'c') => is(b"content-encoding", ContentEncoding),
            (5, b'e') => is(b"event", Event),
            (12, b'a') => is(b"allow-events", AllowEvents),
            (8, b'r') => is(b"refer-to", ReferTo),
            (15, b's') => is(b"session-expires", SessionExpires),
            (8, b'i') => is(b"identity", Identity),
            _ => Other,
        }
    }

    /// The canonical long form, as sipblade writes it; `""` for `Other`.
    pub fn as_str(self) -> &'static str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            MaxForwards => "Max-Forwards",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            Contact => "Contact",
            Route => "Route",
            RecordRoute => "Record-Route",
            Expires => "Expires",
            MinExpires => "Min-Expires",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Supported => "Supported",
            Unsupported => "Unsupported",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            Allow => "Allow",
            RetryAfter => "Retry-After",
            UserAgent => "User-Agent",
            Server => "Server",
            Subject => "Subject",
            ContentEncoding => "Content-Encoding",
            Event => "Event",
            AllowEvents => "Allow-Events",
            ReferTo => "Refer-To",
            ReferredBy => "Referred-By",
            SessionExpires => "Session-Expires",
            Identity => "Identity",
            Other => "",
        }
    }
}

/// Bit 5 of every byte: the ASCII case bit.
const CASE: u64 = 0x2020_2020_2020_2020;

/// Whether `n` equals `lower` ignoring ASCII case, where `lower` holds only
/// lowercase letters and `-` (every long header name). Compares a word at a
/// time: a letter of `lower` (bit 6 set) matches either case of `n`'s byte,
/// any other byte only itself, so `n` may hold any bytes at all.
#[inline(always)]
pub(crate) fn eq_lower(n: &[u8], lower: &[u8]) -> bool {
    let len = n.len();
    if len != lower.len() {
        return false;
    }
    let eq = |a: u64, b: u64| a | ((b >> 1) & CASE) == b;
    // Callers index within `len`, so the slices are always long enough;
    // copying through fixed arrays keeps that free of panicking paths.
    let word = |s: &[u8], at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let half = |s: &[u8], at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&s[at..at + 4]);
        u64::from(u32::from_le_bytes(b))
    };
    if len >= 8 {
        let mut i = 0;
        while i + 8 < len {
            if !eq(word(n, i), word(lower, i)) {
                return false;
            }
            i += 8;
        }
        eq(word(n, len - 8), word(lower, len - 8))
    } else if len >= 4 {
        // Two overlapping halves, packed into one word.
        eq(
            half(n, 0) | half(n, len - 4) << 32,
            half(lower, 0) | half(lower, len - 4) << 32,
        )
    } else if len > 0 {
        // First, middle and last byte packed into one word (for two or one
        // byte some are the same byte twice, on both sides alike).
        let small =
            |s: &[u8]| u64::from(s[0]) | u64::from(s[len / 2]) << 8 | u64::from(s[len - 1]) << 16;
        eq(small(n), small(lower))
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName;

    #[test]
    fn long_compact_and_case() {
        assert_eq!(
            HeaderName::from_bytes(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"M"), HeaderName::Contact);
        assert_eq!(HeaderName::from_bytes(b"call-ID"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Contacts"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(
            HeaderName::from_bytes(b"CONTENT-length"),
            HeaderName::ContentLength
        );
        assert_eq!(
            HeaderName::from_bytes(b"proxy-AUTHORIZATION"),
            HeaderName::ProxyAuthorization
        );
        // Only letters fold: `-` matches itself alone.
        assert_eq!(HeaderName::from_bytes(b"call\rid"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Max_Forwards"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Max\rForwards"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"tO"), HeaderName::To);
        assert_eq!(HeaderName::from_bytes(b"T@"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"V-a"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"vIx"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Vi\x01"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b""), HeaderName::Other);
    }

    #[test]
    fn every_long_form_round_trips() {
        use HeaderName::*;
        for h in [
            Via,
            From,
            To,
            CallId,
            CSeq,
            MaxForwards,
            ContentLength,
            ContentType,
            Contact,
            Route,
            RecordRoute,
            Expires,
            MinExpires,
            Require,
            ProxyRequire,
            Supported,
            Unsupported,
            Authorization,
            ProxyAuthorization,
            WwwAuthenticate,
            ProxyAuthenticate,
            Allow,
            RetryAfter,
            UserAgent,
            Server,
            Subject,
            ContentEncoding,
            Event,
            AllowEvents,
            ReferTo,
            ReferredBy,
            SessionExpires,
            Identity,
        ] {
            assert_eq!(
                HeaderName::from_bytes(h.as_str().as_bytes()),
                h,
                "{}",
                h.as_str()
            );
        }
    }
}
