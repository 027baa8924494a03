//! `sipblade certs` (SPEC §3), run as the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use sipblade::cluster::certs::blade_id_from_cert_der;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{X509Certificate, parse_x509_certificate};

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap()
}

fn certs_in(dir: &Path, blades: &str) -> Output {
    // `--blades=` so that an id like `-b` reaches the id check, not clap.
    certs(&[
        "--dir",
        dir.to_str().unwrap(),
        &format!("--blades={blades}"),
    ])
}

fn der(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    assert_eq!(pem.label, "CERTIFICATE");
    pem.contents
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn dns_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect()
}

#[test]
fn creates_a_ca_and_blade_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/certs");
    let out = certs_in(&dir, "blade-1,blade-2");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for file in [
        "ca.pem",
        "ca.key",
        "blade-1.pem",
        "blade-1.key",
        "blade-2.pem",
        "blade-2.key",
    ] {
        let path = dir.join(file);
        assert!(
            stdout.contains(&format!("wrote {}", path.display())),
            "{stdout}"
        );
        if file.ends_with(".key") {
            assert_eq!(mode(&path), 0o600, "{file}");
            let key = std::fs::read_to_string(&path).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{file}");
        }
    }

    let ca_der = der(&dir.join("ca.pem"));
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    ca.verify_signature(None).unwrap();
    for id in ["blade-1", "blade-2"] {
        let leaf_der = der(&dir.join(format!("{id}.pem")));
        let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        let cn = leaf.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), id);
        assert_eq!(dns_names(&leaf), [id]);
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(blade_id_from_cert_der(&leaf_der).as_deref(), Some(id));
    }
    // The CA is no blade.
    assert_eq!(blade_id_from_cert_der(&ca_der), None);
}

#[test]
fn grows_a_cluster_with_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_eq!(certs_in(dir, "blade-1").status.code(), Some(0));
    let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();

    let out = certs_in(dir, "blade-3");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("using existing CA"), "{stdout}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
    let ca_der = der(&dir.join("ca.pem"));
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    let leaf_der = der(&dir.join("blade-3.pem"));
    let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();

    // An existing blade is not overwritten.
    let key = std::fs::read(dir.join("blade-1.key")).unwrap();
    let out = certs_in(dir, "blade-1");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("sipblade: certs: "), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("blade-1.key")).unwrap(), key);
}

#[test]
fn bad_blade_ids_exit_1_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    for blades in ["ca", "-b", "1b", "a b", "a.b", "../x", "b1,b1", "b1,B1", ""] {
        let out = certs_in(&dir, blades);
        assert_eq!(out.status.code(), Some(1), "{blades:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("sipblade: certs: "), "{stderr}");
        assert!(!dir.exists(), "{blades:?}");
    }
}

#[test]
fn io_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = certs_in(&file.join("certs"), "blade-1");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("sipblade: certs: ")
    );

    // --blades is required.
    let out = certs(&["--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_broken_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("ca.pem"), "garbage").unwrap();
    std::fs::write(dir.join("ca.key"), "garbage").unwrap();
    let out = certs_in(dir, "blade-1");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!dir.join("blade-1.pem").exists());
}
