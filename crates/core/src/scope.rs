//! What an API token may do. A token carries scopes — `admin`, `read-only`,
//! `pull:<repository pattern>`, `push:<repository pattern>` (push implies pull),
//! `secrets-read:<secret pattern>` (secret values), `secrets-write:<secret pattern>` (creating,
//! changing and deleting secrets) — and a request is allowed when one of them covers the action
//! it needs. Reading a secret's value is never implied by `read-only` or by writing it.

use std::fmt;
use std::str::FromStr;

use crate::pattern::Pattern;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything, including managing tokens.
    Admin,
    /// Read anything through the API and pull from every repository; change nothing.
    ReadOnly,
    /// Pull from repositories whose name matches.
    Pull(Pattern),
    /// Push to, pull from and delete in repositories whose name matches.
    Push(Pattern),
    /// Read the values of secrets whose name matches.
    SecretsRead(Pattern),
    /// Create, change, label, delete and restore secrets whose name matches (not read them).
    SecretsWrite(Pattern),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "scope `{0}` is unknown; use `admin`, `read-only`, `pull:<repo pattern>`, `push:<repo pattern>`, `secrets-read:<secret pattern>` or `secrets-write:<secret pattern>`"
    )]
    Unknown(String),
    #[error("scope `{0}` has an invalid repository pattern; use repository name characters and `*`")]
    InvalidPattern(String),
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let secret_pattern = |p: &str| {
            let ok = (1..=128).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_alphanumeric() || b"/_+=.@-*".contains(&c));
            if ok {
                Ok(Pattern::new(p))
            } else {
                Err(ScopeError::InvalidPattern(s.to_owned()))
            }
        };
        let pattern = |p: &str| {
            let ok = !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/*".contains(&c));
            if ok {
                Ok(Pattern::new(p))
            } else {
                Err(ScopeError::InvalidPattern(s.to_owned()))
            }
        };
        match s.split_once(':') {
            None if s == "admin" => Ok(Scope::Admin),
            None if s == "read-only" || s == "readonly" => Ok(Scope::ReadOnly),
            Some(("pull", p)) => Ok(Scope::Pull(pattern(p)?)),
            Some(("push", p)) => Ok(Scope::Push(pattern(p)?)),
            Some(("secrets-read", p)) => Ok(Scope::SecretsRead(secret_pattern(p)?)),
            Some(("secrets-write", p)) => Ok(Scope::SecretsWrite(secret_pattern(p)?)),
            _ => Err(ScopeError::Unknown(s.to_owned())),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::ReadOnly => f.write_str("read-only"),
            Scope::Pull(p) => write!(f, "pull:{p}"),
            Scope::Push(p) => write!(f, "push:{p}"),
            Scope::SecretsRead(p) => write!(f, "secrets-read:{p}"),
            Scope::SecretsWrite(p) => write!(f, "secrets-write:{p}"),
        }
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Something a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Read a repository's content (registry pull, API reads of it).
    Pull(&'a str),
    /// Write or delete a repository's content.
    Push(&'a str),
    /// Read a secret's value.
    ReadSecret(&'a str),
    /// Create, change or delete a secret.
    WriteSecret(&'a str),
    /// Read platform state through the API.
    Read,
    /// Change platform configuration (repositories, policies, tokens, gc).
    Admin,
}

/// Registry access a short-lived bearer token was issued for (Docker token flow): the caller
/// may use only this, within what its API token allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub repository: String,
    pub pull: bool,
    pub push: bool,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    pub scopes: Vec<Scope>,
    /// Set when the caller presented a registry bearer token: the access it was issued for.
    pub grants: Option<Vec<Grant>>,
}

impl Principal {
    /// Whether the caller may do `action` now.
    pub fn allows(&self, action: Action<'_>) -> bool {
        self.token_allows(action) && self.grant_covers(action)
    }

    /// Whether the caller's API token allows `action`, whatever its bearer grant covers. When
    /// this holds but [`Principal::allows`] does not, a wider bearer token would do.
    pub fn token_allows(&self, action: Action<'_>) -> bool {
        self.scopes.iter().any(|s| scope_allows(s, action))
    }

    fn grant_covers(&self, action: Action<'_>) -> bool {
        let Some(grants) = &self.grants else { return true };
        grants.iter().any(|g| match action {
            Action::Pull(repo) => g.repository == repo && (g.pull || g.push),
            Action::Push(repo) => g.repository == repo && g.push,
            Action::Read | Action::Admin | Action::ReadSecret(_) | Action::WriteSecret(_) => false,
        })
    }
}

fn scope_allows(scope: &Scope, action: Action<'_>) -> bool {
    match (scope, action) {
        (Scope::Admin, _) => true,
        (Scope::ReadOnly, Action::Pull(_) | Action::Read) => true,
        (Scope::Pull(p), Action::Pull(repo)) => p.matches(repo),
        (Scope::Push(p), Action::Pull(repo) | Action::Push(repo)) => p.matches(repo),
        (Scope::SecretsRead(p), Action::ReadSecret(name)) | (Scope::SecretsWrite(p), Action::WriteSecret(name)) => p.matches(name),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn principal(scopes: &[&str]) -> Principal {
        Principal {
            token_id: "t".into(),
            token_name: "t".into(),
            scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            grants: None,
        }
    }

    #[test]
    fn table() {
        let actions = [
            Action::Pull("team/web"),
            Action::Push("team/web"),
            Action::Pull("other"),
            Action::Read,
            Action::Admin,
            Action::ReadSecret("db/creds"),
            Action::WriteSecret("db/creds"),
            Action::ReadSecret("api-key"),
        ];
        let mut out = String::new();
        let rows = [
            &["admin"][..],
            &["read-only"],
            &["pull:team/*"],
            &["push:team/*"],
            &["pull:*", "push:other"],
            &["secrets-read:db/*"],
            &["secrets-write:db/*"],
            &["secrets-read:*", "secrets-write:api-key"],
        ];
        for scopes in rows {
            let p = principal(scopes);
            let row: Vec<&str> = actions.iter().map(|a| if p.allows(*a) { "y" } else { "-" }).collect();
            out.push_str(&format!("{:<22} {}\n", scopes.join(","), row.join(" ")));
        }
        expect![[r#"
            admin                  y y y y y y y y
            read-only              y - y y - - - -
            pull:team/*            y - - - - - - -
            push:team/*            y y - - - - - -
            pull:*,push:other      y - y - - - - -
            secrets-read:db/*      - - - - - y - -
            secrets-write:db/*     - - - - - - y -
            secrets-read:*,secrets-write:api-key - - - - - y - y
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn grants_narrow_a_token() {
        let mut p = principal(&["push:*"]);
        p.grants = Some(vec![Grant { repository: "web".into(), pull: true, push: false }]);
        assert!(p.allows(Action::Pull("web")));
        assert!(!p.allows(Action::Push("web")) && p.token_allows(Action::Push("web")));
        assert!(!p.allows(Action::Pull("other")));
    }

    #[test]
    fn parse_errors() {
        expect!["scope `root` is unknown; use `admin`, `read-only`, `pull:<repo pattern>`, `push:<repo pattern>`, `secrets-read:<secret pattern>` or `secrets-write:<secret pattern>`"]
            .assert_eq(&"root".parse::<Scope>().err().map(|e| e.to_string()).unwrap_or_default());
        expect!["scope `push:Web` has an invalid repository pattern; use repository name characters and `*`"]
            .assert_eq(&"push:Web".parse::<Scope>().err().map(|e| e.to_string()).unwrap_or_default());
    }
}
