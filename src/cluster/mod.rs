//! Inter-blade link: cluster identity and certificates.
//!
//! Each blade proves who it is to its peers with a certificate issued by the
//! cluster CA ([`certs`]); the blade id is the certificate's DNS name.
//! Blades talk in [`codec`] frames; [`hosting`] is the sans-IO hosting
//! protocol (grants, leases, tokens, the directory) those frames carry.

pub mod certs;
pub mod codec;
pub mod hosting;
pub mod link;
pub mod tls;

/// The longest blade id: one DNS label, since the id is the certificate's DNS name.
pub const MAX_BLADE_ID_LEN: usize = 63;

/// Checks that `id` can name a blade: in the config, in file names
/// (`ID.pem`) and as a TLS server name.
///
/// A blade id is 1 to 63 ASCII letters, digits, `-` or `_`, starting with a
/// letter and ending with a letter or digit. That is a SIP token, a safe file
/// name and a DNS label that rustls accepts (an all-digit name would read as
/// an IP address). `ca` (any case) is reserved for the CA files. Compare ids
/// without regard to case, as DNS does.
///
/// Returns the reason when the id is refused.
pub fn validate_blade_id(id: &str) -> Result<(), &'static str> {
    let bytes = id.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err("must not be empty");
    };
    if bytes.len() > MAX_BLADE_ID_LEN {
        return Err("must be at most 63 characters");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return Err("may contain only ASCII letters, digits, `-` and `_`");
    }
    if !first.is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    if !last.is_ascii_alphanumeric() {
        return Err("must end with a letter or digit");
    }
    if id.eq_ignore_ascii_case("ca") {
        return Err("is reserved for the cluster CA files");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_blade_id;

    #[test]
    fn blade_ids() {
        for good in ["blade-1", "b", "B_2", "x9", &"a".repeat(63)] {
            assert_eq!(validate_blade_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "1blade",
            "-b",
            "b-",
            "b_",
            "a b",
            "a.b",
            "a/b",
            "ca",
            "CA",
            "bladé",
            &"a".repeat(64),
        ] {
            assert!(validate_blade_id(bad).is_err(), "{bad:?}");
        }
    }
}
