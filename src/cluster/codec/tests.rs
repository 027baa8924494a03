use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::config::{Agent, AgentKind, Credential};
use crate::registrar::location::{AgentRecord, AgentState, Binding};
use crate::sip::{Peer, Transport};

fn enc(m: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    out.to_vec()
}

fn info() -> LoginInfo {
    LoginInfo {
        badge: "B2001".into(),
        extension: "2001".into(),
        kind: AgentKind::Supervisor,
        contact: "sip:2001@192.0.2.20:5062;transport=tcp".into(),
        addr: "192.0.2.20:5062".parse().unwrap(),
        transport: Transport::Tcp,
        expires_secs: 3599,
        state: AgentState::Hosted {
            by: "blade-1".into(),
        },
        config: vec![
            ("skill".into(), "billing".into()),
            ("lang".into(), "fr".into()),
        ],
    }
}

const TOKEN: Token = Token([0xa5; 16]);

/// One message of every type, and every variant of each enum field.
fn samples() -> Vec<Message> {
    let entry = |e: &str, n| DirectoryEntry {
        extension: e.into(),
        epoch: n,
    };
    let mut v = vec![
        Message::Announce {
            entries: vec![entry("1001", 1), entry("1002", u64::MAX)],
        },
        Message::Withdraw {
            entries: vec![entry("1001", 1)],
        },
        Message::Resync { entries: vec![] },
        Message::Resync {
            entries: vec![entry("", 0), entry("1003", 7)],
        },
        Message::Locate {
            request_id: 7,
            extension: "2001".into(),
        },
        Message::Located {
            request_id: 7,
            epoch: None,
        },
        Message::Located {
            request_id: 7,
            epoch: Some(42),
        },
        Message::HostRequest {
            request_id: u64::MAX,
            extension: "2001".into(),
            call_id: "a84b4c76e66710@pc33".into(),
            lease_secs: 30,
            newcomer: false,
        },
        Message::HostRequest {
            request_id: 9,
            extension: "2001".into(),
            call_id: "join-leg@pc33".into(),
            lease_secs: 30,
            newcomer: true,
        },
        Message::HostGranted {
            request_id: 1,
            call_id: "c1".into(),
            info: info(),
            token: TOKEN,
            lease_secs: 30,
        },
        Message::Renew {
            request_id: 3,
            extension: "2001".into(),
            call_id: "c1".into(),
            token: TOKEN,
        },
        Message::RenewAck {
            request_id: 3,
            lease_secs: 30,
        },
        Message::RenewRefused { request_id: 3 },
        Message::Unhost {
            request_id: 4,
            extension: "2001".into(),
            call_id: "c1".into(),
            token: TOKEN,
        },
        Message::UnhostAck { request_id: 4 },
        Message::Redirect {
            request_id: 9,
            grant: 1,
            token: TOKEN,
            extension: "2001".into(),
            call_id: "c2".into(),
            caller: "sip:3001@cc.example".into(),
        },
        Message::RedirectAnswer {
            request_id: 9,
            status: 486,
        },
        Message::RedirectAnswer {
            request_id: 9,
            status: 302,
        },
    ];
    for reason in [
        Refusal::Unknown,
        Refusal::NotLoggedIn,
        Refusal::Busy,
        Refusal::AlreadyHosted,
        Refusal::Overloaded,
    ] {
        v.push(Message::HostRefused {
            request_id: 2,
            reason,
        });
    }
    let states = [
        AgentState::LoggedOut,
        AgentState::Ready,
        AgentState::InCall {
            call_id: "x@y".into(),
        },
    ];
    for (i, state) in states.into_iter().enumerate() {
        let mut info = info();
        info.state = state;
        info.kind = AgentKind::Agent;
        info.transport = Transport::Udp;
        info.config.clear();
        if i == 1 {
            info.addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5060);
        }
        v.push(Message::HostGranted {
            request_id: 5,
            call_id: "ünïcødé".into(),
            info,
            token: Token([i as u8; 16]),
            lease_secs: 1,
        });
    }
    v.push(Message::RelayRequest {
        request_id: 9,
        extension: "2001".into(),
        call_id: "m1@host".into(),
    });
    v.push(Message::RelayGranted {
        request_id: 9,
        token: Token([0x5a; 16]),
    });
    v.push(Message::Hello {
        instance: 0x0123_4567_89ab_cdef,
    });
    v.push(Message::Confirm {
        request_id: 1 << 48 | 3,
        grant: 2 << 48 | 1,
        token: TOKEN,
        extension: "2001".into(),
        call_id: "c1".into(),
    });
    for held in [true, false] {
        v.push(Message::Confirmed {
            request_id: 1 << 48 | 3,
            held,
        });
    }
    v
}

#[test]
fn every_message_round_trips() {
    let samples = samples();
    let mut types: Vec<u8> = Vec::new();
    for m in &samples {
        let bytes = enc(m);
        assert_eq!(&bytes[..2], &[MAGIC, VERSION]);
        types.push(bytes[2]);
        assert_eq!(Message::decode(&bytes).as_ref(), Ok(m), "{}", m.name());
        // Length-prefixed, as on a shared stream.
        let mut framed = BytesMut::new();
        m.encode_framed(&mut framed);
        m.encode_framed(&mut framed);
        let (frame, used) = split_frame(&framed).unwrap().unwrap();
        assert_eq!(frame, &bytes[..]);
        assert_eq!(used, bytes.len() + 4);
        assert_eq!(split_frame(&framed[..used + 3]), Ok(Some((frame, used))));
        assert_eq!(split_frame(&framed[used..used + 3]), Ok(None));
        assert_eq!(split_frame(&framed[..used - 1]), Ok(None));
    }
    types.sort_unstable();
    types.dedup();
    assert_eq!(types, (1..=21).collect::<Vec<u8>>(), "every type sampled");
}

#[test]
fn classes_ids_and_extensions() {
    for m in samples() {
        match m.class() {
            Class::Notice => assert_eq!(m.request_id(), None),
            Class::Request | Class::Redirect => {
                assert!(m.request_id().is_some());
                assert!(m.extension().is_some(), "{}", m.name());
            }
            Class::Reply | Class::RedirectAnswer => {
                assert!(m.request_id().is_some());
                assert_eq!(m.extension(), None);
            }
            Class::Link => {
                assert_eq!(m.request_id(), None);
                assert_eq!(m.extension(), None);
            }
        }
    }
}

#[test]
fn unknown_version_magic_and_type_are_refused() {
    let mut bytes = enc(&Message::UnhostAck { request_id: 1 });
    bytes[1] = 2;
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownVersion(2)));
    assert!(
        DecodeError::UnknownVersion(2)
            .to_string()
            .contains("unknown cluster protocol version 2")
    );
    bytes[1] = 0;
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownVersion(0)));
    bytes[1] = VERSION;
    bytes[0] = b'I';
    assert_eq!(Message::decode(&bytes), Err(DecodeError::BadMagic(b'I')));
    bytes[0] = MAGIC;
    for t in [0, 22, 255] {
        bytes[2] = t;
        assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownType(t)));
    }
}

#[test]
fn truncation_at_every_length_is_unexpected_end() {
    for m in samples() {
        let bytes = enc(&m);
        for len in 0..bytes.len() {
            assert_eq!(
                Message::decode(&bytes[..len]),
                Err(DecodeError::UnexpectedEnd),
                "{} cut at {len}",
                m.name()
            );
        }
        let mut long = bytes.clone();
        long.extend_from_slice(b"xy");
        assert_eq!(Message::decode(&long), Err(DecodeError::TrailingBytes(2)));
    }
}

fn header(ty: u8) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_slice(&[MAGIC, VERSION, ty]);
    b
}

#[test]
fn absurd_lengths_are_refused_before_allocating() {
    // A count over the limit.
    let mut b = header(ty::ANNOUNCE);
    b.put_u32(u32::MAX);
    assert_eq!(Message::decode(&b), Err(DecodeError::TooLong("entries")));
    // A plausible count the frame cannot hold: truncated, no reserve.
    let mut b = header(ty::RESYNC);
    b.put_u32(MAX_ENTRIES as u32);
    b.put_slice(&[0; 12]);
    assert_eq!(Message::decode(&b), Err(DecodeError::UnexpectedEnd));
    // A string longer than the frame.
    let mut b = header(ty::LOCATE);
    b.put_u64(1);
    b.put_u16(u16::MAX);
    b.put_slice(b"2001");
    assert_eq!(Message::decode(&b), Err(DecodeError::UnexpectedEnd));
    // Too many configuration pairs.
    let mut full = BytesMut::new();
    Message::HostGranted {
        request_id: 1,
        call_id: "c".into(),
        info: LoginInfo {
            config: vec![],
            ..info()
        },
        token: TOKEN,
        lease_secs: 1,
    }
    .encode(&mut full);
    // The config count sits before the token (16) and lease (4).
    let at = full.len() - 20 - 2;
    assert_eq!(&full[at..at + 2], &[0, 0]);
    full[at..at + 2].copy_from_slice(&(MAX_CONFIG as u16 + 1).to_be_bytes());
    assert_eq!(Message::decode(&full), Err(DecodeError::TooLong("config")));
    // A stream frame over the limit.
    let mut s = BytesMut::new();
    s.put_u32(MAX_FRAME as u32 + 1);
    assert_eq!(split_frame(&s), Err(DecodeError::TooLong("frame")));
    s.clear();
    s.put_u32(u32::MAX);
    assert_eq!(split_frame(&s), Err(DecodeError::TooLong("frame")));
    assert_eq!(split_frame(&[0, 0]), Ok(None));
}

/// The Hello is the type after the last one the previous build knew (17):
/// that build reads it as `UnknownType(18)`, which its driver logs and
/// drops, link up. Its encoding is fixed: the header and a big-endian u64.
#[test]
fn hello_has_one_fixed_encoding() {
    let m = Message::Hello {
        instance: 0x0102_0304_0506_0708,
    };
    let bytes = enc(&m);
    assert_eq!(bytes, [MAGIC, VERSION, 18, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(Message::decode(&bytes), Ok(m.clone()));
    assert_eq!((m.class(), m.name()), (Class::Link, "Hello"));
    for instance in [0, u64::MAX] {
        let m = Message::Hello { instance };
        assert_eq!(Message::decode(&enc(&m)), Ok(m));
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(Message::decode(&long), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(
        Message::decode(&bytes[..10]),
        Err(DecodeError::UnexpectedEnd)
    );
}

/// The confirmation and its answer (types 20 and 21, after the last one
/// the previous build knew): their encodings are fixed, `held` is one byte,
/// 0 or 1, and they travel as a redirect does (a target's question to the
/// hosting blade, routed there by the grant's host request id; the answer
/// routed back by its own id).
#[test]
fn confirm_and_confirmed_have_fixed_encodings() {
    let m = Message::Confirm {
        request_id: 0x0102_0304_0506_0708,
        grant: 0x1112_1314_1516_1718,
        token: Token([0xee; 16]),
        extension: "2001".into(),
        call_id: "c".into(),
    };
    let mut want = vec![MAGIC, VERSION, 20, 1, 2, 3, 4, 5, 6, 7, 8];
    want.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
    want.extend_from_slice(&[0xee; 16]);
    want.extend_from_slice(&[0, 4, b'2', b'0', b'0', b'1', 0, 1, b'c']);
    assert_eq!(enc(&m), want);
    assert_eq!(Message::decode(&want), Ok(m.clone()));
    assert_eq!(
        (m.class(), m.name(), m.request_id(), m.extension()),
        (
            Class::Redirect,
            "Confirm",
            Some(0x0102_0304_0506_0708),
            Some("2001")
        )
    );
    for (held, byte) in [(false, 0), (true, 1)] {
        let m = Message::Confirmed {
            request_id: 9,
            held,
        };
        let bytes = enc(&m);
        assert_eq!(bytes, [MAGIC, VERSION, 21, 0, 0, 0, 0, 0, 0, 0, 9, byte]);
        assert_eq!(Message::decode(&bytes), Ok(m.clone()));
        assert_eq!(
            (m.class(), m.name(), m.request_id(), m.extension()),
            (Class::RedirectAnswer, "Confirmed", Some(9), None)
        );
        assert_eq!(
            Message::decode(&bytes[..11]),
            Err(DecodeError::UnexpectedEnd)
        );
    }
}

#[test]
fn invalid_fields_are_named() {
    let mut b = header(ty::LOCATE);
    b.put_u64(1);
    b.put_u16(2);
    b.put_slice(&[0xc3, 0x28]);
    assert_eq!(Message::decode(&b), Err(DecodeError::BadUtf8("extension")));

    let mut b = header(ty::HOST_REFUSED);
    b.put_u64(1);
    b.put_u8(9);
    assert_eq!(Message::decode(&b), Err(DecodeError::Invalid("reason")));

    let mut b = header(ty::LOCATED);
    b.put_u64(1);
    b.put_u8(2);
    assert_eq!(Message::decode(&b), Err(DecodeError::Invalid("epoch")));

    for held in [2u8, 0x80, u8::MAX] {
        let mut b = header(ty::CONFIRMED);
        b.put_u64(1);
        b.put_u8(held);
        assert_eq!(Message::decode(&b), Err(DecodeError::Invalid("held")));
    }

    for status in [0u16, 200, 299, 700, u16::MAX] {
        let mut b = header(ty::REDIRECT_ANSWER);
        b.put_u64(1);
        b.put_u16(status);
        assert_eq!(Message::decode(&b), Err(DecodeError::Invalid("status")));
    }

    // Corrupt each enum of a LoginInfo in turn.
    let granted = Message::HostGranted {
        request_id: 1,
        call_id: String::new(),
        info: LoginInfo {
            badge: String::new(),
            extension: String::new(),
            contact: String::new(),
            ..info()
        },
        token: TOKEN,
        lease_secs: 1,
    };
    let bytes = enc(&granted);
    // magic, version, type, id(8), call_id(2), badge(2), extension(2)
    let kind_at = 3 + 8 + 2 + 2 + 2;
    let family_at = kind_at + 1 + 2;
    let transport_at = family_at + 1 + 4 + 2;
    let state_at = transport_at + 1 + 4;
    for (at, field) in [
        (kind_at, "kind"),
        (family_at, "address family"),
        (transport_at, "transport"),
        (state_at, "state"),
    ] {
        let mut bad = bytes.clone();
        bad[at] = 0x7f;
        assert_eq!(Message::decode(&bad), Err(DecodeError::Invalid(field)));
    }
}

#[test]
fn encode_clamps_what_no_frame_can_carry() {
    // 'é' is two bytes: the cut must fall on a character boundary.
    let long = "é".repeat(40_000);
    let m = Message::Locate {
        request_id: 1,
        extension: long.clone(),
    };
    let Ok(Message::Locate { extension, .. }) = Message::decode(&enc(&m)) else {
        panic!("clamped frame decodes");
    };
    assert_eq!(extension.len(), MAX_STR - 1);
    assert!(long.starts_with(&extension));

    let mut i = info();
    i.config = (0..MAX_CONFIG + 5)
        .map(|n| (n.to_string(), String::new()))
        .collect();
    let m = Message::HostGranted {
        request_id: 1,
        call_id: "c".into(),
        info: i,
        token: TOKEN,
        lease_secs: 1,
    };
    let Ok(Message::HostGranted { info, .. }) = Message::decode(&enc(&m)) else {
        panic!("clamped frame decodes");
    };
    assert_eq!(info.config.len(), MAX_CONFIG);
}

#[test]
fn token_hex_and_debug() {
    let t = Token([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xfd, 0xfe, 0xff]);
    let hex = t.to_hex();
    assert_eq!(hex, "000102030405060708090a0b0cfdfeff");
    assert_eq!(Token::from_hex(hex.as_bytes()), Some(t));
    assert_eq!(Token::from_hex(hex.to_uppercase().as_bytes()), Some(t));
    assert_eq!(Token::from_hex(&hex.as_bytes()[1..]), None);
    assert_eq!(Token::from_hex(b"zz0102030405060708090a0b0cfdfeff"), None);
    assert_eq!(format!("{t:?}"), "Token(00010203…)");
}

#[test]
fn refusal_statuses() {
    assert_eq!(Refusal::Unknown.status(), 404);
    assert_eq!(Refusal::NotLoggedIn.status(), 480);
    assert_eq!(Refusal::Busy.status(), 486);
    assert_eq!(Refusal::AlreadyHosted.status(), 486);
    assert_eq!(Refusal::Overloaded.status(), 503);
    assert_eq!(Refusal::AlreadyHosted.to_string(), "already hosted");
}

#[test]
fn login_info_from_record() {
    let agent = Arc::new(Agent {
        badge: "A1001".into(),
        extension: "1001".into(),
        kind: AgentKind::Agent,
        credential: Credential::Password("s3cret".into()),
    });
    let mut record = AgentRecord::new(agent);
    let now = Duration::from_secs(100);
    assert_eq!(LoginInfo::from_record(&record, now), None);
    let addr: SocketAddr = (Ipv4Addr::new(127, 0, 0, 12), 5061).into();
    record.binding = Some(Binding {
        uri: "sip:1001@127.0.0.12:5061".into(),
        peer: Peer::udp(addr),
        expires_at: Duration::from_millis(3_700_500),
        call_id: "reg-1".into(),
        cseq: 3,
    });
    record.state = AgentState::Ready;
    let info = LoginInfo::from_record(&record, now).unwrap();
    assert_eq!(
        info,
        LoginInfo {
            badge: "A1001".into(),
            extension: "1001".into(),
            kind: AgentKind::Agent,
            contact: "sip:1001@127.0.0.12:5061".into(),
            addr,
            transport: Transport::Udp,
            expires_secs: 3600,
            state: AgentState::Ready,
            config: vec![],
        }
    );
    assert_eq!(info.peer(), Peer::udp(addr));
    // A lapsed binding reads as no time left, not a wrap.
    assert_eq!(
        LoginInfo::from_record(&record, Duration::from_secs(9999))
            .unwrap()
            .expires_secs,
        0
    );
}

/// The fuzz target's property: whatever decodes re-encodes to the very
/// same bytes (one encoding per message) and decodes again equal.
fn check_canonical(data: &[u8]) {
    if let Ok(m) = Message::decode(data) {
        let again = enc(&m);
        assert_eq!(again, data, "re-encoding differs");
        assert_eq!(Message::decode(&again), Ok(m));
    }
}

/// The committed seeds decode, and the fuzz property holds on every
/// corpus file (what fuzzing found interesting stays checked on stable).
#[test]
fn fuzz_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/cluster_codec");
    let Ok(read) = std::fs::read_dir(&dir) else {
        return; // The fuzz tree is optional in a source package.
    };
    for entry in read {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") {
            assert!(Message::decode(&data).is_ok(), "{name} decodes");
        }
        check_canonical(&data);
    }
}

/// Rewrites the fuzz seeds from [`samples`]:
/// `cargo test --lib cluster::codec::tests::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/cluster_codec"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/cluster_codec");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, m) in samples().iter().enumerate() {
        let name = format!("seed-{i:02}-{}", m.name());
        std::fs::write(dir.join(name), enc(m)).unwrap();
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9]{0,6}", "\\PC{0,12}", "[a-z0-9@.-]{0,24}"]
}

fn token() -> impl Strategy<Value = Token> {
    any::<[u8; 16]>().prop_map(Token)
}

fn entries() -> impl Strategy<Value = Vec<DirectoryEntry>> {
    proptest::collection::vec(
        (text(), any::<u64>()).prop_map(|(extension, epoch)| DirectoryEntry { extension, epoch }),
        0..6,
    )
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

fn state() -> impl Strategy<Value = AgentState> {
    prop_oneof![
        Just(AgentState::LoggedOut),
        Just(AgentState::Ready),
        text().prop_map(|call_id| AgentState::InCall { call_id }),
        text().prop_map(|by| AgentState::Hosted { by }),
    ]
}

fn login_info() -> impl Strategy<Value = LoginInfo> {
    (
        (text(), text(), any::<bool>(), text()),
        (addr(), any::<bool>(), any::<u32>(), state()),
        proptest::collection::vec((text(), text()), 0..4),
    )
        .prop_map(
            |((badge, extension, sup, contact), (addr, tcp, expires_secs, state), config)| {
                LoginInfo {
                    badge,
                    extension,
                    kind: if sup {
                        AgentKind::Supervisor
                    } else {
                        AgentKind::Agent
                    },
                    contact,
                    addr,
                    transport: if tcp { Transport::Tcp } else { Transport::Udp },
                    expires_secs,
                    state,
                    config,
                }
            },
        )
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        Just(Refusal::Unknown),
        Just(Refusal::NotLoggedIn),
        Just(Refusal::Busy),
        Just(Refusal::AlreadyHosted),
        Just(Refusal::Overloaded),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let id = any::<u64>();
    prop_oneof![
        entries().prop_map(|entries| Message::Announce { entries }),
        entries().prop_map(|entries| Message::Withdraw { entries }),
        entries().prop_map(|entries| Message::Resync { entries }),
        (id, text()).prop_map(|(request_id, extension)| Message::Locate {
            request_id,
            extension
        }),
        (id, any::<Option<u64>>())
            .prop_map(|(request_id, epoch)| Message::Located { request_id, epoch }),
        (id, text(), text(), any::<u32>(), any::<bool>()).prop_map(
            |(request_id, extension, call_id, lease_secs, newcomer)| Message::HostRequest {
                request_id,
                extension,
                call_id,
                lease_secs,
                newcomer,
            }
        ),
        (id, text(), login_info(), token(), any::<u32>()).prop_map(
            |(request_id, call_id, info, token, lease_secs)| Message::HostGranted {
                request_id,
                call_id,
                info,
                token,
                lease_secs,
            }
        ),
        (id, refusal())
            .prop_map(|(request_id, reason)| Message::HostRefused { request_id, reason }),
        (id, text(), text(), token()).prop_map(|(request_id, extension, call_id, token)| {
            Message::Renew {
                request_id,
                extension,
                call_id,
                token,
            }
        }),
        (id, any::<u32>()).prop_map(|(request_id, lease_secs)| Message::RenewAck {
            request_id,
            lease_secs
        }),
        id.prop_map(|request_id| Message::RenewRefused { request_id }),
        (id, text(), text(), token()).prop_map(|(request_id, extension, call_id, token)| {
            Message::Unhost {
                request_id,
                extension,
                call_id,
                token,
            }
        }),
        id.prop_map(|request_id| Message::UnhostAck { request_id }),
        (id, id, token(), text(), text(), text()).prop_map(
            |(request_id, grant, token, extension, call_id, caller)| Message::Redirect {
                request_id,
                grant,
                token,
                extension,
                call_id,
                caller,
            }
        ),
        (id, 300u16..700)
            .prop_map(|(request_id, status)| Message::RedirectAnswer { request_id, status }),
        (id, text(), text()).prop_map(|(request_id, extension, call_id)| {
            Message::RelayRequest {
                request_id,
                extension,
                call_id,
            }
        }),
        (id, token()).prop_map(|(request_id, token)| Message::RelayGranted { request_id, token }),
        any::<u64>().prop_map(|instance| Message::Hello { instance }),
        (id, id, token(), text(), text()).prop_map(
            |(request_id, grant, token, extension, call_id)| Message::Confirm {
                request_id,
                grant,
                token,
                extension,
                call_id,
            }
        ),
        (id, any::<bool>()).prop_map(|(request_id, held)| Message::Confirmed { request_id, held }),
    ]
}

proptest! {
    #[test]
    fn random_messages_round_trip(m in message()) {
        let bytes = enc(&m);
        prop_assert_eq!(Message::decode(&bytes), Ok(m.clone()));
        let mut framed = BytesMut::new();
        m.encode_framed(&mut framed);
        prop_assert_eq!(split_frame(&framed), Ok(Some((&bytes[..], bytes.len() + 4))));
        // Every proper prefix is a truncated frame.
        let cut = bytes.len() / 2;
        prop_assert_eq!(Message::decode(&bytes[..cut]), Err(DecodeError::UnexpectedEnd));
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_canonical(&data);
        let _ = split_frame(&data);
    }

    #[test]
    fn random_bodies_never_panic(
        ty in 0u8..23,
        body in proptest::collection::vec(any::<u8>(), 0..192),
    ) {
        // Past the header, so every type's field decoding is reached.
        let mut data = vec![MAGIC, VERSION, ty];
        data.extend_from_slice(&body);
        check_canonical(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        m in message(),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = enc(&m);
        let i = at % bytes.len();
        bytes[i] = byte;
        check_canonical(&bytes);
    }
}
