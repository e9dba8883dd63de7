//! URL query strings: percent-decoding and parameter lookup, for the few simple parameters
//! berth's endpoints take.

/// Decodes `%XX` escapes and `+` (as a space); malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every decoded value of `key` in a query string.
pub fn query_values<'a>(query: Option<&'a str>, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query.unwrap_or("").split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// The first decoded value of `key` in a query string.
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query_values(query, key).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(percent_decode("sha256%3Aab"), "sha256:ab");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+x"), "%zz x");
        assert_eq!(query_value(Some("n=2&last=b%2Fc"), "last").as_deref(), Some("b/c"));
        assert_eq!(query_values(Some("scope=a&x=1&scope=b"), "scope").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(query_value(None, "n"), None);
    }
}
