//! Wildcard patterns as ECR uses them in tag filters and as berth uses them in token scopes:
//! `*` matches any run of characters (including none), everything else matches itself.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(p: impl Into<String>) -> Pattern {
        Pattern(p.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        // Classic greedy wildcard matching with backtracking to the last star: O(n·m) worst case.
        let p = self.0.as_bytes();
        let t = text.as_bytes();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches() {
        let cases = [
            ("latest", "latest", true),
            ("latest", "latest2", false),
            ("*", "", true),
            ("v*", "v1.2", true),
            ("v*", "1.2", false),
            ("*-rc*", "v1-rc2", true),
            ("team/*", "team/web", true),
            ("team/*", "other/web", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("prod-*-x", "prod--x", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(Pattern::new(p).matches(t), want, "{p} vs {t}");
        }
    }
}
