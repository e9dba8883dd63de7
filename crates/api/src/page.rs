//! Pagination, the same on every list endpoint: `?limit=` (default 100, at most 1000) and
//! `?after=`, the cursor the previous page returned as `next` (`null` on the last page). No list
//! answer is ever unbounded.

use std::str::FromStr;

use serde::Deserialize;

use crate::ApiError;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize, Default)]
pub struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

impl Page {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }

    /// The cursor, as the list's key type.
    pub fn after<K: FromStr>(&self) -> Result<Option<K>, ApiError> {
        self.after
            .as_deref()
            .map(|a| a.parse().map_err(|_| ApiError::invalid(format!("`after={a}` is not a cursor this list returned as `next`"))))
            .transpose()
    }

    /// One page of `items`, fetched with `limit() + 1` so that a following page shows: the items
    /// and the cursor of the next page.
    pub fn finish<T, K: ToString>(&self, mut items: Vec<T>, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
        let more = items.len() > self.limit();
        items.truncate(self.limit());
        let next = if more { items.last().map(|i| key(i).to_string()) } else { None };
        (items, next)
    }

    /// One page of a whole list ordered by `key`: the items after the cursor, and the next cursor.
    pub fn slice<T, K: FromStr + Ord + ToString>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> K,
    ) -> Result<(Vec<T>, Option<String>), ApiError> {
        let after: Option<K> = self.after()?;
        let rest: Vec<T> = items.into_iter().filter(|i| after.as_ref().is_none_or(|a| &key(i) > a)).take(self.limit() + 1).collect();
        Ok(self.finish(rest, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(after: Option<&str>, limit: usize) -> Page {
        Page { after: after.map(str::to_owned), limit: Some(limit) }
    }

    #[test]
    fn slices_follow_the_cursor_to_the_end() -> Result<(), ApiError> {
        let items: Vec<u32> = (1..=5).collect();
        assert_eq!(page(None, 2).slice(items.clone(), |i| *i)?, (vec![1, 2], Some("2".into())));
        assert_eq!(page(Some("2"), 2).slice(items.clone(), |i| *i)?, (vec![3, 4], Some("4".into())));
        assert_eq!(page(Some("4"), 2).slice(items.clone(), |i| *i)?, (vec![5], None));
        assert_eq!(page(Some("4"), 1).slice(items.clone(), |i| *i)?, (vec![5], None));
        assert_eq!(Page::default().limit(), 100);
        assert_eq!(page(None, 5000).limit(), 1000);
        assert!(page(Some("x"), 2).slice(items, |i| *i).is_err());
        Ok(())
    }
}
