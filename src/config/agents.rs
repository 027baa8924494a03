//! Agent provisioning: the `[[agent]]` file shared by all blades (SPEC §4).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::{ConfigError, Source, read};

/// What an agent may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// An ordinary call-centre agent (the default when `kind` is omitted).
    #[default]
    Agent,
    /// A supervisor (may monitor other agents' calls).
    Supervisor,
}

impl AgentKind {
    /// The name used in the provisioning file and in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Agent => "agent",
            AgentKind::Supervisor => "supervisor",
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The secret an agent authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The plain password: allows both MD5 and SHA-256 digests.
    Password(String),
    /// The HA1s of RFC 7616 §3.4.2, H(`extension:domain:password`) as
    /// lowercase hex, at least one of them (the file's check sees to it):
    /// each allows the digests of its own hash (and its `-sess` variant)
    /// only.
    Ha1 {
        /// MD5, 32 hex digits (`ha1`).
        md5: Option<String>,
        /// SHA-256, 64 hex digits (`ha1_sha256`).
        sha256: Option<String>,
    },
}

impl Credential {
    /// An MD5 HA1 alone (`ha1 = "..."`).
    pub fn md5_ha1(hex: impl Into<String>) -> Self {
        Credential::Ha1 {
            md5: Some(hex.into()),
            sha256: None,
        }
    }
}

impl fmt::Debug for Credential {
    // All are password equivalents: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = |h: &Option<String>| if h.is_some() { "Some(..)" } else { "None" };
        match self {
            Credential::Password(_) => f.write_str("Password(..)"),
            Credential::Ha1 { md5, sha256 } => write!(
                f,
                "Ha1 {{ md5: {}, sha256: {} }}",
                given(md5),
                given(sha256)
            ),
        }
    }
}

/// One provisioned agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Badge number: the login id.
    pub badge: String,
    /// Telephone number: the SIP user part, unique in the cluster.
    pub extension: String,
    /// Agent or supervisor.
    pub kind: AgentKind,
    /// Password or HA1s.
    pub credential: Credential,
}

impl Agent {
    /// A stand-in for an extension nobody has, to challenge as an agent
    /// is challenged: a request then answers as a wrong password would,
    /// and does not tell which extensions exist. Whatever its credentials
    /// prove, the caller is refused (403) after.
    pub fn nobody(extension: &str) -> Agent {
        Agent {
            badge: String::new(),
            extension: extension.to_owned(),
            kind: AgentKind::Agent,
            credential: Credential::Password(String::new()),
        }
    }
}

/// The provisioned agents, checked: badges and extensions are unique, each
/// extension is a valid SIP user part, each agent has exactly one credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agents {
    list: Vec<Agent>,
}

impl Agents {
    /// Reads and checks a provisioning file.
    pub fn load(path: &Path) -> Result<Agents, ConfigError> {
        let text = read(path)?;
        Agents::from_toml(&text, path)
    }

    /// Parses and checks provisioning text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Agents, ConfigError> {
        let src = Source { path, text };
        let raw: RawFile = src.parse()?;
        let mut list: Vec<Agent> = Vec::with_capacity(raw.agent.len());
        // Lines of earlier entries, for "first on line N" in duplicate errors.
        let mut lines = Vec::with_capacity(raw.agent.len());
        for entry in raw.agent {
            let agent = entry.check(&src)?;
            if let Some(i) = list.iter().position(|a| a.badge == agent.badge) {
                return Err(duplicate(&src, &entry.badge, "badge", lines[i]));
            }
            if let Some(i) = list.iter().position(|a| a.extension == agent.extension) {
                return Err(duplicate(&src, &entry.extension, "extension", lines[i]));
            }
            lines.push(src.line_of(entry.badge.span().start));
            list.push(agent);
        }
        Ok(Agents { list })
    }

    /// All agents, in file order.
    pub fn as_slice(&self) -> &[Agent] {
        &self.list
    }

    /// Iterates over the agents in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Agent> {
        self.list.iter()
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when no agent is provisioned.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The agent with this extension (a linear scan: index it for hot paths).
    pub fn by_extension(&self, extension: &str) -> Option<&Agent> {
        self.list.iter().find(|a| a.extension == extension)
    }

    /// The agent with this badge (a linear scan: index it for hot paths).
    pub fn by_badge(&self, badge: &str) -> Option<&Agent> {
        self.list.iter().find(|a| a.badge == badge)
    }
}

impl<'a> IntoIterator for &'a Agents {
    type Item = &'a Agent;
    type IntoIter = std::slice::Iter<'a, Agent>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// True for a SIP token character (RFC 3261 §25.1).
pub(crate) fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// True for a character allowed unescaped both in a SIP user part and a
/// token: an extension must be usable in `sip:EXT@domain` as it is.
fn is_extension_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'+".contains(c)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    agent: Vec<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    badge: Spanned<String>,
    extension: Spanned<String>,
    #[serde(default)]
    kind: AgentKind,
    password: Option<Spanned<String>>,
    ha1: Option<Spanned<String>>,
    ha1_sha256: Option<Spanned<String>>,
}

impl RawAgent {
    fn check(&self, src: &Source<'_>) -> Result<Agent, ConfigError> {
        let badge = self.badge.get_ref();
        if badge.is_empty() || !badge.chars().all(is_token_char) {
            return Err(src.at(
                self.badge.span(),
                format!(
                    "badge `{badge}` must be a non-empty SIP token (letters, digits, -.!%*_+`'~)"
                ),
            ));
        }
        let extension = self.extension.get_ref();
        if extension.is_empty() || !extension.chars().all(is_extension_char) {
            return Err(src.at(
                self.extension.span(),
                format!(
                    "extension `{extension}` must be a non-empty SIP user part (letters, digits, -_.!~*'+)"
                ),
            ));
        }
        let credential = match &self.password {
            Some(password) => {
                // A password with an HA1 would be two secrets that may
                // disagree: which one logs in would depend on the algorithm.
                let ha1s = [("ha1", &self.ha1), ("ha1_sha256", &self.ha1_sha256)];
                if let Some((field, given)) = ha1s
                    .into_iter()
                    .find_map(|(field, given)| Some((field, given.as_ref()?)))
                {
                    return Err(src.at(
                        given.span(),
                        format!("agent `{badge}`: give `password` or `{field}`, not both"),
                    ));
                }
                if password.get_ref().is_empty() {
                    return Err(src.at(
                        password.span(),
                        format!("agent `{badge}`: password must not be empty"),
                    ));
                }
                Credential::Password(password.get_ref().clone())
            }
            None if self.ha1.is_none() && self.ha1_sha256.is_none() => {
                return Err(src.at(
                    self.badge.span(),
                    format!("agent `{badge}` has no `password`, `ha1` or `ha1_sha256`"),
                ));
            }
            None => Credential::Ha1 {
                md5: check_hex(src, badge, "ha1", self.ha1.as_ref(), 32, "an MD5")?,
                sha256: check_hex(
                    src,
                    badge,
                    "ha1_sha256",
                    self.ha1_sha256.as_ref(),
                    64,
                    "a SHA-256",
                )?,
            },
        };
        Ok(Agent {
            badge: badge.clone(),
            extension: extension.clone(),
            kind: self.kind,
            credential,
        })
    }
}

/// An HA1 field, if given: `digits` hex digits (either case), lowercased as
/// digest computations print them.
fn check_hex(
    src: &Source<'_>,
    badge: &str,
    field: &str,
    given: Option<&Spanned<String>>,
    digits: usize,
    digest: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(given) = given else {
        return Ok(None);
    };
    let hex = given.get_ref();
    if hex.len() != digits || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(src.at(
            given.span(),
            format!("agent `{badge}`: {field} must be {digits} hex digits ({digest} digest)"),
        ));
    }
    Ok(Some(hex.to_ascii_lowercase()))
}

fn duplicate(src: &Source<'_>, value: &Spanned<String>, what: &str, first: usize) -> ConfigError {
    src.at(
        value.span(),
        format!(
            "duplicate {what} `{}` (first on line {first})",
            value.get_ref()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Agents, ConfigError> {
        Agents::from_toml(text, Path::new("agents.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_both_credentials_and_kinds() {
        let agents = parse(
            r#"
[[agent]]
badge = "A1001"
extension = "1001"
kind = "agent"
password = "s3cret"

[[agent]]
badge = "S1"
extension = "+3312"
kind = "supervisor"
ha1 = "0123456789ABCDEF0123456789abcdef"

[[agent]]
badge = "A3"
extension = "3"
password = "x"
"#,
        )
        .unwrap();
        assert_eq!(agents.len(), 3);
        let a = agents.by_extension("1001").unwrap();
        assert_eq!(a.badge, "A1001");
        assert_eq!(a.kind, AgentKind::Agent);
        assert_eq!(a.credential, Credential::Password("s3cret".into()));
        let s = agents.by_badge("S1").unwrap();
        assert_eq!(s.kind, AgentKind::Supervisor);
        assert_eq!(
            s.credential,
            Credential::md5_ha1("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(agents.by_extension("3").unwrap().kind, AgentKind::Agent);
        assert!(!format!("{agents:?}").contains("s3cret"));
        assert!(parse("").unwrap().is_empty());
    }

    const MD5: &str = "0123456789abcdef0123456789abcdef";
    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ha1_sha256_alone_or_beside_ha1() {
        let agents = parse(&format!(
            "[[agent]]\nbadge = \"A\"\nextension = \"1\"\nha1 = \"{}\"\n\
             ha1_sha256 = \"{}\"\n\
             [[agent]]\nbadge = \"B\"\nextension = \"2\"\nha1_sha256 = \"{SHA}\"\n",
            MD5.to_ascii_uppercase(),
            SHA.to_ascii_uppercase(),
        ))
        .unwrap();
        assert_eq!(
            agents.by_badge("A").unwrap().credential,
            Credential::Ha1 {
                md5: Some(MD5.into()),
                sha256: Some(SHA.into()),
            }
        );
        let b = &agents.by_badge("B").unwrap().credential;
        assert_eq!(
            *b,
            Credential::Ha1 {
                md5: None,
                sha256: Some(SHA.into()),
            }
        );
        assert_eq!(format!("{b:?}"), "Ha1 { md5: None, sha256: Some(..) }");
        assert!(!format!("{agents:?}").contains("0123"));
    }

    #[test]
    fn ha1_sha256_errors_name_the_line() {
        let agent = "[[agent]]\nbadge = \"A\"\nextension = \"1\"\n";
        // An MD5-length value, and one with a non-hex digit.
        for bad in [MD5.to_owned(), format!("{}g", &SHA[1..])] {
            assert_eq!(
                error(&format!("{agent}ha1_sha256 = \"{bad}\"\n")),
                "agents.toml:4: agent `A`: ha1_sha256 must be 64 hex digits (a SHA-256 digest)"
            );
        }
        // Beside a good one, a bad `ha1` is still refused.
        assert_eq!(
            error(&format!("{agent}ha1_sha256 = \"{SHA}\"\nha1 = \"{SHA}\"\n")),
            "agents.toml:5: agent `A`: ha1 must be 32 hex digits (an MD5 digest)"
        );
        assert_eq!(
            error(&format!(
                "{agent}password = \"p\"\nha1_sha256 = \"{SHA}\"\n"
            )),
            "agents.toml:5: agent `A`: give `password` or `ha1_sha256`, not both"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let dup = "[[agent]]\nbadge = \"A\"\nextension = \"1\"\npassword = \"p\"\n\
                   [[agent]]\nbadge = \"B\"\nextension = \"1\"\npassword = \"p\"\n";
        assert_eq!(
            error(dup),
            "agents.toml:7: duplicate extension `1` (first on line 2)"
        );
        let dup = "[[agent]]\nbadge = \"A\"\nextension = \"1\"\npassword = \"p\"\n\
                   [[agent]]\nbadge = \"A\"\nextension = \"2\"\npassword = \"p\"\n";
        assert_eq!(
            error(dup),
            "agents.toml:6: duplicate badge `A` (first on line 2)"
        );
        assert_eq!(
            error("[[agent]]\nbadge = \"A\"\nextension = \"1\"\npassword = \"p\"\nha1 = \"x\"\n"),
            "agents.toml:5: agent `A`: give `password` or `ha1`, not both"
        );
        assert_eq!(
            error("[[agent]]\nbadge = \"A\"\nextension = \"1\"\n"),
            "agents.toml:2: agent `A` has no `password`, `ha1` or `ha1_sha256`"
        );
        assert!(
            error("[[agent]]\nbadge = \"A\"\nextension = \"1\"\nha1 = \"abc\"\n")
                .starts_with("agents.toml:4: agent `A`: ha1 must be 32 hex")
        );
        assert!(
            error("[[agent]]\nbadge = \"A\"\nextension = \"1 2\"\npassword = \"p\"\n")
                .starts_with("agents.toml:3: extension `1 2` must be")
        );
        assert!(
            error("[[agent]]\nbadge = \"\"\nextension = \"1\"\npassword = \"p\"\n")
                .starts_with("agents.toml:2: badge `` must be")
        );
        assert!(
            error(
                "[[agent]]\nbadge = \"A\"\nextension = \"1\"\nkind = \"boss\"\npassword = \"p\"\n"
            )
            .starts_with("agents.toml:4: unknown variant `boss`")
        );
        assert!(
            error("[[agent]]\nbadge = \"A\"\nextension = \"1\"\npasswd = \"p\"\n")
                .starts_with("agents.toml:4: unknown field `passwd`")
        );
        assert!(
            error("[[agents]]\nbadge = \"A\"\n")
                .starts_with("agents.toml:1: unknown field `agents`")
        );
    }
}
