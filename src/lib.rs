//! sipblade: a thread-per-core SIP front end for cloud call centres.
//!
//! The crate is layered; each layer is a folder under `src/`:
//!
//! | layer | job | I/O? |
//! | --- | --- | --- |
//! | [`sip`] | wire format: zero-copy parse, validate, edit, emit; stream framing | no |
//! | [`transaction`] | RFC 3261 client and server transactions and their timers | no |
//! | [`registrar`] | REGISTER, digest authentication, the agents' location store | no |
//! | [`proxy`] | one core's stateful proxy: routing, sessions, agent states | no |
//! | [`cluster`] | inter-blade link: certificates, the hosting protocol, the QUIC link state | certs only |
//! | [`config`] | blade configuration and agent provisioning (TOML) | reads files |
//! | [`runtime`] | glommio executors, sockets, the core mesh | yes |
//! | [`admin`] | `/status` and `/metrics` off the SIP cores: an accepting thread and a thread per connection | yes |
//! | [`cli`] | the `sipblade` command line | yes |
//!
//! One INVITE's path: a core's UDP socket receives it ([`runtime`]), the
//! parser validates it in one pass ([`sip::Message::parse`]), the runtime
//! hands it to the core owning the called agent, whose [`proxy::Proxy`]
//! opens a server and a client transaction ([`transaction`]), checks the
//! caller and the callee ([`registrar`]), and forwards it with a splice
//! edit ([`sip::Message::forward`]).
//!
//! The sans-IO layers take inputs (bytes, time) and return outputs; only the
//! runtime, the admin port and the command line touch sockets, and only
//! [`config`], the certificates of [`cluster`] and the command line touch
//! files.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod proxy;
pub mod registrar;
pub mod runtime;
pub mod sip;
pub mod transaction;
