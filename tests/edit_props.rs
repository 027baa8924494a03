//! Property tests of the editing layer (`forward`, `strip_top_via`,
//! `response`) over SIP messages generated from their components: every
//! generated message must parse to the components it was built from, and
//! every edit must give a message that parses again to what was intended,
//! with every line it did not edit copied byte for byte, in order.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use sipblade::sip::{ErrorKind, Forward, Message};

// ---- the generated message ----------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Via,
    Route,
    RecordRoute,
    MaxForwards,
    ContentLength,
    From,
    To,
    CallId,
    CSeq,
    Other,
}

/// One header line: `name colon value (sep value)* CRLF`.
#[derive(Debug, Clone)]
struct Line {
    kind: Kind,
    name: String,
    colon: String,
    values: Vec<String>,
    /// `seps[i]` goes between `values[i]` and `values[i + 1]`.
    seps: Vec<String>,
}

impl Line {
    fn single(kind: Kind, name: &str, colon: &str, value: String) -> Line {
        Line {
            kind,
            name: name.into(),
            colon: colon.into(),
            values: vec![value],
            seps: Vec::new(),
        }
    }

    /// The line as written from its `skip`-th value on.
    fn text_from(&self, skip: usize) -> String {
        let mut s = format!("{}{}", self.name, self.colon);
        for (i, v) in self.values.iter().enumerate().skip(skip) {
            if i > skip {
                s.push_str(&self.seps[i - 1]);
            }
            s.push_str(v);
        }
        s.push_str("\r\n");
        s
    }
}

#[derive(Debug, Clone)]
enum Start {
    Request {
        method: String,
        uri: String,
        version: String,
    },
    Response {
        status: u16,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Gen {
    leading_crlf: bool,
    start: Start,
    cseq: u32,
    cseq_method: String,
    lines: Vec<Line>,
    body: Vec<u8>,
    /// Octets after a Content-Length-delimited body (empty without one).
    junk: Vec<u8>,
}

impl Gen {
    fn start_line(&self) -> String {
        match &self.start {
            Start::Request {
                method,
                uri,
                version,
            } => format!("{method} {uri} {version}\r\n"),
            Start::Response { status, reason } => format!("SIP/2.0 {status} {reason}\r\n"),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        if self.leading_crlf {
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(self.start_line().as_bytes());
        for l in &self.lines {
            b.extend_from_slice(l.text_from(0).as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(&self.body);
        b.extend_from_slice(&self.junk);
        b
    }

    /// Every value of the `kind` lines, in order.
    fn values(&self, kind: Kind) -> Vec<&[u8]> {
        self.lines
            .iter()
            .filter(|l| l.kind == kind)
            .flat_map(|l| l.values.iter().map(|v| v.as_bytes()))
            .collect()
    }

    fn line(&self, kind: Kind) -> Option<&Line> {
        self.lines.iter().find(|l| l.kind == kind)
    }

    fn max_forwards(&self) -> Option<u8> {
        self.line(Kind::MaxForwards)
            .map(|l| l.values[0].parse().unwrap())
    }

    fn request_uri(&self) -> &str {
        match &self.start {
            Start::Request { uri, .. } => uri,
            Start::Response { .. } => panic!("not a request"),
        }
    }
}

// ---- strategies -----------------------------------------------------------

const COLONS: &[&str] = &[": ", ":", " : ", ":\t", ":\r\n ", ":  \r\n\t "];
const SEPS: &[&str] = &[",", ", ", " , ", ",\r\n ", " ,\r\n\t", "\r\n , "];

fn s(v: &[&'static str]) -> impl Strategy<Value = String> + use<> {
    select(v.to_vec()).prop_map(String::from)
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9.!%*_+`'~-]{1,12}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,6}[a-z0-9])?){0,2}",
        2 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        2 => s(&["[2001:db8::1]", "[::ffff:192.0.2.10]", "[2001:db8:0:0:1:0:0:1]", "[fe80::a:1]"]),
    ]
}

fn port() -> impl Strategy<Value = String> {
    option::of(any::<u16>()).prop_map(|p| p.map(|p| format!(":{p}")).unwrap_or_default())
}

/// A SIP or SIPS URI with odd but legal users and parameters, no headers.
fn sip_uri() -> impl Strategy<Value = String> {
    (
        s(&["sip", "sips", "SIP"]),
        option::of(s(&[
            "1001",
            "alice",
            "+1-555-0100",
            "u%20x",
            "a.b_c~d",
            "user;par=u%40example.net",
            "x!*'()&=+$,;?/",
            "alice:secret",
        ])),
        host(),
        port(),
        vec(
            s(&[
                ";transport=tcp",
                ";lr",
                ";maddr=10.0.0.1",
                ";x-odd=%41b",
                ";ttl=5",
                ";user=phone",
                ";a=[::1]",
            ]),
            0..3,
        ),
    )
        .prop_map(|(scheme, user, host, port, params)| {
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            format!("{scheme}:{user}{host}{port}{}", params.concat())
        })
}

/// A URI that is fine as an addr-spec (no `;`, `,`, `?` in it).
fn plain_sip_uri() -> impl Strategy<Value = String> {
    (
        s(&["alice", "1001", "bob.smith", "%61lice"]),
        host(),
        port(),
    )
        .prop_map(|(user, host, port)| format!("sip:{user}@{host}{port}"))
}

fn request_uri() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => sip_uri(),
        1 => s(&[
            "tel:+1-201-555-0123",
            "tel:+1-201-555-0123;phone-context=cc.example",
            "tel:911;phone-context=+1",
        ]),
        1 => s(&[
            "urn:service:sos",
            "soap.beep://192.0.2.103:3002",
            "mailto:a@b.example",
            "nobodyKnowsThisScheme:totallyopaquecontent",
        ]),
    ]
}

const METHODS: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
    "PRACK",
    "MESSAGE",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "PUBLISH",
    "FOO",
    "x-Ext.1!%~",
    "invite",
    "RE%47ISTER",
];

fn via_value() -> impl Strategy<Value = String> {
    (
        s(&[
            "SIP/2.0/UDP",
            "SIP/2.0/TCP",
            "SIP/2.0/TLS",
            "SIP / 2.0 / SCTP",
            "sip/2.0/ws",
        ]),
        host(),
        port(),
        token(),
        vec(
            s(&[
                ";rport",
                ";rport=5060",
                ";received=192.0.2.7",
                ";received=[2001:db8::9]",
                ";ttl=16",
                ";maddr=224.0.0.1",
                ";x=\"q,;v\"",
                ";ext",
                " ; spaced = value",
            ]),
            0..3,
        ),
    )
        .prop_map(|(proto, host, port, branch, params)| {
            format!(
                "{proto} {host}{port};branch=z9hG4bK{branch}{}",
                params.concat()
            )
        })
}

fn route_value() -> impl Strategy<Value = String> {
    (
        s(&["", "\"a, b\" ", "Proxy ", "\"\" "]),
        sip_uri(),
        s(&["", ";x=1", " ;y", ";z=\"q>,\""]),
    )
        .prop_map(|(display, uri, params)| format!("{display}<{uri};lr>{params}"))
}

/// One line of a list header holding `count` values.
fn list_line(
    kind: Kind,
    names: &'static [&'static str],
    value: impl Strategy<Value = String>,
    count: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Line> {
    (s(names), s(COLONS), vec(value, count), vec(s(SEPS), 2)).prop_map(
        move |(name, colon, values, mut seps)| {
            seps.truncate(values.len() - 1);
            Line {
                kind,
                name,
                colon,
                values,
                seps,
            }
        },
    )
}

/// 1–3 Via values over 1–2 lines.
fn vias() -> impl Strategy<Value = Vec<Line>> {
    let names = &["Via", "v", "VIA", "V"];
    prop_oneof![
        list_line(Kind::Via, names, via_value(), 1..=3).prop_map(|l| vec![l]),
        (
            list_line(Kind::Via, names, via_value(), 1..=2),
            list_line(Kind::Via, names, via_value(), 1..=1),
        )
            .prop_map(|(a, b)| vec![a, b]),
    ]
}

/// 0–3 Route values over 0–2 lines.
fn routes() -> impl Strategy<Value = Vec<Line>> {
    let names = &["Route", "route"];
    prop_oneof![
        Just(Vec::new()),
        list_line(Kind::Route, names, route_value(), 1..=3).prop_map(|l| vec![l]),
        (
            list_line(Kind::Route, names, route_value(), 1..=2),
            list_line(Kind::Route, names, route_value(), 1..=1),
        )
            .prop_map(|(a, b)| vec![a, b]),
    ]
}

/// From or To: name-addr with or without a display name, or addr-spec;
/// with or without a tag.
fn name_addr(kind: Kind, names: &'static [&'static str]) -> impl Strategy<Value = Line> {
    let value = prop_oneof![
        (
            s(&[
                "",
                "\"Alice\" ",
                "\"Watson, Thomas\" ",
                "Bob Smith ",
                "\"A \\\"q\\\" \\\\ b\" ",
                "\"Zoë\" ",
                "caller",
            ]),
            sip_uri(),
            s(&["", ";x-p=1", " ;y"]),
        )
            .prop_map(|(d, u, p)| format!("{d}<{u}>{p}")),
        plain_sip_uri(),
    ];
    (s(names), s(COLONS), value, option::of(token())).prop_map(move |(name, colon, v, tag)| {
        let tag = tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        Line::single(kind, &name, &colon, format!("{v}{tag}"))
    })
}

fn call_id() -> impl Strategy<Value = Line> {
    (
        s(&["Call-ID", "i", "call-id", "CALL-ID"]),
        s(COLONS),
        r#"[A-Za-z0-9.!%*_+`'~()<>:\\/"\[\]?{}-]{1,20}(@[A-Za-z0-9.-]{1,10})?"#,
    )
        .prop_map(|(name, colon, v)| Line::single(Kind::CallId, &name, &colon, v))
}

fn max_forwards() -> impl Strategy<Value = Option<Line>> {
    option::of((
        s(&["Max-Forwards", "max-forwards"]),
        s(COLONS),
        1u8..=255,
        any::<bool>(),
    ))
    .prop_map(|mf| {
        mf.map(|(name, colon, n, pad)| {
            let v = if pad {
                format!("{n:04}")
            } else {
                n.to_string()
            };
            Line::single(Kind::MaxForwards, &name, &colon, v)
        })
    })
}

/// Headers nobody reads, with odd but legal values.
fn others() -> impl Strategy<Value = Vec<Line>> {
    let value = prop_oneof![
        s(&[
            ";;,,;;,;",
            "a, b ,c",
            "\"quoted, with comma\"",
            "first\r\n second\r\n\tthird",
            "",
            "Zoë ünïcødé",
            "<sip:x@y>, <sip:z@w>",
            "  padded  ",
            "= 2**3 * 5**2",
            "%ZZ not an escape",
            "tab\there",
            "trailing fold\r\n ",
            "Fri, 01 Jan 2010 16:00:00 EST",
        ]),
        "[ -~]{0,30}",
    ];
    vec(
        (
            s(&[
                "X-Odd",
                "Subject",
                "s",
                "User-Agent",
                "X-Empty",
                "Supported",
                "k",
                "Allow",
                "P-Asserted-Identity",
                "Date",
                "x-tab",
            ]),
            s(COLONS),
            value,
        )
            .prop_map(|(name, colon, v)| Line::single(Kind::Other, &name, &colon, v)),
        0..4,
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![3 => any::<u8>(), 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => Just(0u8)],
        0..64,
    )
}

/// `(start line, CSeq method)`.
fn start(request: bool) -> BoxedStrategy<(Start, String)> {
    if request {
        (s(METHODS), request_uri(), s(&["SIP/2.0", "sip/2.0"]))
            .prop_map(|(method, uri, version)| {
                let cseq_method = method.clone();
                (
                    Start::Request {
                        method,
                        uri,
                        version,
                    },
                    cseq_method,
                )
            })
            .boxed()
    } else {
        (
            100u16..=699,
            s(&[
                "OK",
                "Ringing",
                "Busy Here",
                "",
                "= 2**3 * 5**2 Ок",
                "Not\tFound",
            ]),
            s(METHODS),
        )
            .prop_map(|(status, reason, m)| (Start::Response { status, reason }, m))
            .boxed()
    }
}

fn message(request: bool) -> impl Strategy<Value = Gen> {
    let headers = (
        vias(),
        routes(),
        option::of(list_line(
            Kind::RecordRoute,
            &["Record-Route", "record-route"],
            route_value(),
            1..=2,
        )),
        name_addr(Kind::From, &["From", "f"]),
        name_addr(Kind::To, &["To", "t"]),
        call_id(),
        (
            any::<u32>(),
            s(&[" ", "  ", "\t", "\r\n "]),
            s(&["CSeq", "cseq", "CSEQ"]),
            s(COLONS),
        ),
        max_forwards(),
        others(),
    );
    let framing = (
        option::of((
            s(&["Content-Length", "l", "content-length"]),
            s(COLONS),
            any::<bool>(),
        )),
        body(),
        vec(any::<u8>(), 0..16),
        any::<bool>(),
    );
    (start(request), headers, framing).prop_flat_map(
        |((start, cseq_method), headers, (cl, body, junk, leading_crlf))| {
            let (vias, routes, rr, from, to, call_id, cseq, mf, others) = headers;
            let (n, space, name, colon) = cseq;
            let mut lines = vias;
            lines.extend(routes);
            lines.extend(rr);
            lines.extend([from, to, call_id]);
            lines.push(Line::single(
                Kind::CSeq,
                &name,
                &colon,
                format!("{n}{space}{cseq_method}"),
            ));
            lines.extend(mf);
            lines.extend(others);
            let has_cl = cl.is_some();
            if let Some((name, colon, pad)) = cl {
                let v = if pad {
                    format!("{:05}", body.len())
                } else {
                    body.len().to_string()
                };
                lines.push(Line::single(Kind::ContentLength, &name, &colon, v));
            }
            let junk = if has_cl { junk } else { Vec::new() };
            Just(lines).prop_shuffle().prop_map(move |lines| Gen {
                leading_crlf,
                start: start.clone(),
                cseq: n,
                cseq_method: cseq_method.clone(),
                lines,
                body: body.clone(),
                junk: junk.clone(),
            })
        },
    )
}

/// The edits of a forward: a Via, a Record-Route, a Request-URI, a pop.
#[derive(Debug, Clone)]
struct Edits {
    via: Option<String>,
    record_route: Option<String>,
    request_uri: Option<String>,
    pop_routes: usize,
}

fn edits() -> impl Strategy<Value = Edits> {
    (
        option::of(
            "[A-Za-z0-9]{1,16}"
                .prop_map(|b| format!("SIP/2.0/UDP 192.0.2.254:5060;branch=z9hG4bK-fwd-{b}")),
        ),
        option::of(prop_oneof![
            Just("<sip:192.0.2.254;lr>".to_string()),
            "[a-z0-9]{1,8}".prop_map(|u| format!("<sip:{u}@proxy.example;lr>")),
        ]),
        option::of(request_uri()),
        0..4usize,
    )
        .prop_map(|(via, record_route, request_uri, pop_routes)| Edits {
            via,
            record_route,
            request_uri,
            pop_routes,
        })
}

// ---- helpers --------------------------------------------------------------

fn parse(b: &[u8]) -> Result<Message, TestCaseError> {
    Message::parse(Bytes::copy_from_slice(b)).map_err(|e| {
        TestCaseError::fail(format!(
            "does not parse ({e}): {:?}",
            String::from_utf8_lossy(b)
        ))
    })
}

/// The header lines of `m` as written, CRLF included.
fn lines(m: &Message) -> Vec<&[u8]> {
    m.header_fields()
        .iter()
        .map(|h| h.line().of(m.as_bytes()))
        .collect()
}

/// Whether `want` appears in `have` in order (not necessarily adjacent).
fn is_subsequence(want: &[&[u8]], have: &[&[u8]]) -> bool {
    let mut it = have.iter();
    want.iter().all(|w| it.any(|h| h == w))
}

fn trim_lws(v: &str) -> &str {
    v.trim_matches([' ', '\t', '\r', '\n'])
}

fn vias_of(m: &Message) -> Vec<&[u8]> {
    m.vias().map(|v| v.as_bytes()).collect()
}

fn routes_of(m: &Message) -> Vec<&[u8]> {
    m.routes().map(|r| r.as_bytes()).collect()
}

fn record_routes_of(m: &Message) -> Vec<&[u8]> {
    m.record_routes().map(|r| r.as_bytes()).collect()
}

/// Checks that `m` holds exactly the components `g` was built from.
fn check_components(g: &Gen, m: &Message) -> Result<(), TestCaseError> {
    match &g.start {
        Start::Request { method, uri, .. } => {
            prop_assert_eq!(m.method_str(), Some(method.as_str()));
            prop_assert_eq!(m.request_uri().unwrap().as_str(), uri.as_str());
        }
        Start::Response { status, reason } => {
            prop_assert_eq!(m.status(), Some(*status));
            prop_assert_eq!(m.reason(), Some(reason.as_bytes()));
        }
    }
    prop_assert_eq!(vias_of(m), g.values(Kind::Via));
    prop_assert_eq!(routes_of(m), g.values(Kind::Route));
    prop_assert_eq!(record_routes_of(m), g.values(Kind::RecordRoute));
    prop_assert_eq!(m.from().as_bytes(), g.values(Kind::From)[0]);
    prop_assert_eq!(m.to().as_bytes(), g.values(Kind::To)[0]);
    prop_assert_eq!(m.call_id().as_bytes(), g.values(Kind::CallId)[0]);
    prop_assert_eq!(m.cseq().seq, g.cseq);
    prop_assert_eq!(m.cseq_method_str(), g.cseq_method.as_str());
    prop_assert_eq!(m.max_forwards(), g.max_forwards());
    let cl = g.line(Kind::ContentLength).map(|_| g.body.len() as u32);
    prop_assert_eq!(m.content_length(), cl);
    prop_assert_eq!(m.body(), &g.body[..]);
    prop_assert_eq!(m.header_count(), g.lines.len());
    for (h, l) in m.headers().zip(&g.lines) {
        prop_assert_eq!(h.name, l.name.as_str());
        if l.kind == Kind::Other {
            prop_assert_eq!(h.value, trim_lws(&l.values[0]).as_bytes());
        }
    }
    Ok(())
}

// ---- properties -------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A generated request parses to its components.
    #[test]
    fn generated_requests_parse(g in message(true)) {
        let m = parse(&g.bytes())?;
        check_components(&g, &m)?;
    }

    /// A generated response parses to its components.
    #[test]
    fn generated_responses_parse(g in message(false)) {
        let m = parse(&g.bytes())?;
        check_components(&g, &m)?;
    }

    /// `forward` applies exactly the edits asked for and copies the rest.
    #[test]
    fn forward_applies_the_edits(g in message(true), e in edits()) {
        let orig = parse(&g.bytes())?;
        let edit = Forward {
            via: e.via.as_deref(),
            record_route: e.record_route.as_deref(),
            request_uri: e.request_uri.as_deref(),
            pop_routes: e.pop_routes,
            consume_credentials_of: None,
        };
        let mut out = BytesMut::new();
        prop_assert!(orig.forward(&edit, &mut out).is_ok());
        let fwd = parse(&out)?;

        // The start line: the method and version as written, the new or
        // the old Request-URI; leading line breaks dropped.
        let Start::Request { method, version, .. } = &g.start else { unreachable!() };
        let uri = e.request_uri.as_deref().unwrap_or(g.request_uri());
        let start = format!("{method} {uri} {version}\r\n");
        prop_assert!(out.starts_with(start.as_bytes()), "{:?}", String::from_utf8_lossy(&out));
        prop_assert_eq!(fwd.request_uri().unwrap().as_str(), uri);

        // The new Via on top, the old ones after it in order.
        let mut want_vias = g.values(Kind::Via);
        if let Some(v) = &e.via {
            want_vias.insert(0, v.as_bytes());
        }
        prop_assert_eq!(vias_of(&fwd), want_vias);
        if let Some(v) = &e.via {
            prop_assert_eq!(fwd.top_via().branch(), v.split("branch=").nth(1));
        }
        let mut want_rr = g.values(Kind::RecordRoute);
        if let Some(rr) = &e.record_route {
            want_rr.insert(0, rr.as_bytes());
        }
        prop_assert_eq!(record_routes_of(&fwd), want_rr);

        // Exactly the top Route values asked for popped, as many as there are.
        let old_routes = g.values(Kind::Route);
        let popped = e.pop_routes.min(old_routes.len());
        prop_assert_eq!(routes_of(&fwd), &old_routes[popped..]);

        let want_mf = g.max_forwards().map_or(70, |n| n - 1);
        prop_assert_eq!(fwd.max_forwards(), Some(want_mf));
        prop_assert_eq!(fwd.content_length(), Some(g.body.len() as u32));
        prop_assert_eq!(fwd.body(), &g.body[..]);
        prop_assert_eq!(out.len(), fwd.headers_end() + g.body.len(), "octets after the body");

        prop_assert_eq!(fwd.call_id(), orig.call_id());
        prop_assert_eq!(fwd.cseq().seq, orig.cseq().seq);
        prop_assert_eq!(fwd.cseq().method, orig.cseq().method);
        prop_assert_eq!(fwd.cseq_method_str(), orig.cseq_method_str());
        prop_assert_eq!(fwd.from().as_bytes(), orig.from().as_bytes());
        prop_assert_eq!(fwd.to().as_bytes(), orig.to().as_bytes());

        // Line by line: what was not edited is copied as it was, in order;
        // the edited lines are spliced, not rewritten.
        let mut to_pop = e.pop_routes;
        let mut untouched = Vec::new();
        let mut edited = Vec::new();
        for (line, l) in lines(&orig).into_iter().zip(&g.lines) {
            if l.kind == Kind::MaxForwards {
                let n: u8 = l.values[0].parse().unwrap();
                edited.push(format!("{}{}{}\r\n", l.name, l.colon, n - 1));
            } else if l.kind == Kind::Route && to_pop > 0 {
                // The line loses its first values; gone if it loses all.
                if l.values.len() > to_pop {
                    edited.push(l.text_from(to_pop));
                }
                to_pop = to_pop.saturating_sub(l.values.len());
            } else if l.kind == Kind::ContentLength && folded(line) {
                // Stream framers read Content-Length from one line.
                edited.push(format!("Content-Length: {}\r\n", g.body.len()));
            } else {
                untouched.push(line);
            }
        }
        let out_lines = lines(&fwd);
        prop_assert!(is_subsequence(&untouched, &out_lines), "{:?}", String::from_utf8_lossy(&out));
        for line in &edited {
            prop_assert!(out_lines.contains(&line.as_bytes()), "{:?} not in {:?}", line, String::from_utf8_lossy(&out));
        }
        let added = usize::from(e.via.is_some())
            + usize::from(e.record_route.is_some())
            + usize::from(g.max_forwards().is_none())
            + usize::from(g.line(Kind::ContentLength).is_none());
        prop_assert_eq!(out_lines.len(), untouched.len() + edited.len() + added);
    }

    /// `strip_top_via` removes the first Via value and nothing else.
    #[test]
    fn strip_top_via_removes_exactly_the_first_via(g in message(false)) {
        let orig = parse(&g.bytes())?;
        let mut out = BytesMut::new();
        orig.strip_top_via(&mut out);
        let vias = g.values(Kind::Via);
        if vias.len() == 1 {
            // The only Via is gone, so the result is not a valid message.
            let err = Message::parse(out.clone().freeze()).unwrap_err();
            prop_assert_eq!(err.kind, ErrorKind::Missing("Via"));
            let gone = !out.windows(vias[0].len()).any(|w| w == vias[0]);
            prop_assert!(gone);
            return Ok(());
        }
        let stripped = parse(&out)?;
        prop_assert!(out.starts_with(g.start_line().as_bytes()));
        prop_assert_eq!(vias_of(&stripped), &vias[1..]);
        prop_assert_eq!(stripped.content_length(), Some(g.body.len() as u32));
        prop_assert_eq!(stripped.body(), &g.body[..]);
        prop_assert_eq!(out.len(), stripped.headers_end() + g.body.len());

        let first_via = g.lines.iter().position(|l| l.kind == Kind::Via).unwrap();
        let mut untouched = Vec::new();
        let mut edited = None;
        let mut unfolded = 0;
        for (i, (line, l)) in lines(&orig).into_iter().zip(&g.lines).enumerate() {
            if i == first_via {
                if l.values.len() > 1 {
                    edited = Some(l.text_from(1));
                }
            } else if l.kind == Kind::ContentLength && folded(line) {
                // Rewritten on one line (checked through content_length above).
                unfolded += 1;
            } else {
                untouched.push(line);
            }
        }
        let out_lines = lines(&stripped);
        prop_assert!(is_subsequence(&untouched, &out_lines), "{:?}", String::from_utf8_lossy(&out));
        if let Some(line) = &edited {
            prop_assert!(out_lines.contains(&line.as_bytes()));
        }
        let added = usize::from(g.line(Kind::ContentLength).is_none());
        prop_assert_eq!(
            out_lines.len(),
            untouched.len() + usize::from(edited.is_some()) + added + unfolded
        );
    }

    /// `response` copies Via, From, To, Call-ID and CSeq and tags To.
    #[test]
    fn response_answers_the_request(
        g in message(true),
        status in 100u16..=699,
        reason in s(&["OK", "Not Found", "", "Busy Here"]),
        to_tag in option::of("[A-Za-z0-9.!%*_+`'~-]{1,16}"),
        extra in vec("[!-~]([ -~]{0,20}[!-~])?", 0..3),
    ) {
        let req = parse(&g.bytes())?;
        let names: Vec<String> = (0..extra.len()).map(|i| format!("X-Extra-{i}")).collect();
        let extra: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(extra.iter().map(String::as_str))
            .collect();
        let mut out = BytesMut::new();
        req.response(status, &reason, to_tag.as_deref(), &extra, &mut out);
        let resp = parse(&out)?;
        prop_assert_eq!(resp.status(), Some(status));
        prop_assert_eq!(resp.reason(), Some(reason.as_bytes()));
        prop_assert_eq!(vias_of(&resp), vias_of(&req));
        prop_assert_eq!(resp.from().as_bytes(), req.from().as_bytes());
        prop_assert_eq!(resp.call_id(), req.call_id());
        prop_assert_eq!(resp.cseq().seq, req.cseq().seq);
        prop_assert_eq!(resp.cseq().method, req.cseq().method);
        prop_assert_eq!(resp.cseq_method_str(), req.cseq_method_str());
        match (req.to().tag(), &to_tag) {
            (None, Some(tag)) => {
                prop_assert_eq!(resp.to().tag(), Some(tag.as_str()));
                prop_assert_eq!(resp.to().uri().as_bytes(), req.to().uri().as_bytes());
                prop_assert_eq!(resp.to().display_name(), req.to().display_name());
                let want = format!("{};tag={tag}", String::from_utf8_lossy(req.to().as_bytes()));
                prop_assert_eq!(resp.to().as_bytes(), want.as_bytes());
            }
            _ => prop_assert_eq!(resp.to().as_bytes(), req.to().as_bytes()),
        }
        for (name, value) in &extra {
            prop_assert_eq!(resp.header_named(name), Some(value.as_bytes()));
        }
        prop_assert_eq!(resp.content_length(), Some(0));
        prop_assert_eq!(resp.body(), b"");
        prop_assert_eq!(out.len(), resp.headers_end());
    }
}

/// Whether a header line (ending in CRLF) holds a fold.
fn folded(line: &[u8]) -> bool {
    line.len() > 2 && line[..line.len() - 2].contains(&b'\r')
}
