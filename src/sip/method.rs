//! Request methods. Methods are case-sensitive (RFC 3261 §7.1): `invite`
//! and `RE%47ISTER` are extension methods, not INVITE or REGISTER.

use std::fmt;

/// A SIP request method; unknown tokens are [`Method::Other`] and keep their
/// text in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Message,
    Refer,
    Notify,
    Subscribe,
    Publish,
    /// An extension method; its text is in the message.
    Other,
}

impl Method {
    /// Classifies a method token (case-sensitive).
    pub fn from_bytes(s: &[u8]) -> Method {
        match s {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"MESSAGE" => Method::Message,
            b"REFER" => Method::Refer,
            b"NOTIFY" => Method::Notify,
            b"SUBSCRIBE" => Method::Subscribe,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    /// The method's name; `""` for [`Method::Other`].
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Message => "MESSAGE",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Publish => "PUBLISH",
            Method::Other => "",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
