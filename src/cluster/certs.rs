//! Cluster CA and per-blade certificates for the inter-blade mutual TLS.
//!
//! [`generate_cluster`] writes `DIR/ca.pem`, `DIR/ca.key` and, per blade,
//! `DIR/ID.pem` and `DIR/ID.key`:
//!
//! - The CA is created when `DIR` has neither `ca.pem` nor `ca.key`, and
//!   reused when it has both, so a cluster can grow one blade at a time.
//! - Existing files are never overwritten: to reissue a blade's certificate,
//!   remove its two files first.
//! - Keys are ECDSA P-256, written with mode 0600 from the start (never
//!   readable by others, not even briefly).
//! - A blade certificate names the blade twice: subject CN and the only DNS
//!   subject alternative name. The DNS name is the one to trust (see
//!   [`blade_id_from_cert_der`]); it is also the TLS server name to dial.
//! - The CA is valid for ten years from its creation, and a blade
//!   certificate until the CA expires: the cluster's credentials rotate
//!   together, by making a new CA.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use super::validate_blade_id;

/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start a day in the past so that a peer whose clock is a
/// little behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Why [`generate_cluster`] wrote nothing, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// No blade id was given.
    #[error("no blade ids given")]
    NoBlades,
    /// A blade id is not acceptable (see [`validate_blade_id`]).
    #[error("blade id `{id}` {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same blade id was given twice (ids compare without case).
    #[error("blade id `{0}` given twice")]
    DuplicateId(String),
    /// A file to write exists already.
    #[error("{}: already exists; remove it (and its pair) to reissue", .0.display())]
    Exists(PathBuf),
    /// The existing CA in the directory cannot be used.
    #[error("{}: {reason}", path.display())]
    BadCa {
        /// The CA file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file or the directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Key or certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Crypto(#[from] rcgen::Error),
}

impl CertError {
    /// True when the input (blade ids, files already in the directory) is at
    /// fault rather than the system: exit status 1 instead of 2.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            CertError::NoBlades
                | CertError::InvalidId { .. }
                | CertError::DuplicateId(_)
                | CertError::Exists(_)
                | CertError::BadCa { .. }
        )
    }
}

/// What [`generate_cluster`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// True when a new CA was made; false when the directory's CA was reused.
    pub ca_created: bool,
    /// The files written, in order.
    pub written: Vec<PathBuf>,
}

/// Path of the CA certificate in `dir`.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// Path of the CA private key in `dir`.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// Path of blade `id`'s certificate in `dir`.
pub fn blade_cert_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.pem"))
}

/// Path of blade `id`'s private key in `dir`.
pub fn blade_key_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.key"))
}

/// Creates `dir` if needed, the cluster CA unless `dir` has one, and a
/// certificate and key for each blade (see the module documentation).
///
/// Everything is checked before anything is written: bad or duplicate ids,
/// files that exist, an unusable CA.
pub fn generate_cluster(dir: &Path, blades: &[String]) -> Result<Generated, CertError> {
    if blades.is_empty() {
        return Err(CertError::NoBlades);
    }
    for (i, id) in blades.iter().enumerate() {
        validate_blade_id(id).map_err(|reason| CertError::InvalidId {
            id: id.clone(),
            reason,
        })?;
        if blades[..i].iter().any(|seen| seen.eq_ignore_ascii_case(id)) {
            return Err(CertError::DuplicateId(id.clone()));
        }
    }
    for id in blades {
        for path in [blade_cert_path(dir, id), blade_key_path(dir, id)] {
            if exists(&path) {
                return Err(CertError::Exists(path));
            }
        }
    }

    let (ca_cert, ca_key) = (ca_cert_path(dir), ca_key_path(dir));
    let now = OffsetDateTime::now_utc();
    let mut written = Vec::new();
    let (issuer, not_after, new_ca) = match (exists(&ca_cert), exists(&ca_key)) {
        (true, true) => {
            let (issuer, not_after) = load_ca(&ca_cert, &ca_key, now)?;
            (issuer, not_after, None)
        }
        (false, false) => {
            let (issuer, pem) = new_ca(now)?;
            (issuer, now + CA_VALIDITY, Some(pem))
        }
        (true, false) => return Err(half_ca(&ca_cert, &ca_key)),
        (false, true) => return Err(half_ca(&ca_key, &ca_cert)),
    };

    create_dir(dir)?;
    let ca_created = new_ca.is_some();
    if let Some(cert_pem) = new_ca {
        write_new(&ca_key, &issuer.key().serialize_pem(), 0o600)?;
        written.push(ca_key);
        write_new(&ca_cert, &cert_pem, 0o644)?;
        written.push(ca_cert);
    }
    for id in blades {
        let (cert_pem, key_pem) = blade_cert(id, &issuer, now, not_after)?;
        let (cert, key) = (blade_cert_path(dir, id), blade_key_path(dir, id));
        write_new(&key, &key_pem, 0o600)?;
        written.push(key);
        write_new(&cert, &cert_pem, 0o644)?;
        written.push(cert);
    }
    Ok(Generated {
        ca_created,
        written,
    })
}

/// The blade id a cluster certificate (DER) was issued for: its single DNS
/// subject alternative name, if that is a valid blade id. `None` for anything
/// else (not a certificate, no or several DNS names, trailing bytes).
///
/// This reads the name only; checking that the certificate chains to the
/// cluster CA is the TLS layer's job.
pub fn blade_id_from_cert_der(der: &[u8]) -> Option<String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??;
    let mut names = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
    let id = names.next()?;
    if names.next().is_some() || validate_blade_id(id).is_err() {
        return None;
    }
    Some(id.to_owned())
}

fn exists(path: &Path) -> bool {
    // A dangling symlink counts: writing through it is refused anyway.
    path.symlink_metadata().is_ok()
}

fn half_ca(present: &Path, missing: &Path) -> CertError {
    CertError::BadCa {
        path: present.to_owned(),
        reason: format!(
            "exists but {} does not; restore it or remove both to make a new CA",
            missing.display()
        ),
    }
}

/// A new self-signed CA: its issuer (owning the key) and certificate PEM.
fn new_ca(now: OffsetDateTime) -> Result<(Issuer<'static, KeyPair>, String), CertError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "sipblade cluster CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "sipblade");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((Issuer::new(params, key), cert.pem()))
}

/// The CA already in the directory, with its expiry, after checking that the
/// key belongs to the certificate and that it is a CA still valid.
fn load_ca(
    cert_path: &Path,
    key_path: &Path,
    now: OffsetDateTime,
) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), CertError> {
    let bad = |path: &Path, reason: &str| CertError::BadCa {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let key_pem = read(key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|_| bad(key_path, "not a PEM private key"))?;
    let cert_pem = read(cert_path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|_| bad(cert_path, "not a PEM certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|_| bad(cert_path, "not a valid X.509 certificate"))?;
    if !cert.is_ca() {
        return Err(bad(cert_path, "not a CA certificate"));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(bad(key_path, "does not match ca.pem"));
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= now {
        return Err(bad(cert_path, "the CA has expired; make a new one"));
    }
    let issuer = Issuer::from_ca_cert_der(&pem.contents.as_slice().into(), key)
        .map_err(|_| bad(cert_path, "cannot sign with this CA"))?;
    Ok((issuer, not_after))
}

/// A blade certificate and key, as PEM.
fn blade_cert(
    id: &str,
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::new(vec![id.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, id);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "sipblade");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every blade both dials and accepts peer connections.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| {
        // A file in the way reads "File exists", which misleads: say
        // what is wrong with it.
        let source = if source.kind() == std::io::ErrorKind::AlreadyExists && !dir.is_dir() {
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "exists and is not a directory",
            )
        } else {
            source
        };
        CertError::Io {
            path: dir.to_owned(),
            source,
        }
    })
}

/// Writes a file that must not exist yet, with `mode` set at creation.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let io_error = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(|err| {
        if err.kind() == io::ErrorKind::AlreadyExists {
            CertError::Exists(path.to_owned())
        } else {
            io_error(err)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn der_of(path: &Path) -> Vec<u8> {
        let text = std::fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
        pem.contents
    }

    #[test]
    fn refuses_bad_input_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        assert!(matches!(
            generate_cluster(&dir, &[]),
            Err(CertError::NoBlades)
        ));
        assert!(matches!(
            generate_cluster(&dir, &ids(&["ok", "ca"])),
            Err(CertError::InvalidId { .. })
        ));
        assert!(matches!(
            generate_cluster(&dir, &ids(&["b1", "B1"])),
            Err(CertError::DuplicateId(_))
        ));
        assert!(!dir.exists());
    }

    #[test]
    fn generates_then_grows() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let first = generate_cluster(&dir, &ids(&["blade-1"])).unwrap();
        assert!(first.ca_created);
        assert_eq!(first.written.len(), 4);
        let ca_before = std::fs::read(ca_cert_path(&dir)).unwrap();

        let second = generate_cluster(&dir, &ids(&["blade-2"])).unwrap();
        assert!(!second.ca_created);
        assert_eq!(
            second.written,
            vec![
                blade_key_path(&dir, "blade-2"),
                blade_cert_path(&dir, "blade-2")
            ]
        );
        assert_eq!(std::fs::read(ca_cert_path(&dir)).unwrap(), ca_before);

        let ca = der_of(&ca_cert_path(&dir));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        for id in ["blade-1", "blade-2"] {
            let der = der_of(&blade_cert_path(&dir, id));
            assert_eq!(blade_id_from_cert_der(&der).as_deref(), Some(id));
            let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
            leaf.verify_signature(Some(ca.public_key())).unwrap();
            assert!(leaf.validity().not_after <= ca.validity().not_after);
        }

        // Reissuing needs the old files gone.
        assert!(matches!(
            generate_cluster(&dir, &ids(&["blade-3", "blade-1"])),
            Err(CertError::Exists(_))
        ));
        assert!(!blade_cert_path(&dir, "blade-3").exists());
    }

    #[test]
    fn refuses_half_or_foreign_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(ca_cert_path(dir), "junk").unwrap();
        let err = generate_cluster(dir, &ids(&["b1"])).unwrap_err();
        assert!(err.to_string().contains("ca.key does not"), "{err}");

        std::fs::write(ca_key_path(dir), "junk").unwrap();
        let err = generate_cluster(dir, &ids(&["b1"])).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");

        // A key that is not the CA's own.
        let other = tempfile::tempdir().unwrap();
        generate_cluster(other.path(), &ids(&["x1"])).unwrap();
        std::fs::copy(ca_cert_path(other.path()), ca_cert_path(dir)).unwrap();
        std::fs::copy(other.path().join("x1.key"), ca_key_path(dir)).unwrap();
        let err = generate_cluster(dir, &ids(&["b1"])).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn blade_id_from_garbage() {
        assert_eq!(blade_id_from_cert_der(b""), None);
        assert_eq!(blade_id_from_cert_der(b"\x30\x03\x02\x01\x00"), None);
    }
}
