//! Tag mutability, in ECR's model: a repository is MUTABLE or IMMUTABLE, optionally with
//! wildcard exclusion filters that flip the rule for matching tags (for example every tag
//! immutable except `latest`).

use std::fmt;
use std::str::FromStr;

use crate::pattern::Pattern;

/// Most exclusion filters a repository may have (ECR allows 5).
pub const MAX_EXCLUSIONS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagMutability {
    Mutable,
    Immutable,
    ImmutableWithExclusion,
    MutableWithExclusion,
}

impl TagMutability {
    pub fn as_str(self) -> &'static str {
        match self {
            TagMutability::Mutable => "MUTABLE",
            TagMutability::Immutable => "IMMUTABLE",
            TagMutability::ImmutableWithExclusion => "IMMUTABLE_WITH_EXCLUSION",
            TagMutability::MutableWithExclusion => "MUTABLE_WITH_EXCLUSION",
        }
    }
}

impl fmt::Display for TagMutability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TagMutability {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "MUTABLE" => TagMutability::Mutable,
            "IMMUTABLE" => TagMutability::Immutable,
            "IMMUTABLE_WITH_EXCLUSION" => TagMutability::ImmutableWithExclusion,
            "MUTABLE_WITH_EXCLUSION" => TagMutability::MutableWithExclusion,
            _ => return Err(PolicyError::UnknownMutability(s.to_owned())),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("tag mutability `{0}` is unknown; use MUTABLE, IMMUTABLE, IMMUTABLE_WITH_EXCLUSION or MUTABLE_WITH_EXCLUSION")]
    UnknownMutability(String),
    #[error("{0} needs at least one exclusion filter, for example `latest`")]
    MissingExclusions(TagMutability),
    #[error("{0} takes no exclusion filters; use {0}_WITH_EXCLUSION to add some")]
    UnexpectedExclusions(TagMutability),
    #[error("at most {MAX_EXCLUSIONS} exclusion filters are allowed")]
    TooManyExclusions,
    #[error("exclusion filter `{0}` is invalid; use tag characters `A-Za-z0-9_.-` and `*` wildcards, at most 128 characters")]
    InvalidFilter(String),
}

/// A repository's tag mutability setting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagPolicy {
    pub mutability: TagMutability,
    #[serde(default)]
    pub exclusions: Vec<Pattern>,
}

impl Default for TagPolicy {
    fn default() -> Self {
        TagPolicy { mutability: TagMutability::Mutable, exclusions: Vec::new() }
    }
}

impl TagPolicy {
    /// Builds a policy, checking that the exclusions fit the mutability.
    pub fn new(mutability: TagMutability, exclusions: Vec<Pattern>) -> Result<TagPolicy, PolicyError> {
        let with = matches!(mutability, TagMutability::ImmutableWithExclusion | TagMutability::MutableWithExclusion);
        if with && exclusions.is_empty() {
            return Err(PolicyError::MissingExclusions(mutability));
        }
        if !with && !exclusions.is_empty() {
            return Err(PolicyError::UnexpectedExclusions(mutability));
        }
        if exclusions.len() > MAX_EXCLUSIONS {
            return Err(PolicyError::TooManyExclusions);
        }
        for p in &exclusions {
            let s = p.as_str();
            let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-*".contains(&c));
            if !ok {
                return Err(PolicyError::InvalidFilter(s.to_owned()));
            }
        }
        Ok(TagPolicy { mutability, exclusions })
    }

    /// Whether `tag` may not be moved to another digest once it exists.
    pub fn is_immutable(&self, tag: &str) -> bool {
        let excluded = || self.exclusions.iter().any(|p| p.matches(tag));
        match self.mutability {
            TagMutability::Mutable => false,
            TagMutability::Immutable => true,
            TagMutability::ImmutableWithExclusion => !excluded(),
            TagMutability::MutableWithExclusion => excluded(),
        }
    }

    /// A short human description, used in error messages ("IMMUTABLE_WITH_EXCLUSION (except latest)").
    pub fn describe(&self) -> String {
        if self.exclusions.is_empty() {
            return self.mutability.to_string();
        }
        let list: Vec<&str> = self.exclusions.iter().map(Pattern::as_str).collect();
        let word = match self.mutability {
            TagMutability::MutableWithExclusion => "immutable",
            _ => "except",
        };
        format!("{} ({word}: {})", self.mutability, list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn policy(m: &str, ex: &[&str]) -> Result<TagPolicy, PolicyError> {
        TagPolicy::new(m.parse()?, ex.iter().map(|s| Pattern::new(*s)).collect())
    }

    #[test]
    fn immutable_except_latest() {
        let p = policy("IMMUTABLE_WITH_EXCLUSION", &["latest"]).unwrap_or_default();
        assert!(!p.is_immutable("latest"));
        assert!(p.is_immutable("3f2a9c1-20261126"));
        expect!["IMMUTABLE_WITH_EXCLUSION (except: latest)"].assert_eq(&p.describe());
    }

    #[test]
    fn mutable_with_exclusion() {
        let p = policy("mutable_with_exclusion", &["v*"]).unwrap_or_default();
        assert!(p.is_immutable("v1.0"));
        assert!(!p.is_immutable("latest"));
    }

    #[test]
    fn plain() {
        assert!(!TagPolicy::default().is_immutable("x"));
        assert!(policy("IMMUTABLE", &[]).is_ok_and(|p| p.is_immutable("latest")));
    }

    #[test]
    fn rejects_bad_combinations() {
        let errs: Vec<String> = [
            policy("IMMUTABLE_WITH_EXCLUSION", &[]),
            policy("IMMUTABLE", &["latest"]),
            policy("SOMETIMES", &[]),
            policy("IMMUTABLE_WITH_EXCLUSION", &["a b"]),
            policy("IMMUTABLE_WITH_EXCLUSION", &["a", "b", "c", "d", "e", "f"]),
        ]
        .into_iter()
        .map(|r| r.err().map(|e| e.to_string()).unwrap_or_default())
        .collect();
        expect![[r#"
            IMMUTABLE_WITH_EXCLUSION needs at least one exclusion filter, for example `latest`
            IMMUTABLE takes no exclusion filters; use IMMUTABLE_WITH_EXCLUSION to add some
            tag mutability `SOMETIMES` is unknown; use MUTABLE, IMMUTABLE, IMMUTABLE_WITH_EXCLUSION or MUTABLE_WITH_EXCLUSION
            exclusion filter `a b` is invalid; use tag characters `A-Za-z0-9_.-` and `*` wildcards, at most 128 characters
            at most 5 exclusion filters are allowed"#]]
        .assert_eq(&errs.join("\n"));
    }
}
