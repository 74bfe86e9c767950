//! JSON paths of mapping files: a JSON pointer (`/visit/visitNo`), optionally with selectors
//! (issue 18 §1) — `*` for every element of an array (or value of an object), and
//! `name[KEY=V1,V2 & KEY2!=V]` for the elements of the array `name` whose `KEY` (a relative
//! pointer without the leading `/`, e.g. `kind/code`) has one of the values:
//! `/phones[type=mobile]/no`, `/ids[idType=01]/idNo`, `/phones/*/no`. A path without `*` or
//! `[` is a plain pointer and evaluated by serde_json.

use serde_json::Value;

use super::selector;

#[derive(Debug, Clone, PartialEq)]
pub enum JsonPath {
    /// A plain JSON pointer, `""` for the value itself.
    Pointer(String),
    /// Steps with selectors.
    Steps(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// An object member, or an array index when the value is an array and the key a number.
    Key(String),
    /// `*`: every element of an array, every value of an object.
    All,
    /// `name[conds]`: the member `name`; if it is an array, its elements that meet every
    /// condition (a single value is kept if it meets them).
    Filter { key: String, conds: Vec<Cond> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    /// Relative pointer tokens inside the element (`type`, or `kind/code`).
    pub at: Vec<String>,
    pub negate: bool,
    pub values: Vec<String>,
}

/// A pointer token with `~1` → `/` and `~0` → `~` (RFC 6901).
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Compile `t` (which starts with `/`, or is empty after a `let`).
pub fn compile(t: &str) -> Result<JsonPath, String> {
    if !t.contains('*') && !t.contains('[') {
        return Ok(JsonPath::Pointer(t.to_string()));
    }
    let hint = "write JSON selectors like `/phones[type=mobile]/no` or `/phones/*/no`";
    let body = t
        .strip_prefix('/')
        .ok_or_else(|| format!("{t:?} is not a JSON pointer: start it with `/`; {hint}"))?;
    let mut steps = Vec::new();
    for token in selector::split_top(body, '/') {
        if token == "*" {
            steps.push(Step::All);
            continue;
        }
        let Some(open) = token.find('[') else {
            if token.contains('*') {
                return Err(format!(
                    "{t:?}: `*` stands alone as a step (`/phones/*/no`), not inside a name"
                ));
            }
            steps.push(Step::Key(unescape(token)));
            continue;
        };
        let inner_and_rest = &token[open + 1..];
        let close = selector::close(inner_and_rest)
            .ok_or_else(|| format!("{t:?}: `[` without `]`; {hint}"))?;
        if !inner_and_rest[close + 1..].trim().is_empty() {
            return Err(format!(
                "{t:?}: one selector per step, and nothing after its `]`; {hint}"
            ));
        }
        let key = &token[..open];
        if key.is_empty() || key == "*" {
            return Err(format!(
                "{t:?}: a selector follows the array's name (`phones[type=mobile]`); {hint}"
            ));
        }
        let mut conds = Vec::new();
        for c in selector::split_top(&inner_and_rest[..close], '&') {
            let (k, negate, values) = selector::condition(c, t)?;
            conds.push(Cond {
                at: k.split('/').map(|p| unescape(p.trim())).collect(),
                negate,
                values,
            });
        }
        steps.push(Step::Filter {
            key: unescape(key),
            conds,
        });
    }
    Ok(JsonPath::Steps(steps))
}

fn member<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

/// A scalar as text for comparing (`"01"`, `1`, `true`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn meets(item: &Value, c: &Cond) -> bool {
    let at = c.at.iter().try_fold(item, |v, k| member(v, k));
    let hit = at.and_then(scalar).is_some_and(|s| c.values.contains(&s));
    hit != c.negate
}

impl JsonPath {
    /// Every value this path selects from `root`, in document order.
    pub fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        match self {
            JsonPath::Pointer(p) => root.pointer(p).into_iter().collect(),
            JsonPath::Steps(steps) => {
                let mut cur = vec![root];
                for step in steps {
                    let mut next = Vec::new();
                    for v in cur {
                        match step {
                            Step::Key(k) => next.extend(member(v, k)),
                            Step::All => match v {
                                Value::Array(a) => next.extend(a.iter()),
                                Value::Object(m) => next.extend(m.values()),
                                _ => {}
                            },
                            Step::Filter { key, conds } => match member(v, key) {
                                Some(Value::Array(a)) => next.extend(
                                    a.iter().filter(|it| conds.iter().all(|c| meets(it, c))),
                                ),
                                Some(one) if conds.iter().all(|c| meets(one, c)) => next.push(one),
                                _ => {}
                            },
                        }
                    }
                    cur = next;
                }
                cur
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(p: &str, v: &Value) -> Vec<String> {
        compile(p)
            .unwrap()
            .select(v)
            .into_iter()
            .filter_map(scalar)
            .collect()
    }

    #[test]
    fn issue_18_filters_and_wildcards_on_arrays() {
        let v = serde_json::json!({
            "body": {"patient": {
                "phones": [
                    {"type": "home", "no": "02161234567"},
                    {"type": "mobile", "no": "13800000001"},
                    {"type": "work", "no": "13800000002"},
                    {"type": "mobile", "no": "13800000003"},
                    {"type": "mobile", "no": "13800000005"}
                ],
                "ids": [{"idType": "02", "idNo": "X1"}, {"idType": "01", "idNo": "110101199003071233"}],
                "contact": {"kind": {"code": "MTH"}, "phone": "13900001111"}
            }}
        });
        assert_eq!(
            ev("/body/patient/phones[type=mobile]/no", &v),
            ["13800000001", "13800000003", "13800000005"],
            "a fifth entry is not ignored"
        );
        assert_eq!(ev("/body/patient/phones/*/no", &v).len(), 5);
        assert_eq!(
            ev("/body/patient/phones[type!=mobile & type!=home]/no", &v),
            ["13800000002"]
        );
        assert_eq!(
            ev("/body/patient/ids[idType='01']/idNo", &v),
            ["110101199003071233"]
        );
        assert_eq!(
            ev("/body/patient/contact[kind/code=MTH,FTH]/phone", &v),
            ["13900001111"],
            "a single object is kept when it meets the condition"
        );
        assert!(ev("/body/patient/contact[kind/code=SPO]/phone", &v).is_empty());
        assert_eq!(ev("/body/patient/phones/1/no", &v), ["13800000001"]);
        assert_eq!(
            compile("/body/patient/phones/1/no").unwrap(),
            JsonPath::Pointer("/body/patient/phones/1/no".into()),
            "no selector: a plain pointer"
        );
    }

    #[test]
    fn malformed_selectors_are_compile_errors() {
        for (bad, says) in [
            ("/phones[type=mobile/no", "without `]`"),
            ("/phones[type]/no", "KEY=VALUE"),
            ("/phones[type=]/no", "empty value"),
            ("/phones[type=a][x=1]/no", "one selector per step"),
            ("/[type=a]/no", "follows the array's name"),
            ("/pho*nes/no", "stands alone"),
            ("phones[type=a]", "start it with `/`"),
        ] {
            let e = compile(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
