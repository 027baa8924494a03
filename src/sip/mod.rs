//! The SIP wire format (RFC 3261 §7, §20, §25): zero-copy parsing and
//! validation, typed header views, stream framing and forwarding edits.
//! No I/O and no clock: bytes in, views and bytes out.
//!
//! ```
//! use sipblade::sip::{Message, Method};
//! let raw = b"OPTIONS sip:cc.example SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\n\
//!     From: <sip:1001@cc.example>;tag=a\r\nTo: <sip:cc.example>\r\n\
//!     Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
//! let msg = Message::parse(bytes::Bytes::from_static(raw)).unwrap();
//! assert_eq!(msg.method(), Some(Method::Options));
//! assert_eq!(msg.top_via().branch(), Some("z9hG4bK1"));
//! ```

mod chars;
pub mod edit;
pub mod error;
pub mod framing;
pub mod header;
mod message;
mod method;
mod name;
mod scan;
mod simd;
mod span;
mod stamp;
mod transport;
pub mod uri;

pub use edit::{EditError, Forward};
pub use error::{ErrorKind, ParseError};
pub use header::auth::{AuthValue, DigestParams};
pub use header::join::{Join, Replaces};
pub use header::name_addr::{NameAddr, NameAddrSpans};
pub use header::simple::CSeq;
pub use header::via::{Via, ViaSpans};
pub use message::{Header, HeaderRef, Message, StartLine};
pub use method::Method;
pub use name::HeaderName;
pub use span::Span;
pub use transport::{ConnId, Peer, Transport};
pub use uri::{HostKind, Scheme, Uri};
