//! Query-string helpers, form-urlencoded as the proxy's router reads queries: `+` is a space
//! and `%XX` one byte (a `%` without two hex digits stays literal).

/// The decoded value of the first `name` parameter of `path`'s query, if any.
pub fn first_value(path: &str, name: &str) -> Option<Vec<u8>> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name.as_bytes()).then(|| decode(value))
    })
}

/// `path` without any `name` parameter, or `None` if it has none. Other parameters keep
/// their order and exact encoding; an emptied query loses its `?`.
pub fn without(path: &str, name: &str) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    let is_name =
        |pair: &&str| decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) == name.as_bytes();
    if !query.split('&').any(|p| is_name(&p)) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !is_name(p))
        .filter(|p| !p.is_empty())
        .collect();
    Some(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    out
}

fn hex(digit: Option<&u8>) -> Option<u8> {
    digit
        .and_then(|d| char::from(*d).to_digit(16))
        .map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_form_decoded() {
        assert_eq!(
            first_value("/p?a=1&api_key=k%2By+z", "api_key"),
            Some(b"k+y z".to_vec())
        );
        assert_eq!(
            first_value("/p?api%5Fkey=x", "api_key"),
            Some(b"x".to_vec())
        );
        assert_eq!(first_value("/p?api_key", "api_key"), Some(Vec::new()));
        assert_eq!(
            first_value("/p?api_key=%zz%4", "api_key"),
            Some(b"%zz%4".to_vec())
        );
        assert_eq!(first_value("/p?x=1", "api_key"), None);
        assert_eq!(first_value("/p", "api_key"), None);
        assert_eq!(
            first_value("/p?api_key=a&api_key=b", "api_key"),
            Some(b"a".to_vec())
        );
    }

    #[test]
    fn stripping_keeps_the_other_parameters_as_they_were() {
        assert_eq!(
            without("/p?a=%20&api_key=k&b=2", "api_key").as_deref(),
            Some("/p?a=%20&b=2")
        );
        assert_eq!(without("/p?api_key=k", "api_key").as_deref(), Some("/p"));
        assert_eq!(
            without("/p?api_key=k&api_key=j&&x", "api_key").as_deref(),
            Some("/p?x")
        );
        assert_eq!(without("/p?api%5Fkey=k", "api_key").as_deref(), Some("/p"));
        assert_eq!(without("/p?a=1", "api_key"), None);
        assert_eq!(without("/p", "api_key"), None);
    }
}
