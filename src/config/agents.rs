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
    /// MD5 of `extension:domain:password`, as 32 lowercase hex digits: allows
    /// MD5 digests only.
    Ha1(String),
}

impl fmt::Debug for Credential {
    // Both are password equivalents: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(..)"),
            Credential::Ha1(_) => f.write_str("Ha1(..)"),
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
    /// Password or HA1.
    pub credential: Credential,
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
        let credential = match (&self.password, &self.ha1) {
            (Some(_), Some(ha1)) => {
                return Err(src.at(
                    ha1.span(),
                    format!("agent `{badge}`: give `password` or `ha1`, not both"),
                ));
            }
            (None, None) => {
                return Err(src.at(
                    self.badge.span(),
                    format!("agent `{badge}` has neither `password` nor `ha1`"),
                ));
            }
            (Some(password), None) => {
                if password.get_ref().is_empty() {
                    return Err(src.at(
                        password.span(),
                        format!("agent `{badge}`: password must not be empty"),
                    ));
                }
                Credential::Password(password.get_ref().clone())
            }
            (None, Some(ha1)) => {
                let hex = ha1.get_ref();
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(src.at(
                        ha1.span(),
                        format!("agent `{badge}`: ha1 must be 32 hex digits (an MD5 digest)"),
                    ));
                }
                // Lowercase, as digest computations print it.
                Credential::Ha1(hex.to_ascii_lowercase())
            }
        };
        Ok(Agent {
            badge: badge.clone(),
            extension: extension.clone(),
            kind: self.kind,
            credential,
        })
    }
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
            Credential::Ha1("0123456789abcdef0123456789abcdef".into())
        );
        assert_eq!(agents.by_extension("3").unwrap().kind, AgentKind::Agent);
        assert!(!format!("{agents:?}").contains("s3cret"));
        assert!(parse("").unwrap().is_empty());
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
            "agents.toml:2: agent `A` has neither `password` nor `ha1`"
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
