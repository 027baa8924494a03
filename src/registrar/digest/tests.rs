use super::*;

const REALM: &str = "cc.example";
const T0: Duration = Duration::from_secs(1_000);

fn manager() -> NonceManager {
    NonceManager::from_secret([7; 32])
}

/// Credentials as a well-behaved client would send them.
fn answer<'a>(
    nonce: &'a str,
    alg: Option<&'a str>,
    nc: Option<&'a str>,
    password: &str,
) -> (Credentials<'a>, String) {
    let creds = Credentials {
        username: "1001",
        realm: REALM,
        nonce,
        uri: "sip:cc.example",
        response: "",
        algorithm: alg,
        cnonce: Some("c0ffee"),
        qop: nc.map(|_| "auth"),
        nc,
        opaque: None,
    };
    let response = expected_response("REGISTER", &creds, Secret::Password(password)).unwrap();
    (creds, response)
}

fn verify_as(
    m: &mut NonceManager,
    now: Duration,
    nonce: &str,
    alg: Option<&str>,
    nc: Option<&str>,
    password: &str,
) -> Result<(), AuthError> {
    let (creds, response) = answer(nonce, alg, nc, password);
    let creds = Credentials {
        response: &response,
        ..creds
    };
    m.verify(now, "REGISTER", &creds, Secret::Password("s3cret"), REALM)
}

#[test]
fn rfc2617_md5_vector() {
    let creds = Credentials {
        username: "Mufasa",
        realm: "testrealm@host.com",
        nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri: "/dir/index.html",
        qop: Some("auth"),
        nc: Some("00000001"),
        cnonce: Some("0a4f113b"),
        ..Credentials::default()
    };
    let got = expected_response("GET", &creds, Secret::Password("Circle Of Life")).unwrap();
    assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    // The same through a provisioned HA1.
    let ha1 = md5_ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
    let got = expected_response("GET", &creds, Secret::md5_ha1(&ha1)).unwrap();
    assert_eq!(got, "6629fae49393a05397450978507c4ef1");
}

fn rfc7616_creds(alg: &'static str) -> Credentials<'static> {
    Credentials {
        username: "Mufasa",
        realm: "http-auth@example.org",
        nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        uri: "/dir/index.html",
        algorithm: Some(alg),
        qop: Some("auth"),
        nc: Some("00000001"),
        cnonce: Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"),
        opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"),
        ..Credentials::default()
    }
}

#[test]
fn rfc7616_vectors() {
    let pw = Secret::Password("Circle of Life");
    let sha = expected_response("GET", &rfc7616_creds("SHA-256"), pw).unwrap();
    assert_eq!(
        sha,
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
    let md5 = expected_response("GET", &rfc7616_creds("MD5"), pw).unwrap();
    assert_eq!(md5, "8ca523f5e9506fed4657c9700eebdbec");
    // The same through provisioned HA1s.
    let md5_hex = md5_ha1("Mufasa", "http-auth@example.org", "Circle of Life");
    let sha_hex = sha256_ha1("Mufasa", "http-auth@example.org", "Circle of Life");
    let both = Secret::Ha1 {
        md5: Some(&md5_hex),
        sha256: Some(&sha_hex),
    };
    assert_eq!(
        expected_response("GET", &rfc7616_creds("SHA-256"), both).unwrap(),
        sha
    );
    assert_eq!(
        expected_response("GET", &rfc7616_creds("MD5"), both).unwrap(),
        md5
    );
}

#[test]
fn algorithm_tokens() {
    assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
    assert_eq!(Algorithm::parse("md5-SESS"), Some(Algorithm::Md5Sess));
    assert_eq!(Algorithm::parse("SHA-512-256"), None);
    for a in [
        Algorithm::Md5,
        Algorithm::Md5Sess,
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
    ] {
        assert_eq!(Algorithm::parse(a.as_str()), Some(a));
    }
}

#[test]
fn challenge_rendering() {
    let mut m = manager();
    let cs = m.challenges(T0, REALM, &Algorithm::OFFERED, false);
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].nonce, cs[1].nonce);
    assert_eq!(
        cs[0].to_string(),
        format!(
            "Digest realm=\"cc.example\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            cs[0].nonce
        )
    );
    assert!(cs[1].to_string().contains("algorithm=SHA-256,"));
    let c = m.challenge(T0, "a\"b\\c\r\n", Algorithm::Md5, true);
    let s = c.to_string();
    assert!(s.starts_with("Digest realm=\"a\\\"b\\\\c\", nonce=\""));
    assert!(s.ends_with(", stale=true"));
    assert_ne!(c.nonce, cs[0].nonce);
}

#[test]
fn good_credentials_both_algorithms() {
    let mut m = manager();
    for alg in [
        None,
        Some("MD5"),
        Some("SHA-256"),
        Some("md5-sess"),
        Some("SHA-256-sess"),
    ] {
        let n = m.issue_nonce(T0, REALM);
        assert_eq!(
            verify_as(&mut m, T0, &n, alg, Some("00000001"), "s3cret"),
            Ok(())
        );
    }
    // No qop (RFC 2069 style) works too.
    let n = m.issue_nonce(T0, REALM);
    assert_eq!(
        verify_as(&mut m, T0, &n, Some("SHA-256"), None, "s3cret"),
        Ok(())
    );
}

#[test]
fn uppercase_response_hex_accepted() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    let (creds, response) = answer(&n, None, Some("00000001"), "s3cret");
    let upper = response.to_ascii_uppercase();
    let creds = Credentials {
        response: &upper,
        ..creds
    };
    assert_eq!(
        m.verify(T0, "REGISTER", &creds, Secret::Password("s3cret"), REALM),
        Ok(())
    );
}

#[test]
fn wrong_password() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    let r = verify_as(&mut m, T0, &n, Some("SHA-256"), Some("00000001"), "guess");
    assert_eq!(r, Err(AuthError::WrongPassword));
    assert!(!AuthError::WrongPassword.wants_stale_challenge());
    // A failed attempt must not burn the count for the real client.
    assert_eq!(m.tracked_nonces(), 0);
    let r = verify_as(&mut m, T0, &n, Some("SHA-256"), Some("00000001"), "s3cret");
    assert_eq!(r, Ok(()));
}

#[test]
fn expired_nonce_is_stale_only_with_right_password() {
    let mut m = manager().with_lifetime(Duration::from_secs(30));
    let n = m.issue_nonce(T0, REALM);
    let later = T0 + Duration::from_secs(31);
    let r = verify_as(&mut m, later, &n, None, Some("00000001"), "s3cret");
    assert_eq!(r, Err(AuthError::StaleNonce));
    assert!(r.unwrap_err().wants_stale_challenge());
    let r = verify_as(&mut m, later, &n, None, Some("00000001"), "guess");
    assert_eq!(r, Err(AuthError::WrongPassword));
    // Exactly at the lifetime is still fresh.
    let n = m.issue_nonce(T0, REALM);
    let edge = T0 + Duration::from_secs(30);
    assert_eq!(
        verify_as(&mut m, edge, &n, None, Some("00000001"), "s3cret"),
        Ok(())
    );
    // A nonce "from the future" (clock went back) is stale too.
    let n = m.issue_nonce(later, REALM);
    let r = verify_as(&mut m, T0, &n, None, Some("00000001"), "s3cret");
    assert_eq!(r, Err(AuthError::StaleNonce));
}

#[test]
fn forged_and_foreign_nonces_are_invalid() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    // Flip one tag digit.
    let mut forged = n.clone().into_bytes();
    forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    // Move the timestamp forward without the key.
    let moved = format!("{:016x}{}", u64::MAX / 2, &n[16..]);
    let other_key = NonceManager::from_secret([8; 32]).issue_nonce(T0, REALM);
    let other_realm = m.issue_nonce(T0, "other.example");
    for bad in [
        forged,
        moved,
        other_key,
        other_realm,
        "abc".into(),
        "zz".repeat(32),
    ] {
        let r = verify_as(&mut m, T0, &bad, None, Some("00000001"), "s3cret");
        assert_eq!(r, Err(AuthError::InvalidNonce), "{bad}");
    }
}

#[test]
fn a_nonce_is_counted_only_by_its_issuer() {
    let mut issuer = manager();
    let mut other = NonceManager::from_secret([7; 32]).with_issuer(1);
    let nonce = issuer.issue_nonce(T0, REALM);
    let (c1, r1) = answer(&nonce, None, Some("00000001"), "s3cret");
    let good = Credentials {
        response: &r1,
        ..c1
    };
    assert_eq!(
        other.verify(T0, "REGISTER", &good, Secret::Password("s3cret"), REALM),
        Err(AuthError::StaleNonce),
        "another core re-challenges"
    );
    let wrong = Credentials {
        response: "00000000000000000000000000000000",
        ..c1
    };
    assert_eq!(
        other.verify(T0, "REGISTER", &wrong, Secret::Password("s3cret"), REALM),
        Err(AuthError::WrongPassword),
        "a wrong password is told as such first"
    );
    assert_eq!(
        issuer.verify(T0, "REGISTER", &good, Secret::Password("s3cret"), REALM),
        Ok(())
    );
}

#[test]
fn nonce_count_must_increase() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    let ok = |m: &mut NonceManager, nc| verify_as(m, T0, &n, None, Some(nc), "s3cret");
    assert_eq!(ok(&mut m, "00000001"), Ok(()));
    assert_eq!(ok(&mut m, "00000001"), Err(AuthError::Replay));
    assert_eq!(ok(&mut m, "00000002"), Ok(()));
    // Gaps are fine (lost requests); going back is not.
    assert_eq!(ok(&mut m, "0000000A"), Ok(()));
    assert_eq!(ok(&mut m, "00000005"), Err(AuthError::Replay));
    assert_eq!(ok(&mut m, "0000000b"), Ok(()));
    assert_eq!(m.tracked_nonces(), 1);
}

#[test]
fn no_qop_nonce_is_single_use_by_default() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    assert_eq!(verify_as(&mut m, T0, &n, None, None, "s3cret"), Ok(()));
    let r = verify_as(&mut m, T0, &n, None, None, "s3cret");
    assert_eq!(r, Err(AuthError::StaleNonce));

    let mut m = manager().with_single_use_without_qop(false);
    let n = m.issue_nonce(T0, REALM);
    for _ in 0..3 {
        assert_eq!(verify_as(&mut m, T0, &n, None, None, "s3cret"), Ok(()));
    }
    assert_eq!(m.tracked_nonces(), 0);
}

#[test]
fn table_stays_bounded_and_evicted_nonces_are_not_replayable() {
    let mut m = manager().with_max_tracked(100);
    let mut nonces = Vec::new();
    for i in 0..1_000u64 {
        let now = T0 + Duration::from_millis(i);
        let n = m.issue_nonce(now, REALM);
        assert_eq!(
            verify_as(&mut m, now, &n, None, Some("00000001"), "s3cret"),
            Ok(())
        );
        assert!(m.tracked_nonces() <= 100);
        nonces.push(n);
    }
    assert_eq!(m.tracked_nonces(), 100);
    // Evicted: history lost, so refused (stale → client re-fetches).
    let now = T0 + Duration::from_secs(1);
    let r = verify_as(&mut m, now, &nonces[0], None, Some("00000002"), "s3cret");
    assert_eq!(r, Err(AuthError::StaleNonce));
    // Still tracked: normal rules.
    let r = verify_as(&mut m, now, &nonces[999], None, Some("00000001"), "s3cret");
    assert_eq!(r, Err(AuthError::Replay));
    // Once everything expires, the next use prunes the table.
    let later = T0 + Duration::from_secs(400);
    let n = m.issue_nonce(later, REALM);
    assert_eq!(
        verify_as(&mut m, later, &n, None, Some("00000001"), "s3cret"),
        Ok(())
    );
    assert_eq!(m.tracked_nonces(), 1);
}

#[test]
fn realm_mismatch() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    let (creds, response) = answer(&n, None, Some("00000001"), "s3cret");
    let creds = Credentials {
        response: &response,
        realm: "evil.example",
        ..creds
    };
    let r = m.verify(T0, "REGISTER", &creds, Secret::Password("s3cret"), REALM);
    assert_eq!(r, Err(AuthError::RealmMismatch));
}

/// Verifies an answer with `alg` computed from the password `s3cret`
/// against `secret`.
fn verify_against(
    m: &mut NonceManager,
    alg: Option<&str>,
    secret: Secret<'_>,
) -> Result<(), AuthError> {
    let n = m.issue_nonce(T0, REALM);
    let (creds, response) = answer(&n, alg, Some("00000001"), "s3cret");
    let creds = Credentials {
        response: &response,
        ..creds
    };
    m.verify(T0, "REGISTER", &creds, secret, REALM)
}

#[test]
fn provisioned_ha1() {
    let mut m = manager();
    let ha1 = md5_ha1("1001", REALM, "s3cret").to_ascii_uppercase();
    let secret = Secret::md5_ha1(&ha1);
    assert_eq!(secret.algorithms(), &[Algorithm::Md5]);
    for (alg, want) in [
        (Some("MD5"), Ok(())),
        (Some("MD5-sess"), Ok(())),
        (Some("SHA-256"), Err(AuthError::AlgorithmUnavailable)),
        (Some("SHA-256-sess"), Err(AuthError::AlgorithmUnavailable)),
    ] {
        assert_eq!(verify_against(&mut m, alg, secret), want, "{alg:?}");
    }
    let r = verify_against(&mut m, None, Secret::md5_ha1("not-hex"));
    assert_eq!(r, Err(AuthError::BadSecret));
}

/// With the SHA-256 HA1 beside the MD5 one, every algorithm a
/// password allows is offered and verified; with it alone, SHA-256
/// (and SHA-256-sess) only.
#[test]
fn provisioned_sha256_ha1() {
    let mut m = manager();
    let md5 = md5_ha1("1001", REALM, "s3cret");
    let sha = sha256_ha1("1001", REALM, "s3cret").to_ascii_uppercase();
    assert_eq!(sha.len(), 64);
    let both = Secret::Ha1 {
        md5: Some(&md5),
        sha256: Some(&sha),
    };
    assert_eq!(both.algorithms(), &Algorithm::OFFERED);
    let alone = Secret::Ha1 {
        md5: None,
        sha256: Some(&sha),
    };
    assert_eq!(alone.algorithms(), &[Algorithm::Sha256]);
    for alg in [
        None,
        Some("MD5"),
        Some("MD5-sess"),
        Some("SHA-256"),
        Some("sha-256-sess"),
    ] {
        assert_eq!(verify_against(&mut m, alg, both), Ok(()), "{alg:?}");
        let sha = alg.is_some_and(|a| a.to_ascii_uppercase().starts_with("SHA"));
        let want = if sha {
            Ok(())
        } else {
            Err(AuthError::AlgorithmUnavailable)
        };
        assert_eq!(verify_against(&mut m, alg, alone), want, "{alg:?}");
    }
    // A wrong password is wrong with either hash.
    let other = sha256_ha1("1001", REALM, "guess");
    let wrong = Secret::Ha1 {
        md5: Some(&md5),
        sha256: Some(&other),
    };
    let r = verify_against(&mut m, Some("SHA-256"), wrong);
    assert_eq!(r, Err(AuthError::WrongPassword));
    assert_eq!(verify_against(&mut m, Some("MD5"), wrong), Ok(()));
    // An MD5-length value where SHA-256 is expected is refused as a
    // bad secret, not compared.
    let short = Secret::Ha1 {
        md5: None,
        sha256: Some(&md5),
    };
    let r = verify_against(&mut m, Some("SHA-256"), short);
    assert_eq!(r, Err(AuthError::BadSecret));
    // No HA1 at all verifies nothing, but is offered like anyone.
    let none = Secret::Ha1 {
        md5: None,
        sha256: None,
    };
    assert_eq!(none.algorithms(), &Algorithm::OFFERED);
    let r = verify_against(&mut m, Some("MD5"), none);
    assert_eq!(r, Err(AuthError::AlgorithmUnavailable));
}

#[test]
fn malformed_parameters() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    let (good, response) = answer(&n, None, Some("00000001"), "s3cret");
    let good = Credentials {
        response: &response,
        ..good
    };
    let cases = [
        (
            Credentials {
                username: "",
                ..good
            },
            AuthError::Malformed("username"),
        ),
        (Credentials { uri: "", ..good }, AuthError::Malformed("uri")),
        (
            Credentials {
                response: "",
                ..good
            },
            AuthError::Malformed("response"),
        ),
        (
            Credentials {
                response: "abc",
                ..good
            },
            AuthError::Malformed("response"),
        ),
        (Credentials { nc: None, ..good }, AuthError::Malformed("nc")),
        (
            Credentials {
                nc: Some("1"),
                ..good
            },
            AuthError::Malformed("nc"),
        ),
        (
            Credentials {
                nc: Some("0000000g"),
                ..good
            },
            AuthError::Malformed("nc"),
        ),
        (
            Credentials {
                nc: Some("00000000"),
                ..good
            },
            AuthError::Malformed("nc"),
        ),
        (
            Credentials {
                nc: Some("+0000001"),
                ..good
            },
            AuthError::Malformed("nc"),
        ),
        (
            Credentials {
                cnonce: None,
                ..good
            },
            AuthError::Malformed("cnonce"),
        ),
        (
            Credentials {
                qop: Some("auth-int"),
                ..good
            },
            AuthError::Malformed("qop"),
        ),
        (
            Credentials {
                algorithm: Some("SHA-512-256"),
                ..good
            },
            AuthError::UnknownAlgorithm,
        ),
        (
            Credentials {
                algorithm: Some("MD5-sess"),
                qop: None,
                cnonce: None,
                ..good
            },
            AuthError::Malformed("cnonce"),
        ),
    ];
    for (creds, want) in cases {
        let r = m.verify(T0, "REGISTER", &creds, Secret::Password("s3cret"), REALM);
        assert_eq!(r, Err(want), "{creds:?}");
    }
    // The good one still works: nothing above consumed the count.
    let r = m.verify(T0, "REGISTER", &good, Secret::Password("s3cret"), REALM);
    assert_eq!(r, Ok(()));
}

#[test]
fn odd_strings_never_panic() {
    let mut m = manager();
    let n = m.issue_nonce(T0, REALM);
    let odd = [
        "",
        "\0",
        "é",
        "\u{1F600}",
        "\"",
        "\\",
        "ffffffff",
        "00000000",
        n.as_str(),
        &n[..63],
    ];
    let long = "é".repeat(32); // 64 bytes, multibyte at every boundary
    let odd: Vec<&str> = odd.into_iter().chain([long.as_str()]).collect();
    for &a in &odd {
        for &b in &odd {
            let creds = Credentials {
                username: a,
                realm: REALM,
                nonce: b,
                uri: a,
                response: b,
                algorithm: Some(a),
                cnonce: Some(b),
                qop: Some("auth"),
                nc: Some(a),
                opaque: Some(b),
            };
            let ha1 = Secret::Ha1 {
                md5: Some(b),
                sha256: Some(b),
            };
            let _ = m.verify(T0, a, &creds, ha1, REALM);
            let _ = m.verify(T0, b, &creds, Secret::Password(a), REALM);
            let _ = expected_response(a, &creds, Secret::Password(b));
        }
    }
    let _ = verify_as(&mut m, Duration::MAX, &n, None, Some("ffffffff"), "s3cret");
    let _ = m
        .challenge(Duration::MAX, "é\u{7f}", Algorithm::Sha256, true)
        .to_string();
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn opt() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(any::<String>())
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            strs in proptest::collection::vec(any::<String>(), 6),
            opts in proptest::collection::vec(opt(), 5),
            now_ms in any::<u64>(),
            use_ha1 in any::<bool>(),
        ) {
            let mut m = manager();
            let creds = Credentials {
                username: &strs[0],
                realm: &strs[1],
                nonce: &strs[2],
                uri: &strs[3],
                response: &strs[4],
                algorithm: opts[0].as_deref(),
                cnonce: opts[1].as_deref(),
                qop: opts[2].as_deref(),
                nc: opts[3].as_deref(),
                opaque: opts[4].as_deref(),
            };
            let secret = if use_ha1 {
                Secret::Ha1 { md5: Some(&strs[5]), sha256: Some(&strs[5]) }
            } else {
                Secret::Password(&strs[5])
            };
            let now = Duration::from_millis(now_ms);
            let r = m.verify(now, &strs[0], &creds, secret, &strs[1]);
            // Random nonces are never ours.
            prop_assert!(r.is_err());
            let _ = expected_response(&strs[3], &creds, secret);
            let _ = m.challenge(now, &strs[1], Algorithm::Md5, true).to_string();
        }

        #[test]
        fn right_answer_always_accepted_once(
            user in "[a-z0-9]{1,12}",
            pw in any::<String>(),
            sha in any::<bool>(),
            nc in 1u32..,
        ) {
            let mut m = manager();
            let alg = if sha { "SHA-256" } else { "MD5" };
            let n = m.issue_nonce(T0, REALM);
            let nc = format!("{nc:08x}");
            let mut creds = Credentials {
                username: &user,
                realm: REALM,
                nonce: &n,
                uri: "sip:cc.example",
                algorithm: Some(alg),
                cnonce: Some("xyz"),
                qop: Some("auth"),
                nc: Some(&nc),
                ..Credentials::default()
            };
            let response = expected_response("INVITE", &creds, Secret::Password(&pw)).unwrap();
            creds.response = &response;
            prop_assert_eq!(m.verify(T0, "INVITE", &creds, Secret::Password(&pw), REALM), Ok(()));
            prop_assert_eq!(
                m.verify(T0, "INVITE", &creds, Secret::Password(&pw), REALM),
                Err(AuthError::Replay)
            );
        }
    }
}
