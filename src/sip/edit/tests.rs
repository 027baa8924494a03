use super::*;

#[test]
fn decimal_digits() {
    for n in [0u64, 7, 10, 255, 65_535, u64::from(u32::MAX), u64::MAX] {
        assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
    }
}
use bytes::Bytes;

const INVITE: &[u8] = b"INVITE sip:1002@cc.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa\r\n\
Route: <sip:127.0.0.1;lr>, <sip:127.0.0.2;lr>\r\n\
Max-Forwards: 70\r\n\
From: \"A\" <sip:1001@cc.example>;tag=1\r\n\
To: <sip:1002@cc.example>\r\n\
Call-ID: abc@10.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
X-Custom:  kept \t as is\r\n\
Content-Length: 4\r\n\r\nbody-trailing";

fn parse(b: &[u8]) -> Message {
    Message::parse(Bytes::copy_from_slice(b)).unwrap()
}

#[test]
fn forward_request() {
    let msg = parse(INVITE);
    let mut out = BytesMut::new();
    let edit = Forward {
        via: Some("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew"),
        record_route: Some("<sip:127.0.0.1;lr>"),
        request_uri: Some("sip:1002@10.0.0.2:5062"),
        pop_routes: 1,
        consume_credentials_of: None,
    };
    msg.forward(&edit, &mut out).unwrap();
    let fwd = parse(&out);
    assert_eq!(
        fwd.request_uri().unwrap().as_str(),
        "sip:1002@10.0.0.2:5062"
    );
    assert_eq!(fwd.top_via().branch(), Some("z9hG4bKnew"));
    assert_eq!(fwd.vias().count(), 2);
    assert_eq!(fwd.max_forwards(), Some(69));
    let routes: Vec<_> = fwd.routes().map(|r| r.uri().host().to_owned()).collect();
    assert_eq!(routes, ["127.0.0.2"]);
    assert_eq!(
        fwd.record_routes().next().unwrap().uri().host(),
        "127.0.0.1"
    );
    assert_eq!(fwd.header_named("X-Custom"), Some(&b"kept \t as is"[..]));
    assert_eq!(fwd.body(), b"body");
    assert!(out.ends_with(b"\r\n\r\nbody"), "trailing octets dropped");
}

#[test]
fn forward_consumes_only_the_credentials_for_its_realm() {
    let raw = INVITE.to_vec();
    let at = raw
        .windows(6)
        .position(|w| w == b"X-Cust")
        .expect("the custom header");
    let raw = [
        &raw[..at],
        b"Proxy-Authorization: Digest username=\"1001\", realm=\"cc.example\", nonce=\"n\", uri=\"sip:1002@cc.example\", response=\"r\"\r\n".as_slice(),
        b"Proxy-Authorization: Digest username=\"1001\", realm=\"carrier.example\", nonce=\"m\", uri=\"sip:1002@cc.example\", response=\"s\"\r\n".as_slice(),
        &raw[at..],
    ]
    .concat();
    let msg = parse(&raw);
    let mut out = BytesMut::new();
    let edit = Forward {
        consume_credentials_of: Some("cc.example"),
        ..Forward::default()
    };
    msg.forward(&edit, &mut out).unwrap();
    let fwd = parse(&out);
    let left: Vec<_> = fwd
        .header_values(HeaderName::ProxyAuthorization)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("carrier.example"), "{left:?}");
    assert_eq!(fwd.header_named("X-Custom"), Some(&b"kept \t as is"[..]));
}

#[test]
fn forward_adds_missing_headers_and_refuses_zero() {
    let raw = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\nabc";
    let mut out = BytesMut::new();
    parse(raw).forward(&Forward::default(), &mut out).unwrap();
    let fwd = parse(&out);
    assert_eq!(fwd.max_forwards(), Some(70));
    assert_eq!(fwd.content_length(), Some(3));
    let zero = String::from_utf8_lossy(raw).replace("CSeq", "Max-Forwards: 0\r\nCSeq");
    assert_eq!(
        parse(zero.as_bytes()).forward(&Forward::default(), &mut out),
        Err(EditError::TooManyHops)
    );
}

#[test]
fn single_route_line_removed() {
    let raw = String::from_utf8_lossy(INVITE).replace(", <sip:127.0.0.2;lr>", "");
    let mut out = BytesMut::new();
    parse(raw.as_bytes())
        .forward(
            &Forward {
                pop_routes: 1,
                consume_credentials_of: None,
                ..Forward::default()
            },
            &mut out,
        )
        .unwrap();
    let fwd = parse(&out);
    assert_eq!(fwd.routes().count(), 0);
    assert!(fwd.header(HeaderName::Route).is_none());
}

#[test]
fn response_from_request_and_via_strip() {
    let msg = parse(INVITE);
    let mut out = BytesMut::new();
    msg.response(
        486,
        "Busy Here",
        Some("srv1"),
        &[("Retry-After", "5")],
        &mut out,
    );
    let resp = parse(&out);
    assert_eq!(resp.status(), Some(486));
    assert_eq!(resp.to().tag(), Some("srv1"));
    assert_eq!(resp.from().tag(), Some("1"));
    assert_eq!(resp.call_id(), "abc@10.0.0.1");
    assert_eq!(
        (resp.cseq().seq, resp.cseq().method),
        (msg.cseq().seq, msg.cseq().method)
    );
    assert_eq!(resp.header_named("Retry-After"), Some(&b"5"[..]));

    let two = "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let mut out = BytesMut::new();
    parse(two.as_bytes()).strip_top_via(&mut out);
    let stripped = parse(&out);
    let hosts: Vec<_> = stripped.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(hosts, ["b", "c"]);
    let mut again = BytesMut::new();
    stripped.strip_top_via(&mut again);
    let hosts: Vec<_> = parse(&again).vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(hosts, ["c"]);
}

#[test]
fn the_top_via_gets_received_and_the_rport_value_where_asked() {
    let raw = "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5061;rport;branch=z9hG4bK1, \
               SIP/2.0/UDP p;branch=z9hG4bK0;rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\n\
               Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let mut msg = parse(raw.as_bytes());
    let nat: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    assert!(msg.stamp_top_via(nat));
    let edit = Forward {
        via: Some("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKp"),
        ..Forward::default()
    };
    let mut out = BytesMut::new();
    msg.forward(&edit, &mut out).unwrap();
    let fwd = parse(&out);
    let vias: Vec<_> = fwd.vias().collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1].rport(), Some(Some(40000)));
    assert_eq!(vias[1].received(), Some("192.0.2.7"));
    assert_eq!(vias[1].branch(), Some("z9hG4bK1"));
    assert_eq!(
        vias[2].rport(),
        Some(None),
        "only the top Via is ours to stamp"
    );
    let mut out = BytesMut::new();
    msg.response(200, "OK", Some("t"), &[], &mut out);
    let resp = parse(&out);
    assert_eq!(resp.top_via().rport(), Some(Some(40000)));
    assert_eq!(resp.top_via().received(), Some("192.0.2.7"));
    assert_eq!(resp.vias().count(), 2);

    // Seen at its sent-by, without rport: nothing to add.
    let plain = raw.replace(";rport;", ";");
    let mut msg = parse(plain.as_bytes());
    assert!(!msg.stamp_top_via("10.0.0.1:5061".parse().unwrap()));
    // Seen elsewhere: received only.
    assert!(msg.stamp_top_via(nat));
    let mut out = BytesMut::new();
    msg.response(200, "OK", Some("t"), &[], &mut out);
    let resp = parse(&out);
    assert_eq!(resp.top_via().received(), Some("192.0.2.7"));
    assert_eq!(resp.top_via().rport(), None);
    // IPv6: received without brackets.
    let mut msg = parse(raw.as_bytes());
    assert!(msg.stamp_top_via("[2001:db8::9]:5070".parse().unwrap()));
    let mut out = BytesMut::new();
    msg.response(200, "OK", Some("t"), &[], &mut out);
    assert_eq!(parse(&out).top_via().received(), Some("2001:db8::9"));
}

/// Where the malformed requests below come from.
const SOURCE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
    5099,
);

#[test]
fn best_effort_answers_malformed_requests() {
    let raw = b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h:5;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: five\r\n\r\n";
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        raw,
        400,
        "Bad Request",
        SOURCE,
        &mut out
    ));
    let resp = parse(&out);
    assert_eq!(resp.status(), Some(400));
    assert_eq!(resp.top_via().branch(), Some("z9hG4bK1"));
    // Our To tag, the same for a retransmission; a tag sent is kept.
    let tag = resp.to().tag().expect("a To tag").to_owned();
    assert!(tag.starts_with("sb"), "{tag}");
    let mut again = BytesMut::new();
    assert!(super::best_effort_response(
        raw,
        400,
        "Bad Request",
        SOURCE,
        &mut again
    ));
    assert_eq!(parse(&again).to().tag(), Some(tag.as_str()));
    let tagged = String::from_utf8_lossy(raw).replace(
        "To: <sip:x@y>",
        "To: \"a;tag=no\" <sip:x@y;tag=no> ; TAG = t9",
    );
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        tagged.as_bytes(),
        400,
        "Bad Request",
        SOURCE,
        &mut out
    ));
    assert_eq!(parse(&out).to().tag(), Some("t9"));
    let untagged =
        String::from_utf8_lossy(raw).replace("To: <sip:x@y>", "To: \"a;tag=no\" <sip:x@y;tag=no>");
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        untagged.as_bytes(),
        400,
        "Bad Request",
        SOURCE,
        &mut out
    ));
    assert!(parse(&out).to().tag().is_some_and(|t| t.starts_with("sb")));
    let mut out = BytesMut::new();
    assert!(!super::best_effort_response(
        b"SIP/2.0 200 OK\r\n\r\n",
        400,
        "x",
        SOURCE,
        &mut out
    ));
    assert!(!super::best_effort_response(
        b"garbage", 400, "x", SOURCE, &mut out
    ));
}

/// A request with no Via has nothing to route its answer by, but the
/// answer goes back to its transport source all the same (SPEC §5: a
/// malformed request gets its 400, not silence): the lines it has,
/// and no Via. What is not shaped as a request line stays unanswered.
#[test]
fn best_effort_answers_a_request_without_via() {
    let raw = b"OPTIONS sip:cc.example SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:cc.example>\r\nCall-ID: nv\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        raw,
        400,
        "Bad Request (missing Via header)",
        SOURCE,
        &mut out
    ));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("SIP/2.0 400 Bad Request (missing Via header)\r\n"),
        "{text}"
    );
    assert!(!text.contains("Via:"), "{text}");
    for line in [
        "From: <sip:a@b>;tag=1\r\n",
        "Call-ID: nv\r\n",
        "CSeq: 7 OPTIONS\r\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(text.contains("To: <sip:cc.example>;tag=sb"), "{text}");
    assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    for junk in [
        &b"garbage"[..],
        b"hello there\r\nFrom: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BYE x SIP/2.0 extra\r\nFrom: a\r\n\r\n",
        b"B-Y-E x SIP/2.0\r\nFrom: a\r\n\r\n",
        b"ACK x SIP/2.0\r\nFrom: a\r\n\r\n",
    ] {
        let mut out = BytesMut::new();
        assert!(
            !super::best_effort_response(junk, 400, "x", SOURCE, &mut out),
            "{:?}",
            String::from_utf8_lossy(junk)
        );
    }
}

/// A request whose lines end in a bare LF is malformed (RFC 3261 §7),
/// but its Via is as usable as any: it gets its 400 too (SPEC §5: a
/// malformed request is answered 400), with CRLF line ends. A first
/// line with control bytes in it (binary junk) is still no request.
#[test]
fn best_effort_answers_an_lf_only_request() {
    let raw = b"OPTIONS sip:x@y SIP/2.0\nVia: SIP/2.0/UDP h:5;rport;branch=z9hG4bK1\n\
From: <sip:a@b>;tag=1\nTo: <sip:x@y>\nCall-ID: c\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n\
Via: SIP/2.0/UDP body:9;branch=z9hG4bKbody\n";
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        raw,
        400,
        "Bad Request",
        SOURCE,
        &mut out
    ));
    let resp = parse(&out);
    assert_eq!(resp.status(), Some(400));
    assert_eq!(resp.top_via().branch(), Some("z9hG4bK1"));
    assert_eq!(resp.top_via().rport(), Some(Some(5099)));
    assert_eq!(resp.call_id(), "c");
    assert_eq!(
        resp.header_values(HeaderName::Via).count(),
        1,
        "the body's lines are no headers"
    );
    let mut out = BytesMut::new();
    assert!(!super::best_effort_response(
        b"\x16\x03\x01\nVia: SIP/2.0/UDP h:5;branch=z9hG4bK1\n\n",
        400,
        "x",
        SOURCE,
        &mut out
    ));
    assert!(!super::best_effort_response(
        b"OPTIONS sip:x@y SIP/2.0\rVia: SIP/2.0/UDP h:5;branch=z9hG4bK1\r\r",
        400,
        "x",
        SOURCE,
        &mut out
    ));
}

/// RFC 3581 §4: the answer to a malformed request fills in a bare
/// `rport` and adds `received`, as any response does; a top Via that
/// does not parse is copied as it is.
#[test]
fn best_effort_fills_in_rport() {
    let raw = "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h:5;rport;branch=z9hG4bK1\r\n\
               Via: SIP/2.0/UDP p;rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\n\
               Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: five\r\n\r\n";
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        raw.as_bytes(),
        400,
        "Bad Request",
        SOURCE,
        &mut out
    ));
    let resp = parse(&out);
    let via = resp.top_via();
    assert_eq!(via.rport(), Some(Some(5099)));
    assert_eq!(via.received(), Some("192.0.2.7"));
    assert_eq!(via.branch(), Some("z9hG4bK1"));
    let second = resp.vias().nth(1).unwrap();
    assert_eq!(
        second.rport(),
        Some(None),
        "only the top Via is ours to fill"
    );

    let odd = raw.replace("h:5;rport;", "h:5;rport;;");
    let mut out = BytesMut::new();
    assert!(super::best_effort_response(
        odd.as_bytes(),
        400,
        "Bad Request",
        SOURCE,
        &mut out
    ));
    assert!(String::from_utf8_lossy(&out).contains("Via: SIP/2.0/UDP h:5;rport;;branch"));
}

#[test]
fn a_folded_content_length_is_forwarded_on_one_line() {
    let raw = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length\r\n : 3\r\n\r\nabc";
    let msg = parse(raw);
    let mut out = BytesMut::new();
    msg.forward(&Forward::default(), &mut out).unwrap();
    let framed = crate::sip::framing::frame(&out, 65_536).unwrap();
    assert_eq!(framed, crate::sip::framing::Frame::Complete(out.len()));
    assert_eq!(parse(&out).body(), b"abc");
}
