//! sipblade: a thread-per-core SIP front end for cloud call centres.
//!
//! The crate is layered; each layer is a folder under `src/`:
//!
//! | layer | job | I/O? |
//! | --- | --- | --- |
//! | [`sip`] | wire format: zero-copy parse, validate, edit, emit; stream framing | no |
//! | [`config`] | blade configuration and agent provisioning (TOML) | reads files |
//! | [`registrar`] | REGISTER semantics, digest authentication | no |
//! | [`cluster`] | inter-blade link: certificates, hosting protocol | certs only |
//! | [`cli`] | the `sipblade` command line | yes |
//!
//! The sans-IO layers take inputs (bytes, time) and return outputs; only the
//! runtime and the command line touch sockets and files.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod proxy;
pub mod registrar;
pub mod runtime;
pub mod sip;
pub mod transaction;
