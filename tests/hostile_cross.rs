//! Hostile and malformed input aimed at a two-blade cluster while a
//! cross-blade call is live, as an attacker or a broken phone sends it:
//! forged and replayed hosting tokens, in-dialog requests of no dialog,
//! Route sets leading out of the cluster, Max-Forwards at its end, stray
//! CANCELs and responses, junk datagrams, a REGISTER for the hosted agent
//! from elsewhere, and a QUIC client without a cluster certificate.
//!
//! Each case checks the answer (a 4xx where SIP wants one, silence where
//! RFC 3261 drops), that both blades keep answering, and that the state
//! converges: the live call still works end to end, its BYE hands the
//! callee back to `ready` on its blade, no agent is left `hosted`, no
//! session is left.
//!
//! Addresses: 127.0.14.x only. Test `k` uses 127.0.14.`10k` (S) and
//! `10k+1` (T) for its blades, `10k+2` (A, on S) and `10k+3` (B, on T)
//! for the phones, and `10k+5` to `10k+9` for attackers, outside
//! listeners and probes.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::calls::{
    CALLEE_TAG, answered_cross_call, assert_hosted, callee_in_dialog, confirm, hang_up, wait_ready,
};
use common::cluster::TestCluster;
use common::{Call, Ua, aor, branch, first_line, unique, wait_until};
use sipblade::runtime::Options;
use sipblade::runtime::trace::{Sent, TraceEvent};
use sipblade::sip::{HeaderName, Message, Method};

/// The source blade (the caller's) and the target blade (the callee's).
const S: usize = 0;
const T: usize = 1;

/// Long enough to see that a message does not arrive: every message here
/// crosses loopback in well under a millisecond.
const QUIET: Duration = Duration::from_millis(300);

/// 127.0.14.`host`.
fn ip(host: u8) -> Ipv4Addr {
    assert!((1..=250).contains(&host), "127.0.14.{host} is not ours");
    Ipv4Addr::new(127, 0, 14, host)
}

/// A two-blade cluster with a confirmed call from A (1001, on S) to B
/// (1002, on T), which S hosts.
struct Live {
    cluster: TestCluster,
    a: Ua,
    b: Ua,
    call: Call,
    /// The INVITE as B got it.
    invite: Message,
    /// What S and T sent, when traced.
    trace: Vec<flume::Receiver<TraceEvent>>,
    first: u8,
}

impl Live {
    /// The live call of test `first` (127.0.14.`first`…), with what
    /// the blades send traced when `trace`.
    fn start(first: u8, trace: bool) -> Live {
        let mut cluster = TestCluster::new_in(14, 2, first, 30, 1);
        let mut traced = Vec::new();
        for i in [S, T] {
            if trace {
                let (tx, rx) = flume::unbounded();
                let options = Options {
                    trace: Some(tx),
                    ..Options::default()
                };
                cluster.start_blade_with_options(i, options);
                traced.push(rx);
            } else {
                cluster.start_blade(i);
            }
        }
        cluster.wait_linked();
        let mut a = cluster.registered_on(S, "1001", ip(first + 2));
        let mut b = cluster.registered_on(T, "1002", ip(first + 3));
        let (call, invite) = answered_cross_call(&mut a, &mut b);
        confirm(&mut a, &mut b, &call);
        assert_hosted(&cluster, T, "1002", "blade-1");
        Live {
            cluster,
            a,
            b,
            call,
            invite,
            trace: traced,
            first,
        }
    }

    /// Member `i`'s SIP address.
    fn sip(&self, i: usize) -> SocketAddr {
        self.cluster.members[i].sip
    }

    /// A user agent on 127.0.14.`first + n` talking to member `i`.
    fn stranger(&self, i: usize, n: u8) -> Ua {
        assert!((5..=8).contains(&n), "attackers are first+5..first+8");
        Ua::new_at(self.sip(i), "evil", ip(self.first + n))
    }

    /// The Record-Route entry S put in the INVITE (the second: T's is on
    /// top), as a Route value.
    fn route_of_s(&self) -> String {
        let rr: Vec<String> = self
            .invite
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect();
        assert_eq!(rr.len(), 2, "{rr:?}");
        rr[1].clone()
    }

    /// T's Record-Route entry, as a Route value.
    fn route_of_t(&self) -> String {
        let rr = self
            .invite
            .record_routes()
            .next()
            .expect("T's Record-Route");
        String::from_utf8_lossy(rr.as_bytes()).into_owned()
    }

    /// The Request-URI S sent the INVITE of the call to T with
    /// (`sip:1002@T;sbh=<token>`), from S's trace.
    fn traced_invite_uri(&self) -> String {
        let rx = self.trace.first().expect("S is traced");
        let deadline = Instant::now() + common::WAIT;
        while let Ok(ev) = rx.recv_deadline(deadline) {
            if let Sent::Sip { start_line, .. } = ev.sent {
                if let Some(rest) = start_line.strip_prefix("INVITE ") {
                    if rest.contains(";sbh=") {
                        return rest.trim_end_matches(" SIP/2.0").to_owned();
                    }
                }
            }
        }
        panic!("S sent no INVITE with a hosting token");
    }

    /// The responses member `i` sent since the last look, as
    /// (start line, CSeq), from its trace.
    fn sent_responses(&self, i: usize) -> Vec<(String, String)> {
        let rx = self.trace.get(i).expect("the blades are traced");
        rx.drain()
            .filter_map(|ev| match ev.sent {
                Sent::Sip {
                    start_line, cseq, ..
                } if start_line.starts_with("SIP/2.0 ") => Some((start_line, cseq)),
                _ => None,
            })
            .collect()
    }

    /// The state converges: both blades answer, the call still carries
    /// in-dialog requests both ways, its BYE passes and hands B back; no
    /// agent is left hosted, no session left.
    fn converges(&mut self) {
        let probe = self.first + 9;
        for i in [S, T] {
            assert_answers(self.sip(i), ip(probe));
        }
        assert_hosted(&self.cluster, T, "1002", "blade-1");
        // A to B.
        self.call.cseq += 1;
        let info = self.a.in_dialog_text(&self.call, "INFO", self.call.cseq);
        self.a.send(info);
        let seq = self.call.cseq;
        let got = self.b.expect_where("A's INFO", |m| {
            m.method() == Some(Method::Info) && m.cseq().seq == seq
        });
        self.b.answer(&got, 200, "OK", CALLEE_TAG);
        let ok = self.a.response(&self.call.call_id, Method::Info);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        // B to A.
        let seq = 1000 + u32::try_from(unique()).unwrap();
        self.b
            .send(callee_in_dialog(&self.b, &self.invite, "INFO", seq));
        let got = self.a.expect_where("B's INFO", |m| {
            m.method() == Some(Method::Info) && m.cseq().seq == seq
        });
        self.a.answer(&got, 200, "OK", "unused");
        let ok = self.b.response(&self.call.call_id, Method::Info);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        // The BYE ends it all.
        hang_up(&mut self.a, &mut self.b, &mut self.call);
        wait_ready(&self.cluster, T, "1002");
        self.cluster.wait_state(S, "1001", "ready");
        settled(&self.cluster);
    }
}

/// No session on either blade, no agent hosted anywhere.
fn settled(cluster: &TestCluster) {
    for i in [S, T] {
        wait_until(&format!("no session on member {i}"), || {
            cluster.sessions(i).is_empty()
        });
        let status = cluster.status(i);
        let hosted: Vec<_> = status["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .filter(|a| a["state"] == "hosted" || !a["hosted_by"].is_null())
            .collect();
        assert!(hosted.is_empty(), "member {i}: {hosted:?}");
    }
}

/// The blade at `blade` answers an OPTIONS to itself 200.
fn assert_answers(blade: SocketAddr, from: Ipv4Addr) {
    let mut probe = Ua::new_at(blade, "probe", from);
    let call_id = format!("probe-{}@test", unique());
    probe.send(format!(
        "OPTIONS sip:{blade} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <sip:probe@{}>;tag=p\r\n\
         To: <sip:{blade}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        probe.via(&branch()),
        probe.addr,
    ));
    let ok = probe.response(&call_id, Method::Options);
    assert_eq!(ok.status(), Some(200), "{blade}: {}", first_line(&ok));
}

/// An INVITE from `ua` to `uri` with `extra` header lines, in `call_id`
/// with From tag `tag`.
fn invite_text(ua: &Ua, uri: &str, from: &str, call_id: &str, extra: &str) -> String {
    format!(
        "INVITE {uri} SIP/2.0\r\n{}{extra}Max-Forwards: 70\r\nFrom: <{}>;tag=x{}\r\n\
         To: <{}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <{}>\r\n\
         Content-Length: 0\r\n\r\n",
        ua.via(&branch()),
        aor(from),
        unique(),
        aor("1002"),
        ua.contact_uri(),
    )
}

/// Requests `method` of `call_id` that reach `ua` within [`QUIET`].
fn stray(ua: &mut Ua, method: Method, call_id: &str) -> Vec<String> {
    ua.collect_where(QUIET, |m| {
        m.method() == Some(method) && m.call_id() == call_id
    })
}

/// Anything that reaches `ua` within [`QUIET`].
fn anything(ua: &mut Ua) -> Vec<String> {
    ua.collect_where(QUIET, |_| true)
}

/// An INVITE straight to T from outside the cluster, under S's hosting
/// token (copied off the wire) or a forged one, with or without S's
/// Route, in the live call's Call-ID or another: T trusts a hosting token
/// only from a peer blade (SPEC §5), so each is refused 403 and B's phone
/// hears nothing; B stays hosted by S and the call goes on.
#[test]
fn a_copied_or_forged_hosting_token_from_outside_is_refused() {
    let mut live = Live::start(10, true);
    let copied = live.traced_invite_uri();
    assert!(
        !live.invite.as_bytes().windows(4).any(|w| w == b"sbh="),
        "the token does not reach the phone"
    );
    let t = live.sip(T);
    let forged = format!("sip:1002@{t};sbh={}", "5a".repeat(16));
    let route_s = format!("Route: {}\r\n", live.route_of_s());
    let route_t = format!("Route: {}\r\n", live.route_of_t());
    let mut evil = live.stranger(T, 5);
    let live_id = live.call.call_id.clone();
    let fresh = || format!("forged-{}@test", unique());
    for (uri, call_id, extra, from) in [
        (copied.clone(), live_id.clone(), String::new(), "1001"),
        (copied.clone(), fresh(), String::new(), "1001"),
        (copied.clone(), fresh(), route_t.clone(), "1003"),
        (forged.clone(), live_id.clone(), String::new(), "1001"),
        (forged.clone(), fresh(), route_t, "1001"),
        (forged.clone(), fresh(), route_s.clone(), "1003"),
        (copied.clone(), fresh(), route_s, "1003"),
    ] {
        evil.send(invite_text(&evil, &uri, from, &call_id, &extra));
        let refused = evil.response(&call_id, Method::Invite);
        assert_eq!(
            refused.status(),
            Some(403),
            "{uri} {extra:?}: {}",
            first_line(&refused)
        );
        let got = stray(&mut live.b, Method::Invite, &call_id);
        assert!(got.is_empty(), "{uri}: B got {got:?}");
        assert_hosted(&live.cluster, T, "1002", "blade-1");
    }
    assert_eq!(live.cluster.sessions(S).len(), 1);
    live.converges();
}

/// `invite` (as B got it) as S sent it to T: with `uri` (the one S's
/// trace shows) as its Request-URI, without T's Via and Record-Route, and
/// one more Max-Forwards.
fn as_s_sent_it(invite: &Message, uri: &str) -> String {
    let text = String::from_utf8_lossy(invite.as_bytes()).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header section");
    let mut out = format!("INVITE {uri} SIP/2.0\r\n");
    let (mut via, mut rr) = (false, false);
    for line in head.split("\r\n").skip(1) {
        if !via && line.starts_with("Via:") {
            via = true;
        } else if !rr && line.starts_with("Record-Route:") {
            rr = true;
        } else if line.starts_with("Max-Forwards:") {
            out.push_str("Max-Forwards: 69\r\n");
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    assert!(via && rr, "{head}");
    format!("{out}\r\n{body}")
}

/// A replay of S's INVITE to T, token and all, after the call ended: from
/// an address outside the cluster, and from S's own IP (another port) as
/// a spoofer would send it. The grant ended with the call, so T refuses
/// it 403 (seen where the replayer put its own Via on top) and B's phone
/// hears nothing; B stays ready and takes the next call.
#[test]
fn a_replay_of_the_sources_invite_after_the_call_ended_is_refused() {
    let mut live = Live::start(20, true);
    let uri = live.traced_invite_uri();
    let replay = as_s_sent_it(&live.invite, &uri);
    let call_id = live.call.call_id.clone();
    hang_up(&mut live.a, &mut live.b, &mut live.call);
    wait_ready(&live.cluster, T, "1002");
    settled(&live.cluster);
    let granted = live.cluster.metric(T, "sipblade_hosting_granted_total");

    let mut evil = live.stranger(T, 5);
    // As captured (S's Via on top: T's answer would go to S).
    evil.send(&replay);
    let spoofer = UdpSocket::bind(SocketAddr::new(ip(live.first).into(), 0)).unwrap();
    spoofer.send_to(replay.as_bytes(), live.sip(T)).unwrap();
    // With the replayer's Via on top: the answer comes back.
    let replay_via = replay.replacen("\r\nVia:", &format!("\r\n{}Via:", evil.via(&branch())), 1);
    evil.send(&replay_via);
    let refused = evil.response(&call_id, Method::Invite);
    assert_eq!(refused.status(), Some(403), "{}", first_line(&refused));
    let got = stray(&mut live.b, Method::Invite, &call_id);
    assert!(got.is_empty(), "B got {got:?}");
    assert_eq!(live.cluster.agent(T, "1002")["state"], "ready");
    assert_eq!(
        live.cluster.metric(T, "sipblade_hosting_granted_total"),
        granted
    );
    assert!(live.cluster.sessions(S).is_empty());
    for i in [S, T] {
        assert_answers(live.sip(i), ip(live.first + 9));
    }

    // B takes the next call, which converges as ever.
    let (mut call, _) = answered_cross_call(&mut live.a, &mut live.b);
    confirm(&mut live.a, &mut live.b, &call);
    hang_up(&mut live.a, &mut live.b, &mut call);
    wait_ready(&live.cluster, T, "1002");
    settled(&live.cluster);
}

/// S's INVITE to T, token and all, replayed while the call is up from
/// S's own IP (another port), as a spoofer on the path would: once as
/// captured under the spoofer's Via, once as a new call (a fresh From
/// tag) in the live Call-ID. A grant admits its session's one INVITE, so
/// T refuses both 403 and B's phone hears nothing; the call goes on.
#[test]
fn a_replay_of_the_sources_invite_during_the_call_from_its_ip_is_refused() {
    let mut live = Live::start(70, true);
    let uri = live.traced_invite_uri();
    let replay = as_s_sent_it(&live.invite, &uri);
    let call_id = live.call.call_id.clone();
    let mut spoofer = Ua::new_at(live.sip(T), "evil", ip(live.first));
    let copy = replay.replacen(
        "\r\nVia:",
        &format!("\r\n{}Via:", spoofer.via(&branch())),
        1,
    );
    let new_call = invite_text(&spoofer, &uri, "1001", &call_id, "");
    for (what, text) in [("the copy", copy), ("a new From tag", new_call)] {
        spoofer.send(&text);
        let refused = spoofer.response(&call_id, Method::Invite);
        assert_eq!(
            refused.status(),
            Some(403),
            "{what}: {}",
            first_line(&refused)
        );
        let got = stray(&mut live.b, Method::Invite, &call_id);
        assert!(got.is_empty(), "{what}: B got {got:?}");
        assert_hosted(&live.cluster, T, "1002", "blade-1");
    }
    assert_eq!(live.cluster.sessions(S).len(), 1);
    live.converges();
}

/// Sends `text` from `from`; the phone `to` answers the request if it
/// gets it (481: it has no such dialog); returns the final answer `from`
/// got.
fn no_such_dialog(from: &mut Ua, to: &mut Ua, text: &str) -> Message {
    let sent = Message::parse(bytes::Bytes::from(text.to_owned())).expect("a request");
    let (method, call_id, seq) = (
        sent.method().unwrap(),
        sent.call_id().to_owned(),
        sent.cseq().seq,
    );
    from.send(text);
    if let Some(got) = to.next_where(QUIET, |m| {
        m.method() == Some(method) && m.call_id() == call_id && m.cseq().seq == seq
    }) {
        to.answer(&got, 481, "Call/Transaction Does Not Exist", "no-dialog");
    }
    from.response(&call_id, method)
}

/// In-dialog requests that match no dialog, sent along the live call's
/// route set by either phone: a BYE with a wrong From or To tag, or an
/// unknown Call-ID, an INFO of an unknown Call-ID. Each gets 481 (the
/// far phone's), and none ends the session: a BYE of another dialog
/// under the call's Call-ID must not hand B back while A and B still
/// talk (B would take a second call on T).
#[test]
fn in_dialog_requests_of_no_dialog_get_481_and_end_nothing() {
    let mut live = Live::start(30, false);
    let from_tag = format!("tag={}", live.call.from_tag);
    let callee_tag = format!("tag={CALLEE_TAG}");
    let call_id = live.call.call_id.clone();
    let mut cases: Vec<(bool, String)> = Vec::new();
    for (method, what) in [
        ("BYE", "from"),
        ("BYE", "to"),
        ("BYE", "call-id"),
        ("INFO", "call-id"),
    ] {
        live.call.cseq += 1;
        let text = live.a.in_dialog_text(&live.call, method, live.call.cseq);
        let text = match what {
            "from" => text.replacen(&from_tag, "tag=wrong-from", 1),
            "to" => text.replacen(&callee_tag, "tag=wrong-to", 1),
            _ => text.replacen(&call_id, &format!("unknown-{}@test", unique()), 1),
        };
        cases.push((true, text));
    }
    for (seq, what) in [(50, "from"), (51, "to"), (52, "call-id")] {
        let text = callee_in_dialog(&live.b, &live.invite, "BYE", seq);
        let text = match what {
            "from" => text.replacen(&callee_tag, "tag=wrong-from", 1),
            "to" => text.replacen(&from_tag, "tag=wrong-to", 1),
            _ => text.replacen(&call_id, &format!("unknown-{}@test", unique()), 1),
        };
        cases.push((false, text));
    }
    for (by_caller, text) in cases {
        let answer = if by_caller {
            no_such_dialog(&mut live.a, &mut live.b, &text)
        } else {
            no_such_dialog(&mut live.b, &mut live.a, &text)
        };
        assert_eq!(
            answer.status(),
            Some(481),
            "{}: {}",
            text.lines().next().unwrap(),
            first_line(&answer)
        );
        // Give a wrongly ended hosting time to show.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            live.cluster.sessions(S).len(),
            1,
            "after {text}: the session lives"
        );
        assert_hosted(&live.cluster, T, "1002", "blade-1");
        assert_eq!(live.cluster.agent(S, "1001")["state"], "in_call");
    }
    live.converges();
}

/// An in-dialog request whose Route set, past the blade, leads to an
/// address outside the cluster (to a blade that does not exist, to another
/// port on the blade's own host), or
/// whose Request-URI past the blade's own Route does: the blade is no
/// open relay, so it refuses (403) and nothing reaches that address;
/// under the live call's Call-ID and tags such a BYE ends nothing either.
#[test]
fn a_route_set_leading_out_of_the_cluster_is_not_relayed() {
    let mut live = Live::start(40, false);
    let outside = UdpSocket::bind(SocketAddr::new(ip(live.first + 7).into(), 0)).unwrap();
    outside
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let away = outside.local_addr().unwrap();
    // Another port on T's own address: another service on its host.
    let beside = UdpSocket::bind(SocketAddr::new(live.sip(T).ip(), 0)).unwrap();
    beside
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let next_door = beside.local_addr().unwrap();
    let nowhere = SocketAddr::new(ip(live.first + 8).into(), 5060);
    let (route_s, route_t) = (live.route_of_s(), live.route_of_t());
    let call = live.call.clone();
    let b_contact = live.b.contact_uri();
    let cases = [
        // The live dialog, its tags right, routed on past T.
        (
            T,
            format!("{route_t}, <sip:{away};lr>"),
            b_contact.clone(),
            call.call_id.clone(),
        ),
        (
            S,
            format!("{route_s}, <sip:{away};lr>"),
            b_contact.clone(),
            call.call_id.clone(),
        ),
        // T's own Route, then a Request-URI outside.
        (
            T,
            route_t.clone(),
            format!("sip:1002@{away}"),
            call.call_id.clone(),
        ),
        (
            S,
            route_s.clone(),
            format!("sip:x@{away}"),
            format!("relay-{}@test", unique()),
        ),
        // A Route to a blade that does not exist, past T's, or alone.
        (
            T,
            format!("{route_t}, <sip:{nowhere};lr>"),
            b_contact.clone(),
            format!("relay-{}@test", unique()),
        ),
        (
            T,
            format!("<sip:{nowhere};lr>"),
            b_contact.clone(),
            format!("relay-{}@test", unique()),
        ),
        (
            T,
            format!("{route_t}, <sip:{next_door};lr>"),
            b_contact.clone(),
            format!("relay-{}@test", unique()),
        ),
        (
            T,
            format!("<sip:{away};lr>"),
            b_contact.clone(),
            format!("relay-{}@test", unique()),
        ),
    ];
    for (n, (i, routes, uri, call_id)) in cases.into_iter().enumerate() {
        let mut evil = live.stranger(i, 5);
        evil.send(format!(
            "BYE {uri} SIP/2.0\r\n{}Route: {routes}\r\nMax-Forwards: 70\r\nFrom: <{}>;tag={}\r\n\
             To: <{}>;tag={CALLEE_TAG}\r\nCall-ID: {call_id}\r\nCSeq: {} BYE\r\nContent-Length: 0\r\n\r\n",
            evil.via(&branch()),
            aor("1001"),
            call.from_tag,
            aor("1002"),
            100 + n,
        ));
        let mut buf = [0u8; 65_535];
        let deadline = Instant::now() + QUIET;
        while Instant::now() < deadline {
            let got = outside
                .recv_from(&mut buf)
                .or_else(|_| beside.recv_from(&mut buf));
            if let Ok((len, from)) = got {
                panic!(
                    "case {n} (to member {i}, Route {routes}, {uri}): relayed to the outside \
                     address by {from}:\n{}",
                    String::from_utf8_lossy(&buf[..len])
                );
            }
        }
        let refused = evil.response(&call_id, Method::Bye);
        assert_eq!(
            refused.status(),
            Some(403),
            "case {n} (to member {i}, Route {routes}, {uri}): {}",
            first_line(&refused)
        );
        let got = anything(&mut live.b);
        assert!(got.is_empty(), "case {n}: B got {got:?}");
        assert_eq!(live.cluster.sessions(S).len(), 1, "case {n}");
        assert_hosted(&live.cluster, T, "1002", "blade-1");
    }
    live.converges();
}

/// RFC 3261 §16.3 step 3, §16.6 step 3: Max-Forwards 0 is answered 483
/// by the blade that gets it; 1 passes S (which takes it to 0) and is
/// answered 483 by T. In the live dialog neither reaches the far phone,
/// and neither ends the call. A new call with Max-Forwards 1 is hosted
/// by S, refused 483 by T, and hands its callee back; one with 0 is
/// refused by S before it hosts anyone.
#[test]
fn max_forwards_zero_and_one_are_refused_483_at_the_right_hop() {
    let mut live = Live::start(50, true);
    // Which blade made a 483 for CSeq `cseq`: T's own go to S, which
    // relays them, so S's trace shows both; T's shows only its own.
    let made_by = |live: &Live, cseq: &str| {
        let own = |i: usize| {
            live.sent_responses(i)
                .iter()
                .any(|(line, c)| line.starts_with("SIP/2.0 483 ") && c == cseq)
        };
        let (t, s) = (own(T), own(S));
        assert!(s, "S sent no 483 for {cseq}");
        if t { T } else { S }
    };
    for (mf, by) in [(0u8, S), (1, T)] {
        live.call.cseq += 1;
        let text = live
            .a
            .in_dialog_text(&live.call, "INFO", live.call.cseq)
            .replace("Max-Forwards: 70", &format!("Max-Forwards: {mf}"));
        live.sent_responses(S);
        live.sent_responses(T);
        live.a.send(&text);
        let refused = live.a.response(&live.call.call_id, Method::Info);
        assert_eq!(
            refused.status(),
            Some(483),
            "MF {mf}: {}",
            first_line(&refused)
        );
        assert_eq!(refused.vias().count(), 1, "{}", first_line(&refused));
        assert_eq!(
            made_by(&live, &format!("{} INFO", live.call.cseq)),
            by,
            "MF {mf}"
        );
        let got = stray(&mut live.b, Method::Info, &live.call.call_id);
        assert!(got.is_empty(), "MF {mf}: B got {got:?}");
    }
    // From B's side: T first, then S.
    for (mf, seq) in [(0u8, 60), (1, 61)] {
        let text = callee_in_dialog(&live.b, &live.invite, "INFO", seq)
            .replace("Max-Forwards: 70", &format!("Max-Forwards: {mf}"));
        live.sent_responses(S);
        live.sent_responses(T);
        live.b.send(&text);
        let refused = live.b.response(&live.call.call_id, Method::Info);
        assert_eq!(
            refused.status(),
            Some(483),
            "MF {mf}: {}",
            first_line(&refused)
        );
        let made = live.sent_responses(if mf == 0 { T } else { S });
        assert!(
            made.iter()
                .any(|(line, c)| line.starts_with("SIP/2.0 483 ") && *c == format!("{seq} INFO")),
            "MF {mf}: {made:?}"
        );
        let got = stray(&mut live.a, Method::Info, &live.call.call_id);
        assert!(got.is_empty(), "MF {mf}: A got {got:?}");
    }
    // New calls: 1003 on S calls 1004 on T.
    let mut c = live.cluster.registered_on(S, "1003", ip(live.first + 5));
    let mut d = live.cluster.registered_on(T, "1004", ip(live.first + 6));
    let granted = live.cluster.metric(T, "sipblade_hosting_granted_total");
    for (mf, hosted) in [(0u8, 0.0), (1, 1.0)] {
        let mut call = c.call("1004");
        let text = c
            .invite_text(&mut call, "")
            .replace("Max-Forwards: 70", &format!("Max-Forwards: {mf}"));
        c.send(&text);
        let refused = c.response(&call.call_id, Method::Invite);
        assert_eq!(
            refused.status(),
            Some(483),
            "MF {mf}: {}",
            first_line(&refused)
        );
        c.ack_failure(&call, &refused);
        let got = stray(&mut d, Method::Invite, &call.call_id);
        assert!(got.is_empty(), "MF {mf}: 1004 got {got:?}");
        assert_eq!(
            live.cluster.metric(T, "sipblade_hosting_granted_total"),
            granted + hosted,
            "MF {mf}"
        );
        wait_ready(&live.cluster, T, "1004");
        live.cluster.wait_state(S, "1003", "ready");
    }
    assert_hosted(&live.cluster, T, "1002", "blade-1");
    live.converges();
}

/// RFC 3261 §9.2, §16.10: a CANCEL that matches no transaction is answered
/// 481 by the blade that gets it and goes no further: one for a branch
/// nobody used in the live call's Call-ID, one for an unknown Call-ID, one
/// sent to T with the branch of S's INVITE. None reaches B, and the call
/// goes on.
#[test]
fn a_cancel_of_no_transaction_is_answered_481_and_goes_nowhere() {
    let mut live = Live::start(60, false);
    let call_id = live.call.call_id.clone();
    let s_branch = live
        .invite
        .vias()
        .nth(1)
        .and_then(|v| v.branch().map(str::to_owned))
        .expect("S's branch");
    let cancel = |ua: &Ua, branch_: &str, call_id: &str| {
        format!(
            "CANCEL {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            aor("1002"),
            ua.via(branch_),
            aor("1001"),
            live.call.from_tag,
            aor("1002"),
        )
    };
    let unknown = format!("unknown-{}@test", unique());
    let mut evil = live.stranger(T, 5);
    for (to_t, branch_, id) in [
        (false, branch(), call_id.clone()),
        (false, branch(), unknown.clone()),
        (true, s_branch.clone(), call_id.clone()),
        (true, branch(), unknown.clone()),
    ] {
        let answer = if to_t {
            evil.send(cancel(&evil, &branch_, &id));
            evil.response(&id, Method::Cancel)
        } else {
            live.a.send(cancel(&live.a, &branch_, &id));
            live.a.response(&id, Method::Cancel)
        };
        assert_eq!(
            answer.status(),
            Some(481),
            "to T: {to_t}, branch {branch_}, {id}: {}",
            first_line(&answer)
        );
        let got = stray(&mut live.b, Method::Cancel, &id);
        assert!(got.is_empty(), "B got {got:?}");
        assert_hosted(&live.cluster, T, "1002", "blade-1");
    }
    live.converges();
}

/// A response injected from a third address with the branch of a live
/// client transaction (T's INVITE to B's phone, S's INVITE to T) while B
/// rings: a 200 must not answer the caller, a 486 must not end the call.
/// Only the answer from where the request went counts; B's own 200 then
/// connects the call, which converges.
#[test]
fn a_response_injected_from_a_third_address_is_ignored() {
    let first = 70;
    let cluster = TestCluster::start_in(14, 2, first, 30, 1, &[]);
    let mut a = cluster.registered_on(S, "1001", ip(first + 2));
    let mut b = cluster.registered_on(T, "1002", ip(first + 3));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180));
    assert_hosted(&cluster, T, "1002", "blade-1");

    // What B would answer, from elsewhere: to T, then (without T's Via)
    // to S.
    let evil_t = Ua::new_at(cluster.members[T].sip, "evil", ip(first + 5));
    let evil_s = Ua::new_at(cluster.members[S].sip, "evil", ip(first + 6));
    let forged = |status: u16, reason: &str, strip_top: bool| {
        let mut text = format!("SIP/2.0 {status} {reason}\r\n");
        let mut vias = invite.vias().count();
        for h in invite.headers() {
            let value = String::from_utf8_lossy(h.value);
            match h.kind {
                HeaderName::Via => {
                    vias -= 1;
                    if strip_top && vias == invite.vias().count() - 1 {
                        continue;
                    }
                    text.push_str(&format!("Via: {value}\r\n"));
                }
                HeaderName::RecordRoute => text.push_str(&format!("Record-Route: {value}\r\n")),
                HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    text.push_str(&format!("{}: {value}\r\n", h.name));
                }
                HeaderName::To => text.push_str(&format!("To: {value};tag=evil\r\n")),
                _ => {}
            }
        }
        text.push_str("Contact: <sip:evil@127.0.14.75:5060>\r\nContent-Length: 0\r\n\r\n");
        text
    };
    for (status, reason) in [(200, "OK"), (486, "Busy Here"), (603, "Decline")] {
        evil_t.send(forged(status, reason, false));
        evil_s.send(forged(status, reason, true));
    }
    let got = a.collect_where(QUIET, |m| !m.is_request() && m.call_id() == call.call_id);
    assert!(got.is_empty(), "A got {got:?}");
    let got = anything(&mut b);
    assert!(got.is_empty(), "B got {got:?}");
    assert_hosted(&cluster, T, "1002", "blade-1");
    assert_eq!(cluster.sessions(S).len(), 1);

    // B answers: the call connects and converges.
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(ok.to().tag(), Some(CALLEE_TAG));
    call.learn(&ok);
    confirm(&mut a, &mut b, &call);
    // A stray response of no transaction is dropped too (RFC 3261 §16.7:
    // no matching client transaction; only a 2xx to INVITE is passed on).
    evil_t.send(forged(486, "Busy Here", false).replace("z9hG4bKsb", "z9hG4bKsbx"));
    let got = anything(&mut a);
    assert!(got.is_empty(), "A got {got:?}");
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, T, "1002");
    cluster.wait_state(S, "1001", "ready");
    settled(&cluster);
}

/// Junk at T's SIP port while a call is up: a datagram as large as UDP
/// takes, a request cut short of its Content-Length, binary garbage, a
/// truncated response, and over TCP a header section that never ends
/// within the blade's limit. Requests it can answer get 400 (or 513 when
/// too large); the rest is dropped, counted as malformed; T keeps
/// answering and the call goes on.
#[test]
fn junk_at_the_target_blade_during_a_call_changes_nothing() {
    let mut live = Live::start(80, false);
    let t = live.sip(T);
    let malformed = "sipblade_messages_malformed_total";
    let before = live.cluster.metric(T, malformed);
    let udp = UdpSocket::bind(SocketAddr::new(ip(live.first + 5).into(), 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let me = udp.local_addr().unwrap();
    let request = |call_id: &str, extra: &str, body: &str, length: usize| {
        format!(
            "OPTIONS sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=j\r\nTo: <sip:1002@cc.example>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: {length}\r\n\r\n{body}",
            branch()
        )
    };
    let answer = |udp: &UdpSocket| -> Option<String> {
        let mut buf = vec![0u8; 65_535];
        udp.recv_from(&mut buf)
            .ok()
            .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // Truncated: the body is shorter than its Content-Length.
    udp.send_to(request("cut@test", "", "v=0\r\n", 400).as_bytes(), t)
        .unwrap();
    let got = answer(&udp).expect("an answer to the truncated request");
    assert!(got.starts_with("SIP/2.0 400 "), "{got:?}");
    // Oversized: as much as a UDP datagram holds.
    let pad = format!("X-Pad: {}\r\n", "a".repeat(65_507 - 400));
    let big = request("big@test", &pad, "", 0);
    let big = &big.as_bytes()[..big.len().min(65_507)];
    udp.send_to(big, t).unwrap();
    // The blade takes it whole, and refuses it as it would a short one
    // (1001 is logged in on S, not T): 403.
    let got = answer(&udp).expect("an answer to the large request");
    assert!(got.starts_with("SIP/2.0 403 "), "{:?}", got.lines().next());
    // Binary garbage and a truncated response: nothing to answer.
    let garbage: Vec<u8> = (0..1400u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    udp.send_to(&garbage, t).unwrap();
    udp.send_to(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.14.81:5060;bra",
        t,
    )
    .unwrap();
    udp.send_to(&[0u8; 3], t).unwrap();
    assert_eq!(answer(&udp), None, "junk is not answered");
    wait_until("the junk counted as malformed", || {
        live.cluster.metric(T, malformed) >= before + 4.0
    });
    // Over TCP: a header section that goes on and on.
    let mut tcp = {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket
            .bind(&SocketAddr::new(ip(live.first + 6).into(), 0).into())
            .unwrap();
        socket.connect(&t.into()).unwrap();
        TcpStream::from(socket)
    };
    tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let local = tcp.local_addr().unwrap();
    let head = format!(
        "OPTIONS sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch={}\r\n",
        branch()
    );
    let _ = tcp.write_all(head.as_bytes());
    let line = format!("X-Pad: {}\r\n", "b".repeat(1000));
    let mut closed = false;
    for _ in 0..200 {
        if tcp.write_all(line.as_bytes()).is_err() {
            closed = true;
            break;
        }
    }
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(!closed, "the blade read on until it could answer");
    assert!(
        got.starts_with("SIP/2.0 513 Message Too Large\r\n"),
        "{:?}",
        got.lines().next()
    );
    live.converges();
}

/// A REGISTER for the hosted B from another address, with no credentials
/// (SPEC §4, §5: `auth = false` registers without a challenge, as these
/// test clusters run). It moves B's binding on T, but not the hosting: B
/// stays hosted by S for the live call, whose requests still reach the
/// phone in the dialog (its Contact, not the new binding); the BYE hands
/// B back, registered where the last REGISTER put it.
#[test]
fn a_register_for_the_hosted_agent_from_elsewhere_leaves_the_call_alone() {
    let mut live = Live::start(90, false);
    let mut thief = Ua::new_at(live.sip(T), "1002", ip(live.first + 5));
    let ok = thief.register(3600);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_hosted(&live.cluster, T, "1002", "blade-1");
    let on_t = live.cluster.agent(T, "1002");
    assert_eq!(on_t["contact"], thief.addr.to_string(), "{on_t}");
    live.converges();
    let on_t = live.cluster.agent(T, "1002");
    assert_eq!(on_t["contact"], thief.addr.to_string(), "{on_t}");
}

/// How a QUIC client's attempt on a blade's cluster port ended.
#[derive(Debug)]
struct Attempt {
    /// The client saw its handshake complete (TLS 1.3 lets a client
    /// finish before the server has checked its certificate).
    connected: bool,
    /// Why the connection was lost, if it was within the wait.
    lost: Option<String>,
    /// A stream opened after the handshake was answered.
    answered: bool,
}

/// A QUIC client on 127.0.14.`host` dialling `server` (blade `name`) with
/// the cluster's ALPN, trusting the cluster CA `ca_pem` (public: any
/// attacker may have it), and presenting `cert` (PEM certificate and key)
/// or no certificate. Once connected it sends a junk frame on a stream.
fn quic_attempt(
    server: SocketAddr,
    name: &str,
    host: u8,
    ca_pem: &[u8],
    cert: Option<(&[u8], &[u8])>,
) -> Attempt {
    use quinn_proto::crypto::rustls::QuicClientConfig;
    use quinn_proto::{ClientConfig, DatagramEvent, Dir, Endpoint, EndpointConfig, Event};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert).unwrap()],
                PrivateKeyDer::from_pem_slice(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![sipblade::cluster::tls::ALPN.to_vec()];
    let config = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
    let (ch, mut conn) = endpoint
        .connect(Instant::now(), config, server, name)
        .unwrap();
    let socket = UdpSocket::bind(SocketAddr::new(ip(host).into(), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut attempt = Attempt {
        connected: false,
        lost: None,
        answered: false,
    };
    let mut buf = Vec::new();
    let mut rbuf = vec![0u8; 65_535];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let now = Instant::now();
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(ev) = endpoint.handle_event(ch, ev) {
                conn.handle_event(ev);
            }
        }
        while let Some(ev) = conn.poll() {
            match ev {
                Event::Connected => {
                    attempt.connected = true;
                    if let Some(id) = conn.streams().open(Dir::Bi) {
                        let _ = conn.send_stream(id).write(b"\x01junk frame");
                        let _ = conn.send_stream(id).finish();
                    }
                }
                Event::ConnectionLost { reason } => {
                    attempt.lost = Some(reason.to_string());
                    return attempt;
                }
                Event::Stream(_) => attempt.answered = true,
                _ => {}
            }
        }
        buf.clear();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            socket.send_to(&buf[..t.size], t.destination).unwrap();
            buf.clear();
        }
        if let Ok((n, from)) = socket.recv_from(&mut rbuf) {
            let mut out = Vec::new();
            if let Some(DatagramEvent::ConnectionEvent(_, ev)) = endpoint.handle(
                Instant::now(),
                from,
                None,
                None,
                BytesMut::from(&rbuf[..n]),
                &mut out,
            ) {
                conn.handle_event(ev);
            }
        }
    }
    attempt
}

/// SPEC §8: a process without a cluster certificate can neither host nor
/// release an agent. During a call, clients dial T's cluster port with no
/// certificate, and with one of another CA claiming to be S (blade-1):
/// T closes each, the link to S stays up, B stays hosted, and the call
/// converges.
#[test]
fn a_quic_client_without_a_cluster_certificate_is_refused() {
    let mut live = Live::start(100, false);
    let ca = std::fs::read(live.cluster.certs_dir().join("ca.pem")).unwrap();
    let rogue_dir = live.cluster.dir.path().join("rogue");
    sipblade::cluster::certs::generate_cluster(&rogue_dir, &["blade-1".into()]).unwrap();
    let rogue_cert = std::fs::read(rogue_dir.join("blade-1.pem")).unwrap();
    let rogue_key = std::fs::read(rogue_dir.join("blade-1.key")).unwrap();
    let quic = live.cluster.members[T].quic;
    for (host, cert) in [
        (live.first + 5, None),
        (live.first + 6, Some((&rogue_cert[..], &rogue_key[..]))),
    ] {
        let attempt = quic_attempt(quic, "blade-2", host, &ca, cert);
        // T tells the client (TLS 1.3 lets the client finish its side of
        // the handshake before T has checked its certificate), rather
        // than leaving it to time out.
        let lost = attempt
            .lost
            .as_deref()
            .unwrap_or_else(|| panic!("127.0.14.{host}: T kept the connection: {attempt:?}"));
        assert!(
            lost.starts_with("aborted by peer") && lost.contains("certificate"),
            "{lost}"
        );
        assert!(!attempt.answered, "{attempt:?}");
        assert!(live.cluster.peer_up(T, "blade-1"));
        assert!(live.cluster.peer_up(S, "blade-2"));
        assert_hosted(&live.cluster, T, "1002", "blade-1");
    }
    live.converges();
}

/// Two blades as [`TestCluster`] lays them out, started here with
/// `auth = true` (the harness runs its clusters with auth off); stopped
/// when dropped.
struct AuthCluster {
    cluster: TestCluster,
    blades: Vec<Option<sipblade::runtime::Blade>>,
    admins: Vec<SocketAddr>,
}

impl AuthCluster {
    fn start(first: u8) -> AuthCluster {
        let cluster = TestCluster::new_in(14, 2, first, 30, 1);
        let mut blades = Vec::new();
        let mut admins = Vec::new();
        for i in [S, T] {
            let text = cluster
                .config_text(i, &cluster.certs_dir())
                .replace("auth = false", "auth = true");
            assert!(text.contains("auth = true"), "{text}");
            let path = cluster.dir.path().join(format!("auth-{i}.toml"));
            std::fs::write(&path, &text).unwrap();
            let config = sipblade::config::Config::load(&path).expect("valid config");
            let blade = sipblade::runtime::Blade::start_with(config, Options::default())
                .expect("the blade starts");
            admins.push(blade.admin_addr().expect("an admin port"));
            blades.push(Some(blade));
        }
        let c = AuthCluster {
            cluster,
            blades,
            admins,
        };
        for (i, peer) in [(S, "blade-2"), (T, "blade-1")] {
            wait_until(&format!("member {i} to see {peer} up"), || {
                common::status(c.admins[i])["peers"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["id"] == peer && p["up"] == true))
            });
        }
        c
    }

    fn agent(&self, i: usize, ext: &str) -> serde_json::Value {
        common::agent(self.admins[i], ext)
    }
}

impl Drop for AuthCluster {
    fn drop(&mut self) {
        for blade in &mut self.blades {
            if let Some(blade) = blade.take() {
                blade.stop();
            }
        }
    }
}

/// With `auth = true` (SPEC §4, §5), a REGISTER for the hosted B from
/// another address is challenged, and refused with a wrong password: B's
/// binding and its hosting stay as they were, and the live call (placed
/// with Proxy-Authorization) converges.
#[test]
fn with_auth_a_register_for_the_hosted_agent_from_elsewhere_is_challenged() {
    let first = 110;
    let c = AuthCluster::start(first);
    let mut a = Ua::new_at(c.cluster.members[S].sip, "1001", ip(first + 2));
    let mut b = Ua::new_at(c.cluster.members[T].sip, "1002", ip(first + 3));
    for ua in [&mut a, &mut b] {
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    }
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let challenge = a.response(&call.call_id, Method::Invite);
    assert_eq!(challenge.status(), Some(407), "{}", first_line(&challenge));
    a.ack_failure(&call, &challenge);
    let auth = a.authorization(
        &challenge,
        true,
        "INVITE",
        &aor("1002"),
        &common::password("1001"),
    );
    a.invite(&mut call, &auth);
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    confirm(&mut a, &mut b, &call);
    let hosted = c.agent(T, "1002");
    assert_eq!(hosted["state"], "hosted", "{hosted}");

    let mut thief = Ua::new_at(c.cluster.members[T].sip, "1002", ip(first + 5));
    let headers = thief.binding_headers(3600);
    let bare = thief.register_once(&headers);
    assert_eq!(bare.status(), Some(401), "{}", first_line(&bare));
    let (wrong, sent) = thief.register_as(&headers, "not-the-password");
    assert!(sent.is_some(), "the thief answered the challenge");
    assert!(
        matches!(wrong.status(), Some(401 | 403)),
        "{}",
        first_line(&wrong)
    );
    let on_t = c.agent(T, "1002");
    assert_eq!(on_t["state"], "hosted", "{on_t}");
    assert_eq!(on_t["hosted_by"], "blade-1", "{on_t}");
    assert_eq!(on_t["contact"], b.addr.to_string(), "{on_t}");

    hang_up(&mut a, &mut b, &mut call);
    wait_until("1002 ready on T", || c.agent(T, "1002")["state"] == "ready");
    wait_until("1001 ready on S", || c.agent(S, "1001")["state"] == "ready");
    for i in [S, T] {
        wait_until(&format!("no session on member {i}"), || {
            common::status(c.admins[i])["sessions"]
                .as_array()
                .is_some_and(|s| s.is_empty())
        });
    }
    assert_eq!(c.agent(T, "1002")["contact"], b.addr.to_string());
}
