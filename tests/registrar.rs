//! The registrar end to end (RFC 3261 §10.3, SPEC §5-6): a real blade on
//! loopback, REGISTERs from simulated phones over real UDP, the outcome
//! read in the responses and in `/status`. Everything runs on
//! 127.0.5.x, an address range of its own.

mod common;

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{TestBlade, Ua, password};
use sipblade::runtime::Options;

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 5, host)
}

fn blade(auth: bool, host: u8) -> TestBlade {
    TestBlade::start_at(2, auth, Options::default(), "", ip(host))
}

/// A phone that moves registers its new address and removes its old one
/// in the same REGISTER (RFC 3261 §10.2.1 allows several contacts): the
/// agent stays logged in, `/status` shows the new contact, and the 200
/// lists that one binding with its expiry.
#[test]
fn a_phone_that_moves_removes_its_old_contact_in_the_same_register() {
    let blade = blade(true, 100);
    let mut old = Ua::new_at(blade.sip, "1001", ip(101));
    assert_eq!(old.register(3600).status(), Some(200));
    assert_eq!(blade.agent("1001")["contact"], old.addr.to_string());

    let mut new = Ua::new_at(blade.sip, "1001", ip(102));
    for contacts in [
        format!(
            "Contact: <{}>, <{}>;expires=0\r\n",
            new.contact_uri(),
            old.contact_uri()
        ),
        format!(
            "Contact: <{}>;expires=0\r\nContact: <{}>;expires=600\r\n",
            old.contact_uri(),
            new.contact_uri()
        ),
    ] {
        let (ok, _) = new.register_as(&contacts, &password("1001"));
        assert_eq!(ok.status(), Some(200), "{contacts}");
        let listed: Vec<String> = ok.contacts().map(|c| c.uri().as_str().to_owned()).collect();
        assert_eq!(listed, [new.contact_uri()], "{contacts}");
        assert!(ok.contacts().all(|c| c.expires().is_some()), "{contacts}");
        assert_eq!(blade.agent("1001")["contact"], new.addr.to_string());
        assert_eq!(blade.agent_state("1001"), "ready");
        // Back to the old address for the second form.
        assert_eq!(old.register(3600).status(), Some(200));
    }

    // Two addresses to keep are still one too many: nothing changes.
    let both = format!(
        "Contact: <{}>\r\nContact: <{}>\r\n",
        old.contact_uri(),
        new.contact_uri()
    );
    let (refused, _) = new.register_as(&both, &password("1001"));
    assert_eq!(refused.status(), Some(400));
    assert_eq!(blade.agent("1001")["contact"], old.addr.to_string());
}

/// RFC 3261 §10.3 step 8: the 200 to a REGISTER carries a Date, the
/// blade's wall clock in GMT (phones without NTP set their clock by it);
/// a logout's 200 too, and `/status` then says `logged_out`.
#[test]
fn the_200_to_a_register_carries_the_date() {
    let blade = blade(false, 110);
    let mut phone = Ua::new_at(blade.sip, "1002", ip(111));
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let ok = phone.register(3600);
    assert_eq!(ok.status(), Some(200));
    let date = ok
        .header_named("Date")
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .expect("a Date header");
    // `Sat, 13 Nov 2010 23:29:00 GMT`: 29 characters, GMT, this year.
    let year = 1970 + before.as_secs() / 31_556_952;
    assert_eq!(date.len(), 29, "{date}");
    assert!(date.ends_with(" GMT"), "{date}");
    assert!(
        date.contains(&format!(" {year} ")) || date.contains(&format!(" {} ", year + 1)),
        "{date}"
    );

    let bye = phone.register(0);
    assert_eq!(bye.status(), Some(200));
    assert!(bye.header_named("Date").is_some());
    assert_eq!(bye.contacts().count(), 0);
    assert_eq!(blade.agent_state("1002"), "logged_out");
}
