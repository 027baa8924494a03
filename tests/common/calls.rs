//! Calls between agents of a test cluster, as the cross-blade tests
//! place them, and the agent states they check.

use sipblade::sip::{HeaderName, Message, Method};

use super::cluster::TestCluster;
use super::{Call, Ua, branch, first_line, header};

/// The callee's To tag in every answered call.
pub const CALLEE_TAG: &str = "callee-tag";

/// `a` calls `b` up to the caller's 200 OK through `blades` proxies (1:
/// a local call, 2: S and T); returns the dialog and the INVITE as `b`
/// got it.
pub fn answered_call(a: &mut Ua, b: &mut Ua, blades: u8) -> (Call, Message) {
    let hops = usize::from(blades);
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(
        invite.request_uri().unwrap().as_str(),
        b.contact_uri(),
        "the last blade retargets to the registered contact"
    );
    assert_eq!(invite.vias().count(), hops + 1, "caller's and blades' Vias");
    assert_eq!(
        invite.record_routes().count(),
        hops,
        "each blade Record-Routes"
    );
    assert_eq!(invite.max_forwards(), Some(70 - blades));
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), hops, "the route set has every blade");
    (call, invite)
}

/// `a` (on S) calls `b` (on T) up to the caller's 200 OK; returns the
/// dialog and the INVITE as `b` got it.
pub fn answered_cross_call(a: &mut Ua, b: &mut Ua) -> (Call, Message) {
    answered_call(a, b, 2)
}

/// The caller ACKs the 2xx of `call`; the callee gets it.
pub fn confirm(a: &mut Ua, b: &mut Ua, call: &Call) {
    a.ack_2xx(call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "every blade popped its Route");
}

/// The caller hangs up a confirmed `call`; the callee answers the BYE.
pub fn hang_up(a: &mut Ua, b: &mut Ua, call: &mut Call) {
    a.bye(call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
}

/// Asserts that `ext` on member `i` is `hosted` by `by`.
pub fn assert_hosted(cluster: &TestCluster, i: usize, ext: &str, by: &str) {
    let agent = cluster.agent(i, ext);
    assert_eq!(agent["state"], "hosted", "{agent}");
    assert_eq!(agent["hosted_by"], by, "{agent}");
}

/// Waits until `ext` on member `i` is `ready` and hosted by nobody.
pub fn wait_ready(cluster: &TestCluster, i: usize, ext: &str) {
    cluster.wait_state(i, ext, "ready");
    let agent = cluster.agent(i, ext);
    assert_eq!(agent["hosted_by"], serde_json::Value::Null, "{agent}");
}

/// The callee's side of the dialog of `invite` (as the callee got it and
/// answered with [`CALLEE_TAG`]): an in-dialog request `method` with
/// `cseq` and no body, to the caller's Contact along the Record-Route
/// (RFC 3261 §12.1.1: the UAS keeps the Record-Route in order).
pub fn callee_in_dialog(b: &Ua, invite: &Message, method: &str, cseq: u32) -> String {
    let target = invite
        .contacts()
        .next()
        .map(|c| c.uri().as_str().to_owned())
        .expect("the INVITE has a Contact");
    let routes: Vec<String> = invite
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let to = header(invite, HeaderName::From).expect("a From");
    let from = format!(
        "{};tag={CALLEE_TAG}",
        header(invite, HeaderName::To).expect("a To")
    );
    format!(
        "{method} {target} SIP/2.0\r\n{}Route: {}\r\nMax-Forwards: 70\r\nFrom: {from}\r\n\
         To: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        b.via(&branch()),
        routes.join(", "),
        invite.call_id(),
    )
}

/// The caller's in-dialog request `method` in `call` with the next CSeq,
/// with a Contact and SDP when it is a target refresh (re-INVITE, UPDATE).
pub fn caller_request(a: &Ua, call: &mut Call, method: &str) -> String {
    call.cseq += 1;
    let text = a.in_dialog_text(call, method, call.cseq);
    refresh(text, a, method)
}

/// The callee's in-dialog request `method` with `cseq` in the dialog of
/// `invite` (as the callee got it, answered with [`CALLEE_TAG`]).
pub fn callee_request(b: &Ua, invite: &Message, method: &str, cseq: u32) -> String {
    refresh(callee_in_dialog(b, invite, method, cseq), b, method)
}

/// `text`, with a Contact and an SDP body when `method` refreshes the
/// target.
fn refresh(text: String, ua: &Ua, method: &str) -> String {
    if matches!(method, "INVITE" | "UPDATE") {
        with_contact_and_sdp(&text, ua)
    } else {
        text
    }
}

/// `text` (ending in an empty body) with a Contact of `ua` and an SDP
/// body that puts the media on hold.
fn with_contact_and_sdp(text: &str, ua: &Ua) -> String {
    let body = format!(
        "v=0\r\no={} 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n",
        ua.ext,
        ip = ua.addr.ip()
    );
    text.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Contact: <{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            ua.contact_uri(),
            body.len()
        ),
    )
}

/// The ACK of a non-2xx final response to the INVITE `invite` (its text
/// as sent): same branch, Request-URI and Route (RFC 3261 §17.1.1.3).
pub fn ack_of(invite: &str) -> String {
    let head = invite.split("\r\n\r\n").next().expect("a header section");
    let mut ack = String::new();
    for line in head.split("\r\n") {
        if let Some(rest) = line.strip_prefix("INVITE ") {
            ack.push_str(&format!("ACK {rest}\r\n"));
        } else if line.starts_with("CSeq:") {
            ack.push_str(&line.replace("INVITE", "ACK"));
            ack.push_str("\r\n");
        } else if line.starts_with("Contact:") || line.starts_with("Content-") {
            continue;
        } else {
            ack.push_str(line);
            ack.push_str("\r\n");
        }
    }
    ack.push_str("Content-Length: 0\r\n\r\n");
    ack
}

/// `text`, an in-dialog request with no body, with `extra` header lines
/// and a `body` of `content_type` (none when empty).
pub fn with_body(text: &str, extra: &str, content_type: &str, body: &str) -> String {
    let typed = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\n")
    };
    text.replace(
        "Content-Length: 0\r\n\r\n",
        &format!("{extra}{typed}Content-Length: {}\r\n\r\n{body}", body.len()),
    )
}
