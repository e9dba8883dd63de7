//! Repository names, tags and manifest references with the grammar of the OCI distribution
//! spec (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/...)*`, tags `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted, as CNCF distribution does.
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "repository name `{0}` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"
    )]
    InvalidName(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("tag `{0}` is invalid; a tag is 1 to 128 of `A-Za-z0-9_.-` and does not start with `.` or `-`")]
    InvalidTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A validated repository name such as `team/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        if s.split('/').all(valid_component) {
            Ok(RepositoryName(s.to_owned()))
        } else {
            Err(NameError::InvalidName(s.to_owned()))
        }
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag such as `latest` or `3f2a9c1-20261126`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b.first().is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b.iter().all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::InvalidTag(s.to_owned()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check_name(input: &str, expect: Expect) {
        let got = match input.parse::<RepositoryName>() {
            Ok(n) => format!("ok {n}"),
            Err(e) => format!("err {e}"),
        };
        expect.assert_eq(&got);
    }

    fn check_ref(input: &str, expect: Expect) {
        let got = match input.parse::<Reference>() {
            Ok(Reference::Tag(t)) => format!("tag {t}"),
            Ok(Reference::Digest(d)) => format!("digest {d}"),
            Err(e) => format!("err {e}"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn names() {
        check_name("web", expect!["ok web"]);
        check_name("team/web-app", expect!["ok team/web-app"]);
        check_name("a__b/c---d/e.f", expect!["ok a__b/c---d/e.f"]);
        check_name("Web", expect!["err repository name `Web` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"]);
        check_name("a___b", expect!["err repository name `a___b` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"]);
        check_name("a/", expect!["err repository name `a/` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"]);
        check_name("-a", expect!["err repository name `-a` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"]);
        check_name("a.-b", expect!["err repository name `a.-b` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"]);
        check_name("", expect!["err repository name `` is invalid; use lowercase letters, digits and `.`, `_`, `-` separators, with `/` between path components"]);
        check_name(&"a".repeat(256), expect!["err repository name is longer than 255 characters"]);
    }

    #[test]
    fn references() {
        check_ref("latest", expect!["tag latest"]);
        check_ref("v1.2.3-rc_1", expect!["tag v1.2.3-rc_1"]);
        check_ref(
            ".hidden",
            expect!["err tag `.hidden` is invalid; a tag is 1 to 128 of `A-Za-z0-9_.-` and does not start with `.` or `-`"],
        );
        check_ref(&"t".repeat(129), expect!["err tag `ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt` is invalid; a tag is 1 to 128 of `A-Za-z0-9_.-` and does not start with `.` or `-`"]);
        check_ref(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            expect!["digest sha256:0000000000000000000000000000000000000000000000000000000000000000"],
        );
        check_ref("sha256:00", expect!["err digest `sha256:00` is malformed; expected `sha256:` followed by 64 lowercase hex digits"]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = s.parse::<RepositoryName>();
            let _ = s.parse::<Reference>();
        }

        #[test]
        fn valid_names_round_trip(s in "[a-z0-9]{1,8}((\\.|_|__|-+)[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}){0,3}") {
            proptest::prop_assert_eq!(s.parse::<RepositoryName>().map(|n| n.to_string()), Ok(s));
        }
    }
}
