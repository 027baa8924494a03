use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::cluster::codec::{DirectoryEntry, Message, Refusal, Token};
use crate::config::{Agent, AgentKind, Credential};
use crate::registrar::location::{AgentState, Binding, Location};
use crate::sip::Peer;

const LEASE: u32 = 30;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// The shared provisioning: every blade knows every agent.
fn location() -> Location {
    Location::new(["1001", "2001", "2002", "3001"].map(|ext| {
        Arc::new(Agent {
            badge: format!("B{ext}"),
            extension: ext.to_owned(),
            kind: AgentKind::Agent,
            credential: Credential::Password("pw".into()),
        })
    }))
}

fn bind(loc: &mut Location, ext: &str) {
    let addr: SocketAddr = "192.0.2.7:5062".parse().unwrap();
    loc.bind(
        ext,
        Binding {
            uri: format!("sip:{ext}@192.0.2.7:5062"),
            peer: Peer::udp(addr),
            expires_at: secs(3600),
            call_id: format!("reg-{ext}"),
            cseq: 1,
        },
    );
}

fn state(loc: &Location, ext: &str) -> AgentState {
    loc.get(ext).unwrap().state.clone()
}

fn hosted_by(by: &str) -> AgentState {
    AgentState::Hosted { by: by.into() }
}

fn target() -> Target {
    Target::new(&HostSecret::from_bytes([7; 32]), LEASE)
}

/// Through the codec, as on the link.
fn wire(m: Message) -> Message {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    Message::decode(&out).unwrap()
}

/// A blade: both sides, its directory and its agents.
struct Blade {
    id: &'static str,
    target: Target,
    source: Source,
    dir: Directory,
    loc: Location,
}

impl Blade {
    fn new(id: &'static str, n: u8) -> Blade {
        Blade {
            id,
            target: Target::new(&HostSecret::from_bytes([n; 32]), LEASE),
            source: Source::new(LEASE),
            dir: Directory::new(),
            loc: location(),
        }
    }

    fn events(&mut self) -> Vec<SourceEvent> {
        std::iter::from_fn(|| self.source.poll_event()).collect()
    }

    fn tick(&mut self, now: Duration) {
        self.source.handle_timeout(now);
        self.target.handle_timeout(now, &mut self.loc);
    }
}

/// A cluster whose links are all up, each blade knowing the others'
/// logged-in agents (the resync at connect).
fn cluster(ids: &[&'static str]) -> Vec<Blade> {
    let mut blades: Vec<Blade> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Blade::new(id, i as u8 + 1))
        .collect();
    for b in &mut blades {
        for id in ids {
            if *id != b.id {
                b.dir.peer_up(id);
            }
        }
    }
    blades
}

fn idx(blades: &[Blade], id: &str) -> usize {
    blades.iter().position(|b| b.id == id).unwrap()
}

/// Logs `ext` in on blade `at` and announces it to the others.
fn login(blades: &mut [Blade], at: &str, ext: &str) {
    let i = idx(blades, at);
    bind(&mut blades[i].loc, ext);
    let msg = wire(blades[i].target.logged_in(ext, None));
    for b in blades.iter_mut().filter(|b| b.id != at) {
        assert!(b.dir.apply(at, &msg));
    }
}

/// Delivers every queued message (and the answers) until quiet.
/// Redirect answers are returned as (to, message).
fn pump(now: Duration, blades: &mut [Blade]) -> Vec<(String, Message)> {
    let mut answers = Vec::new();
    loop {
        let mut moved = false;
        for i in 0..blades.len() {
            while let Some((to, msg)) = blades[i].source.poll_transmit() {
                moved = true;
                let j = idx(blades, &to);
                let from = blades[i].id;
                let msg = wire(msg);
                if msg.class() == codec::Class::RedirectAnswer {
                    answers.push((to, msg));
                    continue;
                }
                let t = &mut blades[j];
                let reply = t
                    .target
                    .handle_request(now, &mut t.loc, from, &msg)
                    .unwrap();
                let by = blades[j].id;
                let s = &mut blades[i];
                assert!(s.source.handle(now, &mut s.dir, by, wire(reply)));
            }
        }
        if !moved {
            return answers;
        }
    }
}

use super::super::codec;

fn granted(ev: &SourceEvent) -> Option<Token> {
    match ev {
        SourceEvent::Granted { token, .. } => Some(*token),
        _ => None,
    }
}

// -- target side --

#[test]
fn grant_marks_hosted_and_unhost_restores_ready() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    let g = t
        .grant(
            secs(5),
            &mut loc,
            "blade-s",
            11,
            "2001",
            "call-1",
            20,
            false,
        )
        .unwrap();
    assert_eq!(state(&loc, "2001"), hosted_by("blade-s"));
    assert_eq!(g.lease_secs, 20);
    assert_eq!(g.info.extension, "2001");
    assert_eq!(g.info.badge, "B2001");
    assert_eq!(g.info.state, hosted_by("blade-s"));
    assert_eq!(g.info.expires_secs, 3595);
    let grant = t.grant_of("2001").unwrap();
    assert_eq!(
        (
            grant.source.as_str(),
            grant.call_id.as_str(),
            grant.request_id
        ),
        ("blade-s", "call-1", 11)
    );
    assert_eq!(grant.expires_at, secs(25));
    assert_eq!(t.next_deadline(), Some(secs(25)));

    assert!(t.unhost(&mut loc, "blade-s", "2001", "call-1", &g.token));
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    assert!(t.is_empty());
    assert_eq!(t.next_deadline(), None);
    // Again (a crossing or repeated unhost): harmless.
    assert!(!t.unhost(&mut loc, "blade-s", "2001", "call-1", &g.token));
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
}

#[test]
fn relay_leave_needs_a_logged_in_agent_and_changes_no_state() {
    let mut t = target();
    let mut loc = location();
    assert_eq!(
        t.relay(secs(0), &loc, "s", "9999", "m1"),
        Err(Refusal::Unknown)
    );
    assert_eq!(
        t.relay(secs(0), &loc, "s", "2001", "m1"),
        Err(Refusal::NotLoggedIn)
    );
    bind(&mut loc, "2001");
    let token = t.relay(secs(0), &loc, "s", "2001", "m1").unwrap();
    assert_eq!(state(&loc, "2001"), AgentState::Ready, "not hosted");
    // Asked again (a retried request): the same leave.
    assert_eq!(t.relay(secs(1), &loc, "s", "2001", "m1"), Ok(token));
    assert!(t.check_relay(secs(1), "s", "2001", "m1", &token));
    assert!(!t.check_relay(secs(1), "other", "2001", "m1", &token));
    assert!(!t.check_relay(secs(1), "s", "2001", "m2", &token));
    assert!(!t.check_relay(secs(1), "s", "2002", "m1", &token));
    assert!(!t.check_relay(secs(1), "s", "2001", "m1", &Token([0; 16])));
    assert!(
        !t.check_token(secs(1), "s", "2001", "m1", &token),
        "no call"
    );
    assert!(
        !t.check_relay(RELAY_TTL, "s", "2001", "m1", &token),
        "expired"
    );
    // A busy agent may still get a message.
    let g = t
        .grant(secs(2), &mut loc, "s", 3, "2001", "c1", 10, false)
        .unwrap();
    assert!(t.relay(secs(2), &loc, "s", "2001", "m3").is_ok());
    assert!(t.unhost(&mut loc, "s", "2001", "c1", &g.token));
}

#[test]
fn a_relay_round_trip_gives_the_source_a_token_the_target_accepts() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let now = secs(1);
    let s = idx(&blades, "s");
    let Blade { source, dir, .. } = &mut blades[s];
    source.relay(now, dir, "msg-1", "2001");
    pump(now, &mut blades);
    let events = blades[s].events();
    let [
        SourceEvent::Relayed {
            call_id,
            extension,
            peer,
            token,
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    assert_eq!(
        (call_id.as_str(), extension.as_str(), peer.as_str()),
        ("msg-1", "2001", "t")
    );
    let t = idx(&blades, "t");
    assert!(
        blades[t]
            .target
            .check_relay(now, "s", "2001", "msg-1", token)
    );
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert_eq!(blades[s].source.pending(), 0);

    // An agent logged in nowhere: the Locate finds nobody.
    let Blade { source, dir, .. } = &mut blades[s];
    source.relay(now, dir, "msg-2", "2002");
    pump(now, &mut blades);
    let events = blades[s].events();
    assert!(
        matches!(
            events.as_slice(),
            [SourceEvent::Refused {
                reason: Refusal::NotLoggedIn,
                ..
            }]
        ),
        "{events:?}"
    );
}

#[test]
fn leases_are_clamped_to_the_configured_maximum() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    bind(&mut loc, "2002");
    let g = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c1", 0, false)
        .unwrap();
    assert_eq!(g.lease_secs, LEASE);
    let g = t
        .grant(secs(0), &mut loc, "s", 2, "2002", "c2", 99_999, false)
        .unwrap();
    assert_eq!(g.lease_secs, LEASE);
}

#[test]
fn refusals_and_their_statuses() {
    let mut t = target().with_max_grants(1);
    let mut loc = location();
    let now = secs(1);
    let ask = |t: &mut Target, loc: &mut Location, ext: &str| {
        t.grant(now, loc, "s", 1, ext, "c", LEASE, false)
            .map(|g| g.token)
    };
    assert_eq!(ask(&mut t, &mut loc, "9999"), Err(Refusal::Unknown));
    assert_eq!(ask(&mut t, &mut loc, "2001"), Err(Refusal::NotLoggedIn));
    bind(&mut loc, "2001");
    loc.get_mut("2001").unwrap().state = AgentState::InCall {
        call_id: "local".into(),
    };
    assert_eq!(ask(&mut t, &mut loc, "2001"), Err(Refusal::Busy));
    loc.get_mut("2001").unwrap().state = AgentState::Ready;
    assert!(ask(&mut t, &mut loc, "2001").is_ok());
    bind(&mut loc, "2002");
    assert_eq!(ask(&mut t, &mut loc, "2002"), Err(Refusal::Overloaded));
    assert_eq!(state(&loc, "2002"), AgentState::Ready);
    let statuses: Vec<u16> = [
        Refusal::Unknown,
        Refusal::NotLoggedIn,
        Refusal::Busy,
        Refusal::AlreadyHosted,
        Refusal::Overloaded,
    ]
    .iter()
    .map(Refusal::status)
    .collect();
    assert_eq!(statuses, [404, 480, 486, 486, 503]);
}

/// A newcomer (its own Join or Replaces INVITE) is handed over from
/// within a call, as a transferee or supervisor joins; it is in that call
/// again once the hosting ends, and free if the call ended meanwhile. A
/// plain host request for it is still busy.
#[test]
fn a_newcomer_in_a_call_is_granted_and_back_in_it_after() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    loc.get_mut("2001").unwrap().enter_call("local");
    assert_eq!(
        t.grant(secs(1), &mut loc, "s", 1, "2001", "leg", LEASE, false)
            .map(|g| g.token),
        Err(Refusal::Busy)
    );
    let g = t
        .grant(secs(1), &mut loc, "s", 2, "2001", "leg", LEASE, true)
        .unwrap();
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert!(t.unhost(&mut loc, "s", "2001", "leg", &g.token));
    let in_local = AgentState::InCall {
        call_id: "local".into(),
    };
    assert_eq!(state(&loc, "2001"), in_local);

    // The local call ends while the agent is hosted.
    let g = t
        .grant(secs(2), &mut loc, "s", 3, "2001", "leg2", LEASE, true)
        .unwrap();
    loc.get_mut("2001").unwrap().leave_call("local");
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert!(t.unhost(&mut loc, "s", "2001", "leg2", &g.token));
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
}

/// A newcomer that the same source hosts already (the transferee of an
/// attended transfer: its held call is hosted there) rides on that grant:
/// same token, renewed and checked under either Call-ID, and the agent
/// stays hosted until the last of the sessions is unhosted, in either
/// order. Another source, or a plain call, is still refused.
#[test]
fn a_newcomer_hosted_by_the_same_source_rides_on_its_grant() {
    for primary_first in [true, false] {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let g = t
            .grant(secs(0), &mut loc, "s", 1, "2001", "c1", LEASE, false)
            .unwrap();
        let refused = |t: &mut Target, loc: &mut Location, from, newcomer| {
            t.grant(secs(1), loc, from, 9, "2001", "r1", LEASE, newcomer)
                .map(|g| g.token)
        };
        assert_eq!(
            refused(&mut t, &mut loc, "s", false),
            Err(Refusal::AlreadyHosted)
        );
        assert_eq!(
            refused(&mut t, &mut loc, "u", true),
            Err(Refusal::AlreadyHosted)
        );
        let rider = t
            .grant(secs(1), &mut loc, "s", 2, "2001", "r1", LEASE, true)
            .unwrap();
        assert_eq!(rider.token, g.token, "one grant holds the agent");
        assert!(t.check_token(secs(2), "s", "2001", "r1", &g.token));
        assert_eq!(
            t.renew(secs(2), &mut loc, "s", "2001", "r1", &g.token),
            Some(LEASE)
        );
        let (first, last) = if primary_first {
            ("c1", "r1")
        } else {
            ("r1", "c1")
        };
        assert!(!t.unhost(&mut loc, "s", "2001", first, &g.token));
        assert_eq!(state(&loc, "2001"), hosted_by("s"), "{first} left");
        assert!(!t.check_token(secs(3), "s", "2001", first, &g.token));
        assert!(t.check_token(secs(3), "s", "2001", last, &g.token));
        if primary_first {
            // Redirects and confirmations go to the rider's core now.
            assert_eq!(t.grant_of("2001").map(|g| g.request_id), Some(2));
        }
        assert!(t.unhost(&mut loc, "s", "2001", last, &g.token));
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
        assert!(t.is_empty());
    }
}

#[test]
fn token_check_binds_blade_call_agent_and_lease() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let tok = t
        .grant(
            secs(0),
            &mut loc,
            "blade-s",
            1,
            "2001",
            "call-1",
            LEASE,
            false,
        )
        .unwrap()
        .token;
    let now = secs(1);
    assert!(t.check_token(now, "blade-s", "2001", "call-1", &tok));
    // Blade ids compare as DNS names do.
    assert!(t.check_token(now, "Blade-S", "2001", "call-1", &tok));
    assert!(!t.check_token(now, "blade-x", "2001", "call-1", &tok));
    assert!(!t.check_token(now, "blade-s", "2001", "call-2", &tok));
    assert!(!t.check_token(now, "blade-s", "2002", "call-1", &tok));
    let mut wrong = tok;
    wrong.0[15] ^= 1;
    assert!(!t.check_token(now, "blade-s", "2001", "call-1", &wrong));
    assert!(!t.check_token(secs(30), "blade-s", "2001", "call-1", &tok));

    // A fresh grant for the same blade and call has a fresh token.
    assert!(t.unhost(&mut loc, "blade-s", "2001", "call-1", &tok));
    let again = t
        .grant(now, &mut loc, "blade-s", 2, "2001", "call-1", LEASE, false)
        .unwrap()
        .token;
    assert_ne!(again, tok);
    assert!(!t.check_token(now, "blade-s", "2001", "call-1", &tok));
    assert!(t.check_token(now, "blade-s", "2001", "call-1", &again));
    // Another secret, another token.
    let mut other = Target::new(&HostSecret::from_bytes([8; 32]), LEASE);
    let mut loc1 = location();
    bind(&mut loc1, "2001");
    let mut loc2 = location();
    bind(&mut loc2, "2001");
    let t1 = target()
        .grant(now, &mut loc1, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    let t2 = other
        .grant(now, &mut loc2, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    assert_ne!(t1, t2);
}

#[test]
fn a_grant_admits_its_sessions_invite_once() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    // Refused before the first admission without using it up.
    assert!(!t.admit_invite(secs(1), "x", "2001", "c", &tok));
    assert!(!t.admit_invite(secs(1), "s", "2001", "c2", &tok));
    assert!(t.admit_invite(secs(1), "s", "2001", "c", &tok));
    // A second INVITE under the token: a replayed copy.
    assert!(!t.admit_invite(secs(2), "s", "2001", "c", &tok));
    // Join legs to the session still pass the plain check, and a retried
    // host request (the same grant) does not reopen the INVITE.
    assert!(t.check_token(secs(2), "s", "2001", "c", &tok));
    t.grant(secs(3), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap();
    assert!(!t.admit_invite(secs(3), "s", "2001", "c", &tok));
    // The next grant admits its own INVITE.
    assert!(t.unhost(&mut loc, "s", "2001", "c", &tok));
    let next = t
        .grant(secs(4), &mut loc, "s", 2, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    assert!(!t.admit_invite(secs(4), "s", "2001", "c", &tok));
    assert!(t.admit_invite(secs(4), "s", "2001", "c", &next));
}

#[test]
fn a_retried_request_gets_the_same_grant_and_a_fresh_lease() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let g1 = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap();
    let g2 = t
        .grant(secs(10), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap();
    assert_eq!(g1.token, g2.token);
    assert_eq!(t.grant_of("2001").unwrap().expires_at, secs(40));
    assert_eq!(t.next_deadline(), Some(secs(40)));
    // Another call from the same blade is another session.
    assert_eq!(
        t.grant(secs(10), &mut loc, "s", 2, "2001", "c2", LEASE, false)
            .map(|g| g.token),
        Err(Refusal::AlreadyHosted)
    );
}

#[test]
fn a_lapsed_lease_takes_the_agent_back() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    assert!(t.handle_timeout(secs(29), &mut loc).is_empty());
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert_eq!(
        t.handle_timeout(secs(30), &mut loc),
        vec!["2001".to_owned()]
    );
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    assert!(!t.check_token(secs(30), "s", "2001", "c", &tok));
    assert_eq!(t.next_deadline(), None);
    // A renewal after the lapse is refused; so is a late INVITE.
    assert_eq!(t.renew(secs(31), &mut loc, "s", "2001", "c", &tok), None);
}

#[test]
fn a_renewal_after_the_lapse_is_refused_even_before_the_timer_ran() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    assert_eq!(
        t.renew(secs(20), &mut loc, "s", "2001", "c", &tok),
        Some(LEASE)
    );
    assert_eq!(t.next_deadline(), Some(secs(50)));
    // Lapsed at 50; the timer has not run yet.
    assert_eq!(t.renew(secs(50), &mut loc, "s", "2001", "c", &tok), None);
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    assert!(t.is_empty());
    assert!(t.handle_timeout(secs(60), &mut loc).is_empty());
    // And the agent can be hosted again at once.
    assert!(
        t.grant(secs(50), &mut loc, "s2", 2, "2001", "c2", LEASE, false)
            .is_ok()
    );
}

/// Every grant that ends is reported once, with how it ended: an unhost,
/// a lease lapsed at the timer, or one found lapsed by a later request
/// for the agent before the timer ran.
#[test]
fn ended_grants_are_polled_with_whether_they_lapsed() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    bind(&mut loc, "2002");
    let released = |t: &mut Target| -> Vec<(String, String, bool)> {
        std::iter::from_fn(|| t.poll_released())
            .map(|r| (r.grant.extension, r.grant.call_id, r.how == Ending::Lapsed))
            .collect()
    };
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c1", LEASE, false)
        .unwrap()
        .token;
    assert!(released(&mut t).is_empty(), "a grant is no release");
    assert!(t.unhost(&mut loc, "s", "2001", "c1", &tok));
    assert_eq!(released(&mut t), [("2001".into(), "c1".into(), false)]);
    assert!(!t.unhost(&mut loc, "s", "2001", "c1", &tok));
    assert!(
        released(&mut t).is_empty(),
        "a repeated unhost ends nothing"
    );

    t.grant(secs(0), &mut loc, "s", 2, "2001", "c2", LEASE, false)
        .unwrap();
    t.grant(secs(10), &mut loc, "s", 3, "2002", "c3", LEASE, false)
        .unwrap();
    assert_eq!(
        t.handle_timeout(secs(30), &mut loc),
        vec!["2001".to_owned()]
    );
    assert_eq!(released(&mut t), [("2001".into(), "c2".into(), true)]);
    // 2002's lease lapsed at 40; a host request for it finds that first.
    assert!(
        t.grant(secs(41), &mut loc, "s2", 4, "2002", "c4", LEASE, false)
            .is_ok()
    );
    assert_eq!(released(&mut t), [("2002".into(), "c3".into(), true)]);
    // A grant left behind while the agent reads ready (kept in step only
    // defensively) ends, unhosted, when a new grant takes its place.
    loc.get_mut("2002").unwrap().become_free();
    t.grant(secs(42), &mut loc, "s3", 5, "2002", "c5", LEASE, false)
        .unwrap();
    assert_eq!(released(&mut t), [("2002".into(), "c4".into(), false)]);
}

/// What [`Target::poll_released`] reports, as (agent, Call-ID, how).
fn released(t: &mut Target) -> Vec<(String, String, Ending)> {
    std::iter::from_fn(|| t.poll_released())
        .map(|r| (r.grant.extension, r.grant.call_id, r.how))
        .collect()
}

/// S restarts: its new run's Hello on a new connection ends every grant
/// its previous run held, at once (virtual time stands still, far from
/// the leases), as a lapse would: the agents are ready again, reported
/// once each, and their tokens are dead. Another source's grant stays.
#[test]
fn a_restarted_source_loses_its_previous_runs_grants_at_once() {
    let mut t = target();
    let mut loc = location();
    for ext in ["2001", "2002", "3001"] {
        bind(&mut loc, ext);
    }
    t.peer_up(secs(0), "s", 1);
    t.peer_up(secs(0), "u", 1);
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c1", LEASE, false)
        .unwrap()
        .token;
    t.grant(secs(1), &mut loc, "s", 2, "2002", "c2", LEASE, false)
        .unwrap();
    t.grant(secs(1), &mut loc, "u", 3, "3001", "c3", LEASE, false)
        .unwrap();

    // S is killed; the link to it goes down (or not yet: a restart within
    // the idle timeout replaces the connection) and comes up again.
    assert_eq!(t.peer_lost("s"), 2);
    t.peer_up(secs(0), "S", 2);
    assert!(released(&mut t).is_empty(), "a reconnection ends nothing");
    assert_eq!(t.peer_restarted(&mut loc, "S", 2), 2);
    let mut gone = released(&mut t);
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        gone,
        [
            ("2001".into(), "c1".into(), Ending::SourceRestarted),
            ("2002".into(), "c2".into(), Ending::SourceRestarted),
        ]
    );
    assert!(Ending::SourceRestarted.hangs_up(), "as a lapse: a BYE");
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    assert_eq!(state(&loc, "2002"), AgentState::Ready);
    assert_eq!(state(&loc, "3001"), hosted_by("u"));
    assert_eq!(t.len(), 1);
    assert!(!t.check_token(secs(2), "s", "2001", "c1", &tok));
    assert_eq!(t.renew(secs(2), &mut loc, "s", "2001", "c1", &tok), None);
    assert_eq!(t.next_deadline(), Some(secs(1 + u64::from(LEASE))));
    // The same news again (another core's copy, a repeated Hello) is
    // harmless.
    assert_eq!(t.peer_restarted(&mut loc, "s", 2), 0);
    assert!(released(&mut t).is_empty());
}

/// A link flap: S reconnects, same run, and says so (the same instance
/// id, so the driver reports no restart). Nothing ends; S renews over the
/// new connection, and the grant lasts until S ends it.
#[test]
fn a_reconnecting_source_of_the_same_run_keeps_its_grants() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    t.peer_up(secs(0), "s", 1);
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c1", LEASE, false)
        .unwrap()
        .token;
    for (link, at) in [(2, 5), (3, 20), (4, 40)] {
        assert_eq!(t.peer_lost("s"), 1);
        t.peer_up(secs(at), "s", link);
        t.handle_timeout(secs(at), &mut loc);
        assert_eq!(
            t.renew(secs(at), &mut loc, "s", "2001", "c1", &tok),
            Some(LEASE)
        );
    }
    assert!(released(&mut t).is_empty());
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert!(t.unhost(&mut loc, "s", "2001", "c1", &tok));
    assert_eq!(
        released(&mut t),
        [("2001".into(), "c1".into(), Ending::Unhosted)]
    );
}

/// The new run's own grants are never ended by the news of its start:
/// one asked for on the new connection before its Hello reached this
/// core, one after; and the cores may learn of the connection only with
/// the Hello. A grant the previous run renewed last on the old connection
/// goes; one asked for again on the new connection (a retry) stays.
#[test]
fn grants_of_the_new_run_survive_the_restart_news() {
    let mut t = target();
    let mut loc = location();
    for ext in ["1001", "2001", "2002", "3001"] {
        bind(&mut loc, ext);
    }
    t.peer_up(secs(0), "s", 1);
    t.grant(secs(0), &mut loc, "s", 1, "2001", "old", LEASE, false)
        .unwrap();
    t.grant(secs(0), &mut loc, "s", 2, "1001", "retried", LEASE, false)
        .unwrap();

    // S restarts: connection 2 comes up; a host request of the new run
    // outruns its Hello, and a retry of an old Call-ID comes too.
    t.peer_up(secs(0), "s", 2);
    let early = t
        .grant(secs(1), &mut loc, "s", 1, "2002", "new-early", LEASE, false)
        .unwrap()
        .token;
    t.grant(secs(1), &mut loc, "s", 2, "1001", "retried", LEASE, false)
        .unwrap();
    assert_eq!(t.peer_restarted(&mut loc, "s", 2), 1);
    assert_eq!(
        released(&mut t),
        [("2001".into(), "old".into(), Ending::SourceRestarted)]
    );
    let late = t
        .grant(secs(2), &mut loc, "s", 3, "3001", "new-late", LEASE, false)
        .unwrap()
        .token;
    // The news repeated by a copy that came late changes nothing.
    assert_eq!(t.peer_restarted(&mut loc, "s", 2), 0);
    assert!(t.check_token(secs(3), "s", "2002", "new-early", &early));
    assert!(t.check_token(secs(3), "s", "3001", "new-late", &late));
    assert_eq!(state(&loc, "1001"), hosted_by("s"));

    // A core that hears of the restart before the connection's PeerUp
    // (another core's queue was slower): the restart itself moves the
    // core on, so a grant after it is the new run's.
    let mut t2 = target();
    let mut loc2 = location();
    bind(&mut loc2, "2001");
    bind(&mut loc2, "2002");
    t2.peer_up(secs(0), "s", 1);
    t2.grant(secs(0), &mut loc2, "s", 1, "2001", "old", LEASE, false)
        .unwrap();
    assert_eq!(t2.peer_restarted(&mut loc2, "s", 2), 1);
    t2.grant(secs(1), &mut loc2, "s", 2, "2002", "new", LEASE, false)
        .unwrap();
    t2.peer_up(secs(0), "s", 2);
    assert_eq!(t2.peer_restarted(&mut loc2, "s", 2), 0);
    assert_eq!(state(&loc2, "2002"), hosted_by("s"));
    // A later restart (a third run) ends the second run's grants.
    t2.peer_up(secs(0), "s", 3);
    assert_eq!(t2.peer_restarted(&mut loc2, "s", 3), 1);
    assert_eq!(state(&loc2, "2002"), AgentState::Ready);
}

/// The confirmations `t` queued, as (to, request id, grant's host request
/// id, agent, Call-ID, token).
fn confirms(t: &mut Target) -> Vec<(String, u64, u64, String, String, Token)> {
    std::iter::from_fn(|| t.poll_transmit())
        .map(|(to, msg)| match wire(msg) {
            Message::Confirm {
                request_id,
                grant,
                token,
                extension,
                call_id,
            } => (to, request_id, grant, extension, call_id, token),
            other => panic!("not a confirmation: {other:?}"),
        })
        .collect()
}

/// S's link flaps, same run, and S saw it drop: it ended the session and
/// its unhost was lost. On the new connection T asks S about the grant
/// it gave over the old one (and only that one: not another source's,
/// nor one asked for over the new connection), S disowns it, and T takes
/// the agent back at once, long before the lease, as a lapse would
/// (reported as disowned, the phone hung up). The same news again asks
/// nothing; an answer from another blade, or a second one, changes
/// nothing.
#[test]
fn a_grant_its_source_disowns_after_a_reconnection_ends_at_once() {
    let mut t = target().with_request_base(5 << 48 | 1);
    let mut loc = location();
    for ext in ["1001", "2001", "3001"] {
        bind(&mut loc, ext);
    }
    t.peer_up(secs(0), "s", 1);
    t.peer_up(secs(0), "u", 1);
    let tok = t
        .grant(secs(0), &mut loc, "s", 7, "2001", "c1", LEASE, false)
        .unwrap()
        .token;
    t.grant(secs(0), &mut loc, "u", 8, "3001", "c3", LEASE, false)
        .unwrap();
    assert!(
        confirms(&mut t).is_empty(),
        "the first connection asks nothing"
    );

    assert_eq!(t.peer_lost("s"), 1);
    assert_eq!(t.peer_up(secs(5), "S", 2), 1);
    let asked = confirms(&mut t);
    let [(to, rid, grant, ext, call_id, token)] = &asked[..] else {
        panic!("{asked:?}");
    };
    assert_eq!(
        (to.as_str(), *grant, ext.as_str(), call_id.as_str(), *token),
        ("S", 7, "2001", "c1", tok)
    );
    assert_eq!(*rid >> 48, 5, "numbered in this core's range");
    assert_eq!(t.confirming(), 1);
    assert_eq!(t.next_deadline(), Some(secs(6)), "the request timeout");
    assert!(released(&mut t).is_empty(), "the reconnection ends nothing");
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    // Another copy of the news asks nothing; a grant over the new
    // connection is not asked about.
    assert_eq!(t.peer_up(secs(5), "s", 2), 0);
    t.grant(secs(5), &mut loc, "s", 9, "1001", "c4", LEASE, false)
        .unwrap();
    assert!(confirms(&mut t).is_empty());

    // Only the source's answer counts.
    assert!(!t.confirmed(secs(5), &mut loc, "u", *rid, false));
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert!(t.confirmed(secs(5), &mut loc, "s", *rid, false));
    assert_eq!(
        released(&mut t),
        [("2001".into(), "c1".into(), Ending::SourceDisowned)]
    );
    assert!(Ending::SourceDisowned.hangs_up(), "as a lapse: a BYE");
    assert_eq!(Ending::SourceDisowned.as_str(), "peer_disowned");
    assert_eq!(
        Ending::ALL[Ending::SourceDisowned.index()],
        Ending::SourceDisowned
    );
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    assert!(!t.check_token(secs(5), "s", "2001", "c1", &tok));
    assert_eq!(t.confirming(), 0);
    // The answer again, or to an unknown question, changes nothing.
    assert!(!t.confirmed(secs(5), &mut loc, "s", *rid, false));
    assert!(!t.confirmed(secs(5), &mut loc, "s", 12345, false));
    assert!(released(&mut t).is_empty());
    assert_eq!(state(&loc, "3001"), hosted_by("u"));
    assert_eq!(state(&loc, "1001"), hosted_by("s"));
}

/// S's link flaps but S did not see it (its old connection was replaced):
/// it still holds the grant and says so. The grant stays, with its lease
/// as it was (a confirmation is no renewal), tagged with the connection
/// asked on: an older question's `held: false` crossing the answer does
/// not end it, and the same connection asks nothing again.
#[test]
fn a_grant_its_source_still_holds_is_kept_and_not_asked_again() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    t.peer_up(secs(0), "s", 1);
    t.grant(secs(0), &mut loc, "s", 7, "2001", "c1", LEASE, false)
        .unwrap();
    // Two reconnections in quick succession: two questions.
    t.peer_up(secs(1), "s", 2);
    let first = confirms(&mut t)[0].1;
    t.peer_up(secs(1), "s", 3);
    let second = confirms(&mut t)[0].1;
    assert_ne!(first, second);
    assert!(!t.confirmed(secs(1), &mut loc, "s", second, true));
    assert!(!t.confirmed(secs(1), &mut loc, "s", first, false));
    assert!(released(&mut t).is_empty());
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert_eq!(t.peer_up(secs(1), "s", 3), 0);
    assert!(confirms(&mut t).is_empty());
    assert_eq!(t.grant_of("2001").unwrap().expires_at, secs(30));
    // Confirmed over connection 3: a restart told on it is a run that
    // answered for the grant, so it stays; one told on a later one ends it.
    assert_eq!(t.peer_restarted(&mut loc, "s", 3), 0);
    assert_eq!(t.peer_restarted(&mut loc, "s", 4), 1);
}

/// A question nobody answers (a source of an earlier build, a link that
/// dropped again) is given up after the request timeout: the grant stays
/// until its lease lapses, and an answer after that is ignored.
#[test]
fn an_unanswered_confirmation_keeps_the_grant_until_its_lease() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    t.peer_up(secs(0), "s", 1);
    t.grant(secs(0), &mut loc, "s", 7, "2001", "c1", LEASE, false)
        .unwrap();
    assert_eq!(t.peer_up(secs(2), "s", 2), 1);
    let rid = confirms(&mut t)[0].1;
    assert_eq!(t.next_deadline(), Some(secs(3)));
    assert!(t.handle_timeout(secs(3), &mut loc).is_empty());
    assert_eq!(t.confirming(), 0);
    assert_eq!(t.next_deadline(), Some(secs(30)), "the lease's");
    assert!(!t.confirmed(secs(4), &mut loc, "s", rid, false), "too late");
    assert!(released(&mut t).is_empty());
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert!(t.handle_timeout(secs(29), &mut loc).is_empty());
    assert_eq!(
        t.handle_timeout(secs(30), &mut loc),
        vec!["2001".to_owned()]
    );
    assert_eq!(
        released(&mut t),
        [("2001".into(), "c1".into(), Ending::Lapsed)]
    );
}

/// While a question is out, the source renews one grant and asks for
/// another again (a retried host request) over the new connection: both
/// are its own now, and its `held: false` (sent before) ends neither; a
/// grant it did neither for ends. A grant that lapsed meanwhile ends as a
/// lapse, and one replaced by a later grant of the agent is left alone.
#[test]
fn a_grant_renewed_or_asked_for_over_the_new_connection_is_never_released() {
    let mut t = target();
    let mut loc = location();
    for ext in ["1001", "2001", "2002", "3001"] {
        bind(&mut loc, ext);
    }
    t.peer_up(secs(0), "s", 1);
    let renewed = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c1", LEASE, false)
        .unwrap()
        .token;
    t.grant(secs(0), &mut loc, "s", 2, "1001", "c2", LEASE, false)
        .unwrap();
    t.grant(secs(0), &mut loc, "s", 3, "2002", "c3", LEASE, false)
        .unwrap();
    t.grant(secs(0), &mut loc, "s", 4, "3001", "c4", 2, false)
        .unwrap();
    assert_eq!(t.peer_up(secs(1), "s", 2), 4);
    let asked = confirms(&mut t);
    let ids: Vec<(&str, u64)> = asked.iter().map(|a| (a.3.as_str(), a.1)).collect();
    assert_eq!(
        ids.iter().map(|(ext, _)| *ext).collect::<Vec<_>>(),
        ["1001", "2001", "2002", "3001"],
        "in a stable order"
    );
    let rid = |ext: &str| ids.iter().find(|(e, _)| *e == ext).unwrap().1;

    assert_eq!(
        t.renew(secs(1), &mut loc, "s", "2001", "c1", &renewed),
        Some(LEASE)
    );
    t.grant(secs(1), &mut loc, "s", 2, "1001", "c2", LEASE, false)
        .unwrap();
    for ext in ["2001", "1001"] {
        assert!(
            !t.confirmed(secs(1), &mut loc, "s", rid(ext), false),
            "{ext}"
        );
    }
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert_eq!(state(&loc, "1001"), hosted_by("s"));
    assert!(released(&mut t).is_empty());
    assert!(t.confirmed(secs(1), &mut loc, "s", rid("2002"), false));
    assert_eq!(
        released(&mut t),
        [("2002".into(), "c3".into(), Ending::SourceDisowned)]
    );
    // 3001's two-second lease ran out before the answer came.
    assert!(!t.confirmed(secs(2), &mut loc, "s", rid("3001"), false));
    assert_eq!(
        released(&mut t),
        [("3001".into(), "c4".into(), Ending::Lapsed)]
    );
    // A question about a grant another one replaced since.
    assert_eq!(t.peer_up(secs(3), "s", 3), 2);
    let again = confirms(&mut t);
    assert!(t.unhost(&mut loc, "s", "2001", "c1", &renewed));
    released(&mut t);
    t.grant(secs(3), &mut loc, "s", 5, "2001", "c5", LEASE, false)
        .unwrap();
    let (_, rid_2001, ..) = again.iter().find(|a| a.3 == "2001").unwrap();
    assert!(!t.confirmed(secs(3), &mut loc, "s", *rid_2001, false));
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert_eq!(t.grant_of("2001").unwrap().call_id, "c5");
    assert!(released(&mut t).is_empty());
}

/// A restart told while questions are out ends the grants itself; the
/// answers that follow change nothing.
#[test]
fn a_restart_told_while_confirming_ends_the_grants_once() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    t.peer_up(secs(0), "s", 1);
    t.grant(secs(0), &mut loc, "s", 1, "2001", "c1", LEASE, false)
        .unwrap();
    t.peer_up(secs(1), "s", 2);
    let rid = confirms(&mut t)[0].1;
    assert_eq!(t.peer_restarted(&mut loc, "s", 2), 1);
    assert!(!t.confirmed(secs(1), &mut loc, "s", rid, false));
    assert_eq!(
        released(&mut t),
        [("2001".into(), "c1".into(), Ending::SourceRestarted)]
    );
}

#[test]
fn renewals_and_unhosts_must_match_the_grant() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    let now = secs(1);
    assert_eq!(t.renew(now, &mut loc, "x", "2001", "c", &tok), None);
    assert_eq!(t.renew(now, &mut loc, "s", "2001", "other", &tok), None);
    assert_eq!(
        t.renew(now, &mut loc, "s", "2001", "c", &Token([0; 16])),
        None
    );
    // A rogue or confused peer cannot release someone else's grant.
    assert!(!t.unhost(&mut loc, "x", "2001", "c", &tok));
    assert!(!t.unhost(&mut loc, "s", "2001", "c", &Token([0; 16])));
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
}

#[test]
fn the_target_keeps_grants_of_a_lost_peer_until_the_lease() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    t.grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap();
    assert_eq!(t.peer_lost("s"), 1);
    assert_eq!(t.peer_lost("other"), 0);
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert_eq!(
        t.handle_timeout(secs(30), &mut loc),
        vec!["2001".to_owned()]
    );
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
}

#[test]
fn logout_while_hosted_is_not_undone_by_the_release() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let tok = t
        .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    loc.unbind("2001");
    // The session goes on without the registration: still hosted.
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    assert!(t.unhost(&mut loc, "s", "2001", "c", &tok));
    assert_eq!(state(&loc, "2001"), AgentState::LoggedOut);
    let tok = t
        .grant(secs(1), &mut loc, "s", 2, "2001", "c", LEASE, false)
        .map(|g| g.token);
    assert_eq!(tok, Err(Refusal::NotLoggedIn));
}

#[test]
fn logging_out_and_in_while_hosted_keeps_the_agent_hosted() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let held = t
        .grant(secs(1), &mut loc, "s", 3, "2001", "c", LEASE, false)
        .unwrap()
        .token;
    loc.unbind("2001");
    bind(&mut loc, "2001");
    assert_eq!(state(&loc, "2001"), hosted_by("s"));
    let other = t
        .grant(secs(2), &mut loc, "s2", 4, "2001", "c2", LEASE, false)
        .map(|g| g.token);
    assert_eq!(other, Err(Refusal::AlreadyHosted));
    assert!(t.check_token(secs(2), "s", "2001", "c", &held));
    assert!(t.unhost(&mut loc, "s", "2001", "c", &held));
    assert_eq!(state(&loc, "2001"), AgentState::Ready);
    assert_eq!(t.len(), 0);
}

#[test]
fn requests_are_answered_once_each() {
    let mut t = target();
    let mut loc = location();
    bind(&mut loc, "2001");
    let now = secs(0);
    let ask = |t: &mut Target, loc: &mut Location, m: Message| {
        t.handle_request(now, loc, "s", &wire(m)).map(wire)
    };
    assert_eq!(
        ask(
            &mut t,
            &mut loc,
            Message::Locate {
                request_id: 1,
                extension: "2002".into()
            }
        ),
        Some(Message::Located {
            request_id: 1,
            epoch: None
        })
    );
    let Some(Message::Located { epoch: Some(e), .. }) = ask(
        &mut t,
        &mut loc,
        Message::Locate {
            request_id: 2,
            extension: "2001".into(),
        },
    ) else {
        panic!("2001 is here");
    };
    let req = Message::HostRequest {
        request_id: 3,
        extension: "2001".into(),
        call_id: "c".into(),
        lease_secs: 10,
        newcomer: false,
    };
    let Some(Message::HostGranted {
        request_id: 3,
        call_id,
        info,
        token,
        lease_secs: 10,
    }) = ask(&mut t, &mut loc, req)
    else {
        panic!("granted");
    };
    assert_eq!((call_id.as_str(), info.state), ("c", hosted_by("s")));
    let renew = Message::Renew {
        request_id: 4,
        extension: "2001".into(),
        call_id: "c".into(),
        token,
    };
    assert_eq!(
        ask(&mut t, &mut loc, renew.clone()),
        Some(Message::RenewAck {
            request_id: 4,
            lease_secs: 10
        })
    );
    let unhost = Message::Unhost {
        request_id: 5,
        extension: "2001".into(),
        call_id: "c".into(),
        token,
    };
    assert_eq!(
        ask(&mut t, &mut loc, unhost.clone()),
        Some(Message::UnhostAck { request_id: 5 })
    );
    assert_eq!(
        ask(&mut t, &mut loc, unhost),
        Some(Message::UnhostAck { request_id: 5 })
    );
    assert_eq!(
        ask(&mut t, &mut loc, renew),
        Some(Message::RenewRefused { request_id: 4 })
    );
    // Not requests: no answer.
    assert_eq!(
        ask(&mut t, &mut loc, Message::UnhostAck { request_id: 1 }),
        None
    );
    assert_eq!(
        ask(&mut t, &mut loc, Message::Resync { entries: vec![] }),
        None
    );
    // The Locate epoch is the announced one.
    assert_eq!(
        t.resync(&loc),
        Message::Resync {
            entries: vec![DirectoryEntry {
                extension: "2001".into(),
                epoch: e
            }]
        }
    );
}

#[test]
fn announcements_number_each_login() {
    let mut t = target();
    let mut loc = location();
    let Message::Announce { entries } = t.logged_in("2001", None) else {
        panic!()
    };
    let first = entries[0].epoch;
    let Message::Announce { entries } = t.logged_in("2001", None) else {
        panic!()
    };
    let second = entries[0].epoch;
    assert!(second > first);
    assert_eq!(
        t.logged_out("2001"),
        Some(Message::Withdraw {
            entries: vec![DirectoryEntry {
                extension: "2001".into(),
                epoch: second
            }]
        })
    );
    assert_eq!(t.logged_out("2001"), None);
    // The resync lists logged-in agents only, numbering unknown ones.
    bind(&mut loc, "2002");
    bind(&mut loc, "1001");
    let entries = t.entries(&loc);
    let exts: Vec<&str> = entries.iter().map(|e| e.extension.as_str()).collect();
    assert_eq!(exts, ["1001", "2002"]);
    assert!(entries.iter().all(|e| e.epoch > second));
    assert_eq!(t.entries(&loc), entries, "stable until the next login");
    let mut t = target().with_epoch_base(1_000);
    let Message::Announce { entries } = t.logged_in("2001", None) else {
        panic!()
    };
    assert_eq!(entries[0].epoch, 1_000);
}

/// Logins numbered by their time tell two blades which came later: the
/// later one stays when the earlier one's announcement arrives (they
/// crossed on the link); the earlier one goes. Counted epochs (a peer of
/// an earlier build, or no clock) never keep a login.
#[test]
fn a_login_later_than_a_peers_announced_one_stays() {
    let at = 1_800_000_000_000_000; // 2027, in microseconds
    let mut s = target();
    let mut t = target();
    let Message::Announce { entries } = s.logged_in("2001", Some(at)) else {
        panic!()
    };
    let on_s = entries[0].epoch;
    assert_eq!(on_s, at);
    let Message::Announce { entries } = t.logged_in("2001", Some(at + 300)) else {
        panic!()
    };
    let on_t = entries[0].epoch;
    assert!(t.later_than_peers("blade-2", "blade-1", "2001", on_s));
    assert!(!s.later_than_peers("blade-1", "blade-2", "2001", on_t));
    // The same microsecond: the blade whose id sorts first keeps it.
    let mut u = target();
    u.logged_in("2001", Some(at));
    assert!(s.later_than_peers("blade-1", "Blade-3", "2001", at));
    assert!(!u.later_than_peers("blade-3", "blade-1", "2001", at));
    // A counted epoch on either side: the news wins.
    assert!(!t.later_than_peers("blade-2", "blade-1", "2001", 1_764_000_000_123));
    let mut counted = target().with_epoch_base(1_764_000_000_000);
    counted.logged_in("2001", None);
    assert!(!counted.later_than_peers("blade-2", "blade-1", "2001", on_s));
    // Each login is numbered above the last, whatever the clock says.
    let Message::Announce { entries } = s.logged_in("2001", Some(at - 5)) else {
        panic!()
    };
    assert!(entries[0].epoch > on_s);
    // No login here: nothing to keep.
    assert!(!s.later_than_peers("blade-1", "blade-2", "2002", 1));
}

// -- directory --

fn entry(ext: &str, epoch: u64) -> DirectoryEntry {
    DirectoryEntry {
        extension: ext.into(),
        epoch,
    }
}

#[test]
fn directory_announce_withdraw_resync() {
    let mut d = Directory::new();
    d.peer_up("t1");
    d.peer_up("t2");
    assert_eq!(d.peers().collect::<Vec<_>>(), ["t1", "t2"]);
    d.announce("t1", &[entry("2001", 5), entry("2002", 6)]);
    assert_eq!(d.lookup("2001"), Some("t1"));
    assert_eq!(d.epoch("2001"), Some(5));
    // An older announcement of the same blade is stale.
    d.announce("t1", &[entry("2001", 4)]);
    assert_eq!(d.epoch("2001"), Some(5));
    // A withdrawal of an older login does not remove the newer one.
    d.withdraw("t1", &[entry("2001", 4)]);
    assert_eq!(d.lookup("2001"), Some("t1"));
    // Another blade's withdrawal does not remove t1's entry.
    d.withdraw("t2", &[entry("2001", 99)]);
    assert_eq!(d.lookup("2001"), Some("t1"));
    d.withdraw("t1", &[entry("2001", 5)]);
    assert_eq!(d.lookup("2001"), None);
    // The agent moved: the later announcement wins.
    d.announce("t1", &[entry("3001", 9)]);
    d.announce("t2", &[entry("3001", 1)]);
    assert_eq!(d.lookup("3001"), Some("t2"));
    // A resync replaces all of that peer's entries, nobody else's.
    d.resync("t1", &[entry("1001", 1)]);
    assert_eq!(d.lookup("2002"), None);
    assert_eq!(d.lookup("1001"), Some("t1"));
    assert_eq!(d.lookup("3001"), Some("t2"));
    assert_eq!(d.len(), 2);
    // Apply routes notices and only notices.
    assert!(d.apply(
        "t2",
        &Message::Withdraw {
            entries: vec![entry("3001", 1)]
        }
    ));
    assert!(!d.apply("t2", &Message::UnhostAck { request_id: 1 }));
    assert_eq!(d.lookup("3001"), None);
    // A lost peer takes its agents with it.
    d.peer_down("T1");
    assert_eq!(d.lookup("1001"), None);
    assert!(d.is_empty());
    assert_eq!(d.peers().collect::<Vec<_>>(), ["t2"]);
}

#[test]
fn a_reconnecting_peer_resyncs_and_own_agents_stay_local() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    login(&mut blades, "t", "2002");
    login(&mut blades, "s", "1001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    assert_eq!(blades[s].dir.lookup("2001"), Some("t"));
    assert_eq!(
        blades[s].dir.lookup("1001"),
        None,
        "own agents are not in it"
    );
    assert_eq!(blades[t].dir.lookup("1001"), Some("s"));
    // The link drops; meanwhile 2002 logs out, unannounced.
    blades[s].dir.peer_down("t");
    assert_eq!(blades[s].dir.lookup("2001"), None);
    blades[t].loc.unbind("2002");
    blades[s].dir.peer_up("t");
    let tb = &mut blades[t];
    let resync = wire(tb.target.resync(&tb.loc));
    assert!(blades[s].dir.apply("t", &resync));
    assert_eq!(blades[s].dir.lookup("2001"), Some("t"));
    assert_eq!(blades[s].dir.lookup("2002"), None);
}

// -- both sides, in virtual time --

#[test]
fn cross_blade_hosting_end_to_end() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let now = secs(100);
    let dir = blades[s].dir.clone();
    blades[s].source.host(now, &dir, "call-1", "2001");
    assert_eq!(blades[s].source.pending(), 1);
    assert_eq!(blades[s].source.next_deadline(), Some(now + secs(1)));
    pump(now, &mut blades);
    let ev = blades[s].events();
    let [
        SourceEvent::Granted {
            call_id,
            extension,
            peer,
            info,
            token,
            lease_secs,
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(
        (call_id.as_str(), extension.as_str(), peer.as_str()),
        ("call-1", "2001", "t")
    );
    assert_eq!(*lease_secs, LEASE);
    assert_eq!(info.state, hosted_by("s"));
    assert_eq!(info.addr, "192.0.2.7:5062".parse().unwrap());
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
    // The INVITE S sends carries the token; T checks it.
    assert!(
        blades[t]
            .target
            .check_token(now, "s", "2001", "call-1", token)
    );
    // T can hand S a request for the agent by showing the grant's
    // token; nobody else, and nothing else, passes.
    assert!(blades[s].source.holds("t", "call-1", "2001", token));
    assert!(blades[s].source.holds("T", "call-1", "2001", token));
    assert!(!blades[s].source.holds("u", "call-1", "2001", token));
    assert!(!blades[s].source.holds("t", "call-2", "2001", token));
    assert!(!blades[s].source.holds("t", "call-1", "2002", token));
    assert!(
        !blades[s]
            .source
            .holds("t", "call-1", "2001", &Token([0; 16]))
    );
    let h = blades[s].source.hosting("call-1", "2001").unwrap();
    assert_eq!(h.next_renew, now + secs(10));
    assert_eq!(blades[s].source.next_deadline(), Some(now + secs(10)));

    // The session ends: host cancelled, then ready.
    assert_eq!(blades[s].source.end("call-1"), 1);
    pump(now, &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert!(blades[s].source.is_empty());
    assert!(blades[t].target.is_empty());
    assert_eq!(blades[s].source.pending(), 0);
    assert_eq!(blades[s].source.next_deadline(), None);
}

#[test]
fn two_blades_host_the_same_agent_at_once_one_wins() {
    let mut blades = cluster(&["s1", "s2", "t"]);
    login(&mut blades, "t", "2001");
    let now = secs(1);
    for id in ["s1", "s2"] {
        let i = idx(&blades, id);
        let dir = blades[i].dir.clone();
        blades[i]
            .source
            .host(now, &dir, &format!("call-{id}"), "2001");
    }
    // Both requests are in flight before either is answered.
    pump(now, &mut blades);
    let e1 = blades[0].events();
    let e2 = blades[1].events();
    let wins = e1
        .iter()
        .chain(&e2)
        .filter(|e| granted(e).is_some())
        .count();
    assert_eq!(wins, 1, "{e1:?} {e2:?}");
    let [
        SourceEvent::Refused {
            reason, call_id, ..
        },
    ] = &e2[..]
    else {
        panic!("{e2:?}");
    };
    assert_eq!((*reason, reason.status()), (Refusal::AlreadyHosted, 486));
    assert_eq!(call_id, "call-s2");
    let t = idx(&blades, "t");
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s1"));
    // The loser holds nothing and has nothing to renew.
    assert!(blades[1].source.is_empty());
    assert_eq!(blades[1].source.next_deadline(), None);
}

#[test]
fn live_sessions_are_renewed_and_never_lapse() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let token = granted(&blades[s].events()[0]).unwrap();
    let mut renewals = 0;
    for step in 1..=1200 {
        let now = ms(step * 100);
        blades[s].tick(now);
        blades[t].tick(now);
        if blades[s].source.pending() > 0 {
            renewals += 1;
        }
        pump(now, &mut blades);
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"), "at {now:?}");
        assert!(blades[t].target.check_token(now, "s", "2001", "c", &token));
    }
    // Every 10 s over 120 s.
    assert_eq!(renewals, 12);
    assert!(blades[s].events().is_empty());
}

#[test]
fn an_unrenewed_lease_lapses_on_both_sides() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let token = granted(&blades[s].events()[0]).unwrap();
    // A partition: renewals from S go nowhere.
    for step in 1..=300 {
        let now = ms(step * 100);
        blades[s].tick(now);
        blades[t].tick(now);
        while blades[s].source.poll_transmit().is_some() {}
    }
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert!(
        !blades[t]
            .target
            .check_token(secs(30), "s", "2001", "c", &token)
    );
    // S gave up on the hosting at the same time, never later.
    let ev = blades[s].events();
    assert_eq!(
        ev,
        [SourceEvent::Lost {
            call_id: "c".into(),
            extension: "2001".into(),
            peer: "t".into()
        }]
    );
    assert!(blades[s].source.is_empty());
}

#[test]
fn a_renewal_after_the_lapse_ends_the_session() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    blades[s].events();
    // T took the agent back early (e.g. a shorter lease on its side).
    let grant = blades[t].target.grant_of("2001").unwrap().clone();
    let tok = grant.token;
    let tb = &mut blades[t];
    assert!(tb.target.unhost(&mut tb.loc, "s", "2001", "c", &tok));
    blades[s].tick(secs(10));
    pump(secs(10), &mut blades);
    assert_eq!(
        blades[s].events(),
        [SourceEvent::Lost {
            call_id: "c".into(),
            extension: "2001".into(),
            peer: "t".into()
        }]
    );
    assert!(blades[s].source.is_empty());
    assert_eq!(blades[s].source.next_deadline(), None);
}

#[test]
fn an_unhost_crossing_a_late_bye_is_harmless() {
    let mut blades = cluster(&["s", "s2", "t"]);
    login(&mut blades, "t", "2001");
    let (s, s2, t) = (idx(&blades, "s"), idx(&blades, "s2"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let token = granted(&blades[s].events()[0]).unwrap();
    // S ends the session (its own BYE); the unhost is in flight.
    assert_eq!(blades[s].source.end("c"), 1);
    let (to, unhost) = blades[s].source.poll_transmit().unwrap();
    assert_eq!(to, "t");
    // The late BYE from B reaches S now: ending again is a no-op.
    assert_eq!(blades[s].source.end("c"), 0);
    assert!(blades[s].source.poll_transmit().is_none());
    // T meanwhile still routes in-dialog requests; the unhost lands.
    let unhost = wire(unhost);
    let t_blade = &mut blades[t];
    let ack = t_blade
        .target
        .handle_request(secs(1), &mut t_blade.loc, "s", &unhost);
    assert!(matches!(ack, Some(Message::UnhostAck { .. })));
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    // The old token no longer admits an INVITE.
    assert!(
        !blades[t]
            .target
            .check_token(secs(1), "s", "2001", "c", &token)
    );
    // Another blade hosts B; a duplicate of the old unhost arrives.
    let dir = blades[s2].dir.clone();
    blades[s2].source.host(secs(2), &dir, "c2", "2001");
    pump(secs(2), &mut blades);
    assert!(granted(&blades[s2].events()[0]).is_some());
    let t_blade = &mut blades[t];
    let ack = t_blade
        .target
        .handle_request(secs(3), &mut t_blade.loc, "s", &unhost);
    assert!(matches!(ack, Some(Message::UnhostAck { .. })));
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s2"));
    // The ack reaching S after all this changes nothing.
    let s_blade = &mut blades[s];
    assert!(
        s_blade
            .source
            .handle(secs(3), &mut s_blade.dir, "t", ack.unwrap())
    );
    assert!(blades[s].events().is_empty());
}

/// A session ended by a BYE still on its way to the target
/// (`Source::end_after`): its hosting stays held, renewed and counted by
/// `hosts`, until `end_held` or its deadline releases it; either way with
/// an unhost and no `Lost`, as the session is over. A later session of the
/// same Call-ID keeps its own grant.
#[test]
fn a_hosting_held_for_a_bye_is_renewed_until_released_and_never_lost() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    login(&mut blades, "t", "2002");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    assert!(granted(&blades[s].events()[0]).is_some());

    // Released by its deadline, renewed until then.
    assert_eq!(blades[s].source.end_after("c", secs(25)), 1);
    assert!(blades[s].source.poll_transmit().is_none());
    assert!(blades[s].source.hosts("2001"));
    let mut renewals = 0;
    for step in 1..=24 {
        blades[s].tick(secs(step));
        renewals += blades[s].source.pending();
        pump(secs(step), &mut blades);
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"), "at {step}");
    }
    assert_eq!(renewals, 2, "at 10 s and 20 s");
    assert_eq!(blades[s].source.next_deadline(), Some(secs(25)));
    blades[s].tick(secs(25));
    pump(secs(25), &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert!(blades[s].source.is_empty() && !blades[s].source.hosts("2001"));
    assert!(blades[s].events().is_empty());
    assert_eq!(blades[s].source.end_held("c"), 0);

    // Released by `end_held`, sparing a later session's grant.
    blades[s].source.host(secs(30), &dir, "c", "2001");
    pump(secs(30), &mut blades);
    blades[s].events();
    assert_eq!(blades[s].source.end_after("c", secs(62)), 1);
    blades[s].source.host(secs(31), &dir, "c", "2002");
    pump(secs(31), &mut blades);
    blades[s].events();
    assert_eq!(blades[s].source.end_held("c"), 1);
    pump(secs(31), &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert_eq!(state(&blades[t].loc, "2002"), hosted_by("s"));
    assert_eq!(blades[s].source.len(), 1);

    // Dropped with its link: a held hosting raises no `Lost`.
    assert_eq!(blades[s].source.end_after("c", secs(63)), 1);
    blades[s].source.peer_lost("t");
    assert!(blades[s].events().is_empty());
    assert!(blades[s].source.is_empty());
}

#[test]
fn an_unanswered_host_request_fails_503_and_a_late_grant_is_released() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    let (_, request) = blades[s].source.poll_transmit().unwrap();
    blades[s].tick(ms(999));
    assert!(blades[s].events().is_empty());
    blades[s].tick(ms(1000));
    let ev = blades[s].events();
    let [SourceEvent::Refused { reason, .. }] = &ev[..] else {
        panic!("{ev:?}");
    };
    assert_eq!((*reason, reason.status()), (Refusal::Overloaded, 503));
    assert_eq!(blades[s].source.pending(), 0);
    assert_eq!(blades[s].source.next_deadline(), None);
    // The request was only slow: T grants after S gave up.
    let t_blade = &mut blades[t];
    let grant = t_blade
        .target
        .handle_request(ms(1500), &mut t_blade.loc, "s", &wire(request))
        .unwrap();
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
    let s_blade = &mut blades[s];
    assert!(
        s_blade
            .source
            .handle(ms(1500), &mut s_blade.dir, "t", wire(grant))
    );
    assert!(blades[s].events().is_empty());
    assert!(blades[s].source.is_empty());
    // S releases it at once rather than stranding B for a lease.
    pump(ms(1500), &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
}

#[test]
fn a_session_ended_before_the_grant_releases_it_on_arrival() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    let (_, request) = blades[s].source.poll_transmit().unwrap();
    // CANCEL from the caller before T answered.
    assert_eq!(blades[s].source.end("c"), 0);
    assert_eq!(blades[s].source.pending(), 0);
    let t_blade = &mut blades[t];
    let grant = t_blade
        .target
        .handle_request(ms(10), &mut t_blade.loc, "s", &wire(request))
        .unwrap();
    let s_blade = &mut blades[s];
    s_blade
        .source
        .handle(ms(10), &mut s_blade.dir, "t", wire(grant));
    pump(ms(10), &mut blades);
    assert!(blades[s].events().is_empty());
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
}

#[test]
fn a_peer_lost_mid_exchange_fails_pending_and_drops_hostings() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    login(&mut blades, "t", "2002");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c1", "2001");
    pump(secs(0), &mut blades);
    assert!(granted(&blades[s].events()[0]).is_some());
    // A second request is in flight when the link dies.
    blades[s].source.host(secs(1), &dir, "c2", "2002");
    blades[s].source.peer_lost("t");
    blades[s].dir.peer_down("t");
    assert!(
        blades[s].source.poll_transmit().is_none(),
        "nothing for a dead link"
    );
    let mut ev = blades[s].events();
    ev.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        ev,
        [
            SourceEvent::Lost {
                call_id: "c1".into(),
                extension: "2001".into(),
                peer: "t".into()
            },
            SourceEvent::Refused {
                call_id: "c2".into(),
                extension: "2002".into(),
                reason: Refusal::Overloaded
            },
        ]
    );
    assert!(blades[s].source.is_empty());
    assert_eq!(blades[s].source.pending(), 0);
    assert_eq!(blades[s].source.next_deadline(), None);
    // T does not take B back on link loss, only when the lease lapses.
    assert_eq!(blades[t].target.peer_lost("s"), 1);
    blades[t].tick(secs(29));
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
    blades[t].tick(secs(30));
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    // With the peer gone, a new call finds nobody to ask: 480.
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(31), &dir, "c3", "2001");
    let ev = blades[s].events();
    assert!(matches!(
        &ev[..],
        [SourceEvent::Refused {
            reason: Refusal::NotLoggedIn,
            ..
        }]
    ));
}

/// What S answers T's confirmation of (`call_id`, `ext`, `token`),
/// asked by `from`.
fn confirm_at(s: &mut Blade, from: &str, call_id: &str, ext: &str, token: Token) -> bool {
    let ask = Message::Confirm {
        request_id: 77,
        grant: 1,
        token,
        extension: ext.into(),
        call_id: call_id.into(),
    };
    assert!(s.source.handle(secs(5), &mut s.dir, from, wire(ask)));
    let sent: Vec<(String, Message)> = std::iter::from_fn(|| s.source.poll_transmit()).collect();
    let [
        (
            to,
            Message::Confirmed {
                request_id: 77,
                held,
            },
        ),
    ] = &sent[..]
    else {
        panic!("{sent:?}");
    };
    assert_eq!(to, from, "answered to the asker");
    assert!(s.events().is_empty(), "answered by the source itself");
    *held
}

/// S answers a confirmation from what it holds: a grant it holds (the
/// right peer, session, agent and token), one held only until its
/// session's BYE has passed T, and one whose host request is unanswered
/// (T may have granted it, the answer still on its way) are held; one it
/// released, dropped with the link, or never had is not.
#[test]
fn the_source_answers_a_confirmation_by_what_it_holds() {
    let mut blades = cluster(&["s", "t", "u"]);
    for ext in ["1001", "2001", "2002", "3001"] {
        login(&mut blades, "t", ext);
    }
    let s = idx(&blades, "s");
    let dir = blades[s].dir.clone();
    let host = |blades: &mut Vec<Blade>, call_id: &str, ext: &str| {
        blades[s].source.host(secs(0), &dir, call_id, ext);
        pump(secs(0), blades);
        let ev = blades[s].events();
        granted(&ev[0]).unwrap_or_else(|| panic!("{ev:?}"))
    };
    let held = host(&mut blades, "c1", "2001");
    let ending = host(&mut blades, "c2", "2002");
    let ended = host(&mut blades, "c4", "1001");
    let lost = Token([9; 16]);
    assert_eq!(blades[s].source.end_after("c2", secs(60)), 1);
    assert_eq!(blades[s].source.end("c4"), 1);
    pump(secs(0), &mut blades);
    // A host request whose answer has not come.
    blades[s].source.host(secs(0), &dir, "c3", "3001");
    assert!(blades[s].source.poll_transmit().is_some());

    let sb = &mut blades[s];
    assert!(confirm_at(sb, "t", "c1", "2001", held));
    assert!(confirm_at(sb, "T", "c1", "2001", held), "ids without case");
    assert!(!confirm_at(sb, "t", "c1", "2001", lost), "another token");
    assert!(!confirm_at(sb, "u", "c1", "2001", held), "another blade");
    assert!(!confirm_at(sb, "t", "c9", "2001", held), "another session");
    assert!(
        confirm_at(sb, "t", "c2", "2002", ending),
        "until its BYE passed"
    );
    assert!(confirm_at(sb, "t", "c3", "3001", lost), "awaited");
    assert!(!confirm_at(sb, "u", "c3", "3001", lost), "awaited from t");
    assert!(!confirm_at(sb, "t", "c3", "2001", lost), "another agent");
    assert!(!confirm_at(sb, "t", "c4", "1001", ended), "released");
    assert!(!confirm_at(sb, "t", "c5", "3001", lost), "never had");
    // Leave to relay awaited is no grant.
    sb.source.relay(secs(5), &dir, "c6", "2001");
    assert!(sb.source.poll_transmit().is_some());
    assert!(!confirm_at(sb, "t", "c6", "2001", lost), "a relay");
    // Dropped with the link (S saw it go down): nothing is held any more.
    sb.source.peer_lost("t");
    sb.events();
    assert!(!confirm_at(sb, "t", "c1", "2001", held));
    assert!(!confirm_at(sb, "t", "c2", "2002", ending));
    assert!(!confirm_at(sb, "t", "c3", "3001", lost));
}

/// Carries T's confirmations (after `peer_up` on `link`) to S and S's
/// answers back; returns the answers, by agent.
fn confirm_round(blades: &mut [Blade], now: Duration, link: u64) -> Vec<(String, bool)> {
    let (s, t) = (idx(blades, "s"), idx(blades, "t"));
    blades[t].target.peer_up(now, "s", link);
    let mut answers = Vec::new();
    while let Some((to, ask)) = blades[t].target.poll_transmit() {
        assert_eq!(to, "s");
        let ext = ask.extension().unwrap().to_owned();
        let sb = &mut blades[s];
        assert!(sb.source.handle(now, &mut sb.dir, "t", wire(ask)));
        while let Some((to, answer)) = blades[s].source.poll_transmit() {
            assert_eq!(to, "t");
            let Message::Confirmed { request_id, held } = wire(answer) else {
                panic!("not an answer");
            };
            let tb = &mut blades[t];
            tb.target.confirmed(now, &mut tb.loc, "s", request_id, held);
            answers.push((ext.clone(), held));
        }
    }
    answers
}

/// Both sides of a link flap, same run of S. When S saw the link drop,
/// its session ended and its unhost went nowhere; the confirmation on
/// the new connection gives T the agent back at once. When S did not
/// (only T's connection moved on), S still holds the grant, says so, and
/// goes on renewing it.
#[test]
fn after_a_flap_the_target_gets_back_only_what_the_source_dropped() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    login(&mut blades, "t", "2002");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    blades[t].target.peer_up(secs(0), "s", 1);
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c1", "2001");
    pump(secs(0), &mut blades);
    assert!(granted(&blades[s].events()[0]).is_some());

    // S does not see the flap: the grant is confirmed and lives on.
    assert_eq!(
        confirm_round(&mut blades, secs(1), 2),
        [("2001".to_owned(), true)]
    );
    for at in [10, 20, 30, 40] {
        blades[s].tick(secs(at));
        blades[t].tick(secs(at));
        pump(secs(at), &mut blades);
    }
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
    assert!(blades[s].events().is_empty());

    // S sees the next flap: it drops the hosting, and its unhost is lost.
    blades[s].source.host(secs(40), &dir, "c2", "2002");
    pump(secs(40), &mut blades);
    blades[s].events();
    blades[s].source.peer_lost("t");
    assert_eq!(blades[s].events().len(), 2, "both sessions lost");
    assert_eq!(blades[t].target.peer_lost("s"), 2);
    let mut answers = confirm_round(&mut blades, secs(41), 3);
    answers.sort();
    assert_eq!(
        answers,
        [("2001".to_owned(), false), ("2002".to_owned(), false)]
    );
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert_eq!(state(&blades[t].loc, "2002"), AgentState::Ready);
    assert!(blades[t].target.is_empty());
    // And the agent can be hosted again at once.
    blades[s].source.host(secs(41), &dir, "c3", "2001");
    pump(secs(41), &mut blades);
    assert!(granted(&blades[s].events()[0]).is_some());
}

#[test]
fn a_directory_miss_asks_every_peer() {
    let mut blades = cluster(&["s", "t1", "t2"]);
    let t2 = idx(&blades, "t2");
    // Logged in on t2, but the announcement never reached s.
    bind(&mut blades[t2].loc, "2001");
    let s = idx(&blades, "s");
    assert_eq!(blades[s].dir.lookup("2001"), None);
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let ev = blades[s].events();
    let [SourceEvent::Granted { peer, .. }] = &ev[..] else {
        panic!("{ev:?}");
    };
    assert_eq!(peer, "t2");
    assert_eq!(blades[s].dir.lookup("2001"), Some("t2"), "learned");
    assert_eq!(state(&blades[t2].loc, "2001"), hosted_by("s"));
}

#[test]
fn a_stale_entry_falls_back_to_asking_the_others() {
    let mut blades = cluster(&["s", "t1", "t2"]);
    login(&mut blades, "t1", "2001");
    // 2001 moves to t2; t1's withdrawal and t2's announcement are late.
    let t1 = idx(&blades, "t1");
    let t2 = idx(&blades, "t2");
    blades[t1].loc.unbind("2001");
    bind(&mut blades[t2].loc, "2001");
    let s = idx(&blades, "s");
    assert_eq!(blades[s].dir.lookup("2001"), Some("t1"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let ev = blades[s].events();
    let [SourceEvent::Granted { peer, .. }] = &ev[..] else {
        panic!("{ev:?}");
    };
    assert_eq!(peer, "t2");
    assert_eq!(blades[s].dir.lookup("2001"), Some("t2"));
}

#[test]
fn nobody_has_the_agent_is_480_and_a_silent_peer_503() {
    let mut blades = cluster(&["s", "t1", "t2"]);
    let s = idx(&blades, "s");
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let ev = blades[s].events();
    assert!(
        matches!(
            &ev[..],
            [SourceEvent::Refused {
                reason: Refusal::NotLoggedIn,
                ..
            }]
        ),
        "{ev:?}"
    );
    // t2 never answers the Locate: 503 at the timeout.
    blades[s].source.host(secs(10), &dir, "c2", "2001");
    let mut to_t2 = None;
    while let Some((to, m)) = blades[s].source.poll_transmit() {
        if to == "t2" {
            to_t2 = Some(m);
            continue;
        }
        let j = idx(&blades, &to);
        let tb = &mut blades[j];
        let reply = tb
            .target
            .handle_request(secs(10), &mut tb.loc, "s", &m)
            .unwrap();
        let sb = &mut blades[s];
        sb.source.handle(secs(10), &mut sb.dir, &to, reply);
    }
    assert!(to_t2.is_some());
    assert!(blades[s].events().is_empty());
    blades[s].tick(secs(11));
    let ev = blades[s].events();
    assert!(
        matches!(
            &ev[..],
            [SourceEvent::Refused {
                reason: Refusal::Overloaded,
                ..
            }]
        ),
        "{ev:?}"
    );
    // Or t2's link drops while it is being asked: 503 at once.
    blades[s].source.host(secs(20), &dir, "c3", "2001");
    let queued: Vec<(String, Message)> =
        std::iter::from_fn(|| blades[s].source.poll_transmit()).collect();
    for (to, m) in queued.into_iter().filter(|(to, _)| to == "t1") {
        let j = idx(&blades, &to);
        let tb = &mut blades[j];
        let reply = tb
            .target
            .handle_request(secs(20), &mut tb.loc, "s", &m)
            .unwrap();
        let sb = &mut blades[s];
        sb.source.handle(secs(20), &mut sb.dir, &to, reply);
    }
    blades[s].source.peer_lost("t2");
    let ev = blades[s].events();
    assert!(
        matches!(
            &ev[..],
            [SourceEvent::Refused {
                reason: Refusal::Overloaded,
                ..
            }]
        ),
        "{ev:?}"
    );
    assert_eq!(blades[s].source.pending(), 0);
}

#[test]
fn answers_from_the_wrong_peer_are_ignored() {
    let mut blades = cluster(&["s", "t", "x"]);
    login(&mut blades, "t", "2001");
    let s = idx(&blades, "s");
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    let (_, req) = blades[s].source.poll_transmit().unwrap();
    let id = req.request_id().unwrap();
    let sb = &mut blades[s];
    let forged = Message::HostRefused {
        request_id: id,
        reason: Refusal::Busy,
    };
    assert!(sb.source.handle(secs(0), &mut sb.dir, "x", forged));
    assert!(sb.events().is_empty());
    assert_eq!(sb.source.pending(), 1);
    // Non-replies are not the source's.
    assert!(!sb.source.handle(
        secs(0),
        &mut sb.dir,
        "t",
        Message::Resync { entries: vec![] }
    ));
}

#[test]
fn a_new_call_for_a_hosted_agent_is_redirected_to_the_host() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    assert!(
        blades[t]
            .target
            .redirect("2001", "c9", "sip:3001@cc")
            .is_none()
    );
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    blades[s].events();
    // A third party calls B on T: T hands the decision to S.
    let (to, redirect) = blades[t]
        .target
        .redirect("2001", "c9", "sip:3001@cc")
        .unwrap();
    assert_eq!(to, "s");
    let rid = redirect.request_id().unwrap();
    let sb = &mut blades[s];
    assert!(
        sb.source
            .handle(secs(1), &mut sb.dir, "t", wire(redirect.clone()))
    );
    let ev = sb.events();
    let [
        SourceEvent::Redirected {
            peer,
            request_id,
            session,
            extension,
            call_id,
            caller,
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(
        (
            peer.as_str(),
            *request_id,
            session.as_str(),
            extension.as_str()
        ),
        ("t", rid, "c", "2001")
    );
    assert_eq!((call_id.as_str(), caller.as_str()), ("c9", "sip:3001@cc"));
    sb.source.answer_redirect("t", rid, 486);
    let answers = pump(secs(1), &mut blades);
    assert_eq!(
        answers,
        [(
            "t".to_owned(),
            Message::RedirectAnswer {
                request_id: rid,
                status: 486
            }
        )]
    );
    // After the session ended, S answers a late redirect itself.
    blades[s].source.end("c");
    pump(secs(2), &mut blades);
    let sb = &mut blades[s];
    sb.source.handle(secs(2), &mut sb.dir, "t", wire(redirect));
    assert!(sb.events().is_empty());
    let answers = pump(secs(2), &mut blades);
    assert_eq!(
        answers,
        [(
            "t".to_owned(),
            Message::RedirectAnswer {
                request_id: rid,
                status: 486
            }
        )]
    );
}

#[test]
fn a_short_lease_is_renewed_by_its_own_length() {
    let mut blades = cluster(&["s", "t"]);
    blades[0].source = Source::new(9);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    let ev = blades[s].events();
    assert!(matches!(
        &ev[..],
        [SourceEvent::Granted { lease_secs: 9, .. }]
    ));
    for step in 1..=600 {
        let now = ms(step * 100);
        blades[s].tick(now);
        blades[t].tick(now);
        pump(now, &mut blades);
        let g = blades[t].target.grant_of("2001").unwrap();
        assert_eq!(g.lease_secs, 9);
        assert!(g.expires_at > now && g.expires_at <= now + secs(9));
    }
    assert!(blades[s].events().is_empty());
}

#[test]
fn hosting_the_same_agent_twice_for_one_session_keeps_the_grant() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "c", "2001");
    pump(secs(0), &mut blades);
    blades[s].source.host(secs(1), &dir, "c", "2001");
    pump(secs(1), &mut blades);
    let ev = blades[s].events();
    assert_eq!(ev.len(), 2);
    assert_eq!(granted(&ev[0]), granted(&ev[1]));
    assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
    assert_eq!(blades[s].source.len(), 1);
    assert_eq!(blades[s].source.end("c"), 1);
    pump(secs(2), &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
}

#[test]
fn a_conference_hosts_participants_one_by_one() {
    let mut blades = cluster(&["s", "t"]);
    login(&mut blades, "t", "2001");
    login(&mut blades, "t", "2002");
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    let dir = blades[s].dir.clone();
    blades[s].source.host(secs(0), &dir, "conf", "2001");
    blades[s].source.host(secs(0), &dir, "conf", "2002");
    pump(secs(0), &mut blades);
    assert_eq!(blades[s].source.len(), 2);
    // One participant leaves, then the conference ends.
    assert!(blades[s].source.release("conf", "2001"));
    assert!(!blades[s].source.release("conf", "2001"));
    pump(secs(1), &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    assert_eq!(state(&blades[t].loc, "2002"), hosted_by("s"));
    assert_eq!(blades[s].source.end("conf"), 1);
    pump(secs(1), &mut blades);
    assert_eq!(state(&blades[t].loc, "2002"), AgentState::Ready);
}

/// `Source::hosts` follows every way a hosting starts and ends: a grant,
/// a second session's grant of the same agent, a release of one, the
/// session's end, a lapse, and a lost peer.
#[test]
fn the_source_knows_which_agents_it_hosts() {
    let mut blades = cluster(&["s", "t"]);
    let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
    login(&mut blades, "t", "2001");
    login(&mut blades, "t", "2002");
    assert!(!blades[s].source.hosts("2001"));
    let now = secs(1);
    {
        let b = &mut blades[s];
        b.source.host(now, &b.dir, "c1", "2001");
    }
    pump(now, &mut blades);
    assert!(blades[s].source.hosts("2001"));
    assert!(!blades[s].source.hosts("2002"));
    assert!(blades[s].events().iter().any(|e| granted(e).is_some()));
    // A refusal (already hosted) adds nothing.
    {
        let b = &mut blades[s];
        b.source.host(now, &b.dir, "c2", "2001");
    }
    pump(now, &mut blades);
    assert!(!blades[s].source.release("c2", "2001"));
    assert!(blades[s].source.hosts("2001"));
    assert_eq!(blades[s].source.end("c1"), 1);
    assert!(!blades[s].source.hosts("2001"));
    pump(now, &mut blades);
    assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);

    // A lapse (the renewals are lost) and a lost peer end it too.
    {
        let b = &mut blades[s];
        b.source.host(now, &b.dir, "c3", "2001");
        b.source.host(now, &b.dir, "c4", "2002");
    }
    pump(now, &mut blades);
    assert!(blades[s].source.hosts("2001") && blades[s].source.hosts("2002"));
    blades[s].source.peer_lost("t");
    assert!(!blades[s].source.hosts("2001") && !blades[s].source.hosts("2002"));
    blades[s].dir.peer_up("t");
    let later = now + secs(u64::from(LEASE) * 2);
    blades[t].tick(later);
    {
        let b = &mut blades[s];
        b.source.host(later, &b.dir, "c5", "2001");
    }
    pump(later, &mut blades);
    assert!(blades[s].source.hosts("2001"));
    let lapse = later + secs(u64::from(LEASE) + 1);
    blades[s].source.handle_timeout(lapse);
    assert!(!blades[s].source.hosts("2001"));
}
