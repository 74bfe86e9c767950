//! The pieces of selector syntax the three path kinds share (issue 18 §1): value lists with
//! quoting, and finding a separator outside quotes and nested brackets. One syntax for
//! `PID-13[3=CP]`, `item[@root=2.16.156.10011.1.3]`, `personalRelationship[code/@code=51,52]`
//! and `/phones[type=mobile]/no`: `KEY=V1,V2`, `KEY!=V`, a value in `'…'` or `"…"` when it
//! holds `,` `]` `|` `&` `=` or spaces.

/// The byte index of the first `ch` in `s` outside quotes and `[…]`, if any.
pub fn find_top(s: &str, ch: char) -> Option<usize> {
    let (mut quote, mut depth) = (None, 0usize);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, c) if c == ch && depth == 0 => return Some(i),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Where the `]` closing a selector is, in the text after its `[`: the first one outside
/// quotes and nested selectors.
pub fn close(after_open: &str) -> Option<usize> {
    find_top(after_open, ']')
}

/// `s` split at every `ch` outside quotes and brackets.
pub fn split_top(s: &str, ch: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = find_top(rest, ch) {
        out.push(&rest[..i]);
        rest = &rest[i + ch.len_utf8()..];
    }
    out.push(rest);
    out
}

/// The values after `=` in a selector: `v`, `'v'`, `"v"` or a comma-separated list of them.
/// `t` is the whole path, for the error.
pub fn values(s: &str, t: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    loop {
        let (value, after, quoted) = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let body = &rest[1..];
                let end = body
                    .find(q)
                    .ok_or_else(|| format!("{t:?}: a value opened with {q} is not closed"))?;
                (&body[..end], body[end + 1..].trim_start(), true)
            }
            _ => match rest.find(',') {
                Some(i) => (rest[..i].trim(), &rest[i..], false),
                None => (rest.trim(), "", false),
            },
        };
        if value.is_empty() && !quoted {
            return Err(format!(
                "{t:?}: an empty value in a selector; quote it if it is meant (`''`)"
            ));
        }
        out.push(value.to_string());
        match after.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if after.is_empty() => return Ok(out),
            None => {
                return Err(format!(
                    "{t:?}: expected `,` between selector values, found {after:?}"
                ));
            }
        }
    }
}

/// One `KEY=V1,V2` or `KEY!=V` condition: (key, negated, values).
pub fn condition<'a>(c: &'a str, t: &str) -> Result<(&'a str, bool, Vec<String>), String> {
    let c = c.trim();
    let i = find_top(c, '=')
        .ok_or_else(|| format!("{t:?}: selector part {c:?} is not `KEY=VALUE` or `KEY!=VALUE`"))?;
    let (key, negate) = match c[..i].strip_suffix('!') {
        Some(k) => (k.trim(), true),
        None => (c[..i].trim(), false),
    };
    if key.is_empty() {
        return Err(format!(
            "{t:?}: selector part {c:?} names no key before `=`"
        ));
    }
    Ok((key, negate, values(&c[i + 1..], t)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_listed_and_quoted() {
        assert_eq!(values("a, b ,c", "t").unwrap(), ["a", "b", "c"]);
        assert_eq!(values("'a,b]', \"x|y&z\"", "t").unwrap(), ["a,b]", "x|y&z"]);
        assert!(values("'a", "t").unwrap_err().contains("not closed"));
        assert!(values("a,,b", "t").unwrap_err().contains("empty value"));
        assert_eq!(
            values("''", "t").unwrap(),
            [""],
            "a quoted empty value is meant"
        );
        assert!(values("'a' b", "t").unwrap_err().contains("expected `,`"));
    }

    #[test]
    fn separators_outside_quotes_and_brackets() {
        assert_eq!(
            split_top("a=1|b='x|y'|c[d|e]", '|'),
            ["a=1", "b='x|y'", "c[d|e]"]
        );
        assert_eq!(close("a='x]'][2]"), Some(6));
        assert_eq!(find_top("x[a=1]/@b=2", '='), Some(9));
        assert_eq!(
            condition("type != 'work', home", "t").unwrap(),
            ("type", true, vec!["work".to_string(), "home".to_string()])
        );
        assert!(condition("=x", "t").unwrap_err().contains("no key"));
        assert!(condition("x", "t").unwrap_err().contains("KEY=VALUE"));
    }
}
