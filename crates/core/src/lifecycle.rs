//! Repository lifecycle rules and the pure planner that turns them into deletions: expire
//! untagged manifests after N days, keep only the newest N tags matching a pattern.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::pattern::Pattern;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LifecycleRule {
    /// Delete manifests that have had no tag and no parent index for more than `days` days.
    ExpireUntagged { days: u32 },
    /// Of the tags matching `pattern`, keep the `count` most recently pushed and delete the rest;
    /// a manifest left with no tag by this is deleted too.
    KeepNewestTags { pattern: Pattern, count: u32 },
}

/// What the planner needs to know of one manifest in a repository.
#[derive(Debug, Clone)]
pub struct ManifestFacts {
    pub digest: Digest,
    /// Unix seconds when the manifest was pushed.
    pub created_at: i64,
    /// Tags pointing at it, with the unix seconds each was last set.
    pub tags: Vec<(String, i64)>,
    /// Manifests it references (children of an index).
    pub children: Vec<Digest>,
    /// The manifest this one refers to (a referrer's subject).
    pub subject: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LifecycleAction {
    DeleteTag(String),
    DeleteManifest(Digest),
}

/// Plans the deletions `rules` ask for, at time `now` (unix seconds). Never deletes a manifest
/// that a remaining index refers to; deletes referrers whose subject is deleted.
pub fn plan(rules: &[LifecycleRule], manifests: &[ManifestFacts], now: i64) -> Vec<LifecycleAction> {
    let mut removed_tags: HashSet<&str> = HashSet::new();
    for rule in rules {
        if let LifecycleRule::KeepNewestTags { pattern, count } = rule {
            let mut matching: Vec<(&str, i64)> =
                manifests.iter().flat_map(|m| m.tags.iter().map(|(t, at)| (t.as_str(), *at))).filter(|(t, _)| pattern.matches(t)).collect();
            matching.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            removed_tags.extend(matching.iter().skip(*count as usize).map(|(t, _)| *t));
        }
    }
    let expire_after: Option<i64> = rules
        .iter()
        .filter_map(|r| match r {
            LifecycleRule::ExpireUntagged { days } => Some(i64::from(*days) * 86_400),
            LifecycleRule::KeepNewestTags { .. } => None,
        })
        .min();

    let mut doomed: HashSet<&Digest> = HashSet::new();
    for m in manifests {
        let had_tags = !m.tags.is_empty();
        let left = m.tags.iter().filter(|(t, _)| !removed_tags.contains(t.as_str())).count();
        if left > 0 || m.subject.is_some() {
            continue;
        }
        let untagged_by_rule = had_tags;
        let expired = !had_tags && expire_after.is_some_and(|age| now - m.created_at > age);
        if untagged_by_rule || expired {
            doomed.insert(&m.digest);
        }
    }
    // A manifest that a surviving index references stays; iterate because keeping an index keeps
    // its children only.
    let by_digest: HashMap<&Digest, &ManifestFacts> = manifests.iter().map(|m| (&m.digest, m)).collect();
    loop {
        let kept_children: HashSet<&Digest> =
            manifests.iter().filter(|m| !doomed.contains(&m.digest)).flat_map(|m| m.children.iter()).collect();
        let before = doomed.len();
        doomed.retain(|d| !kept_children.contains(d));
        if doomed.len() == before {
            break;
        }
    }
    // Referrers follow their subject.
    for m in manifests {
        if let Some(s) = &m.subject {
            if doomed.contains(s) || !by_digest.contains_key(s) && expire_after.is_some() && m.tags.is_empty() {
                doomed.insert(&m.digest);
            }
        }
    }
    let mut out: Vec<LifecycleAction> = removed_tags.into_iter().map(|t| LifecycleAction::DeleteTag(t.to_owned())).collect();
    out.extend(doomed.into_iter().map(|d| LifecycleAction::DeleteManifest(d.clone())));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn m(n: u8, created: i64, tags: &[(&str, i64)]) -> ManifestFacts {
        ManifestFacts {
            digest: d(n),
            created_at: created,
            tags: tags.iter().map(|(t, a)| (t.to_string(), *a)).collect(),
            children: vec![],
            subject: None,
        }
    }

    fn show(actions: Vec<LifecycleAction>) -> String {
        let names: HashMap<Digest, u8> = (0..10).map(|n| (d(n), n)).collect();
        actions
            .into_iter()
            .map(|a| match a {
                LifecycleAction::DeleteTag(t) => format!("tag {t}"),
                LifecycleAction::DeleteManifest(x) => format!("manifest #{}", names.get(&x).copied().unwrap_or(99)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn keeps_newest_tags() {
        let ms = [m(1, 10, &[("a1", 10)]), m(2, 20, &[("a2", 20), ("latest", 30)]), m(3, 30, &[("a3", 30)])];
        let rules = [LifecycleRule::KeepNewestTags { pattern: Pattern::new("a*"), count: 1 }];
        expect!["tag a1, tag a2, manifest #1"].assert_eq(&show(plan(&rules, &ms, 100)));
    }

    #[test]
    fn expires_untagged_but_not_index_children_or_young() {
        let day = 86_400;
        let mut index = m(1, 0, &[("latest", 0)]);
        index.children = vec![d(2)];
        let mut referrer = m(5, 0, &[]);
        referrer.subject = Some(d(3));
        let ms = [index, m(2, 0, &[]), m(3, 0, &[]), m(4, 9 * day, &[]), referrer];
        let rules = [LifecycleRule::ExpireUntagged { days: 7 }];
        expect!["manifest #3, manifest #5"].assert_eq(&show(plan(&rules, &ms, 10 * day)));
    }
}
