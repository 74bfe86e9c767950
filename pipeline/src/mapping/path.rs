//! Path expressions of mapping files, compiled once and evaluated per message.
//!
//! - HL7 v2: `SEG[sel]-F[sel].C.S` — `PID-3[5=PI | 5=MR].1`, `NK1[3=MTH,FTH]-5[*].1`, `MSH-9.2`.
//!   A selector is an occurrence (`2`), all (`*`), or conditions: `C=V1,V2`, `C!=V`, joined by
//!   `&`; alternatives split by `|` are tried in order. No selector = the first occurrence.
//! - XML: `encounterEvent/id/item[@root='2.16.156.10011.1.12']/@extension` (found anywhere),
//!   `/PRPA_IN400003UV/id/@extension` (from the root), `v3:name` (a prefix from `namespaces`),
//!   `item[2]`, a final `@attr` or `text()`; an element alone means its text.
//! - JSON: a JSON pointer, `/visit/visitNo`, with selectors: `/phones[type=mobile]/no`,
//!   `/phones/*/no` (`json_path.rs`).
//! - Any format: `$header.NAME` (AMQP header), `$facility` (the connector's facility),
//!   `$root` (XML root element name), `$NAME…` (a `let` selection, then the rest of a path).
//!
//! A path yields every matching value in order (trimmed, non-empty, HL7 escapes decoded); the
//! field rule takes the first usable one.

use std::collections::BTreeMap;

use hl7_parser::Message;
use hl7_parser::message::{Repeat, Segment, Separators};
use serde_json::Value;

use crate::decode::hl7v2::unescape;
use crate::decode::xml::XmlDoc;

use super::json_path::{self, JsonPath};
use super::model::FormatName;
use super::selector;

/// A parsed message a mapping reads from.
pub enum Doc<'a> {
    Hl7(&'a Message<'a>),
    Xml(&'a XmlDoc),
    Json(&'a Value),
}

/// What a message carries besides its body.
pub struct Env<'a> {
    pub headers: &'a BTreeMap<String, String>,
    pub facility: &'a str,
    /// Codes a table with `unmatched: keep` passed through, as (table, code) (issue 18 §4).
    pub unmatched: std::cell::RefCell<Vec<(String, String)>>,
}

/// A `let` binding's value for one message.
#[derive(Clone, Copy)]
pub enum Bound<'a> {
    Hl7(&'a Segment<'a>, &'a Repeat<'a>),
    Xml(usize),
    Json(&'a Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    Hl7(Hl7Path),
    Xml(XmlPath),
    Json(JsonPath),
    Header(String),
    Facility,
    Root,
    Let { slot: usize, rest: LetRest },
}

#[derive(Debug, Clone, PartialEq)]
pub enum LetRest {
    Hl7 {
        comp: Option<usize>,
        sub: Option<usize>,
    },
    Xml(XmlPath),
    Json(JsonPath),
}

/// Compile a path for `format`. `lets` names the bindings visible to it.
pub fn compile(
    text: &str,
    format: FormatName,
    namespaces: &BTreeMap<String, String>,
    lets: &[String],
) -> Result<Path, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the path is empty".into());
    }
    if let Some(var) = t.strip_prefix('$') {
        if let Some(h) = var.strip_prefix("header.") {
            if h.is_empty() {
                return Err("`$header.` needs a header name, e.g. `$header.service-code`".into());
            }
            return Ok(Path::Header(h.to_string()));
        }
        if var == "facility" {
            return Ok(Path::Facility);
        }
        if var == "root" {
            return match format {
                FormatName::Xml => Ok(Path::Root),
                _ => Err("`$root` (the root element name) exists for XML only".into()),
            };
        }
        let end = var
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(var.len());
        let (name, rest) = var.split_at(end);
        let slot = lets.iter().position(|l| l == name).ok_or_else(|| {
            format!(
                "`${name}` is not defined: define it under `let:`, or use `$header.NAME`, `$facility` or `$root`"
            )
        })?;
        let rest = match format {
            FormatName::Hl7v2 => {
                let (comp, sub) = if rest.is_empty() {
                    (None, None)
                } else {
                    let r = rest.strip_prefix('.').ok_or_else(|| {
                        format!("after `${name}` write `.C` or `.C.S` (component numbers)")
                    })?;
                    parse_comp_sub(r)?
                };
                LetRest::Hl7 { comp, sub }
            }
            FormatName::Xml => LetRest::Xml(compile_xml(rest, namespaces, true)?),
            FormatName::Json => {
                if !rest.is_empty() && !rest.starts_with('/') {
                    return Err(format!(
                        "after `${name}` write a JSON pointer such as `/id`"
                    ));
                }
                LetRest::Json(json_path::compile(rest)?)
            }
        };
        return Ok(Path::Let { slot, rest });
    }
    match format {
        FormatName::Hl7v2 => compile_hl7(t).map(Path::Hl7),
        FormatName::Xml => compile_xml(t, namespaces, false).map(Path::Xml),
        FormatName::Json => {
            if !t.starts_with('/') {
                return Err(format!(
                    "{t:?} is not a JSON pointer: start it with `/`, e.g. `/patient/patientId`"
                ));
            }
            json_path::compile(t).map(Path::Json)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HL7 v2

#[derive(Debug, Clone, PartialEq)]
pub struct Hl7Path {
    pub seg: String,
    pub seg_sel: Sel,
    pub field: usize,
    pub rep_sel: Sel,
    pub comp: Option<usize>,
    pub sub: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Sel {
    First,
    All,
    Nth(usize),
    /// Alternatives tried in order; each is a conjunction of conditions.
    Alts(Vec<Vec<Cond>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    /// Position inside the selected item: (field,) component, sub-component; unnamed deeper
    /// levels compare the first part.
    pub at: Vec<usize>,
    pub negate: bool,
    pub values: Vec<String>,
}

fn num(s: &str, what: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(format!("{what} numbers start at 1, not 0")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a {what} number")),
    }
}

fn parse_comp_sub(s: &str) -> Result<(Option<usize>, Option<usize>), String> {
    let mut parts = s.split('.');
    let comp = parts.next().map(|c| num(c, "component")).transpose()?;
    let sub = parts.next().map(|c| num(c, "sub-component")).transpose()?;
    if parts.next().is_some() {
        return Err("a path goes at most to a sub-component: `SEG-F.C.S`".into());
    }
    Ok((comp, sub))
}

/// Split `NAME[sel]` into the name and the selector text.
fn split_sel(s: &str) -> Result<(&str, Option<&str>), String> {
    match s.find('[') {
        None => Ok((s, None)),
        Some(i) => {
            let after = &s[i + 1..];
            match selector::close(after) {
                Some(c) if c + 1 == after.len() => Ok((&s[..i], Some(&after[..c]))),
                Some(_) => Err(format!("{s:?}: nothing may follow a selector's `]` here")),
                None => Err(format!("{s:?}: a selector `[...]` must be closed with `]`")),
            }
        }
    }
}

fn parse_sel(s: Option<&str>, levels: usize) -> Result<Sel, String> {
    let Some(s) = s.map(str::trim) else {
        return Ok(Sel::First);
    };
    if s == "*" {
        return Ok(Sel::All);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return num(s, "occurrence").map(Sel::Nth);
    }
    let mut alts = Vec::new();
    for alt in selector::split_top(s, '|') {
        let mut conds = Vec::new();
        for c in selector::split_top(alt, '&') {
            let c = c.trim();
            let (lhs, negate, values) = selector::condition(c, s)
                .map_err(|e| format!("{e} (e.g. `[5=PI]`, positions as numbers)"))?;
            let at = lhs
                .split('.')
                .map(|p| num(p, "position"))
                .collect::<Result<Vec<_>, _>>()?;
            if at.len() > levels {
                return Err(format!(
                    "selector {c:?} names {} levels; at most {levels} fit here",
                    at.len()
                ));
            }
            conds.push(Cond { at, negate, values });
        }
        alts.push(conds);
    }
    Ok(Sel::Alts(alts))
}

fn compile_hl7(t: &str) -> Result<Hl7Path, String> {
    let hint = "write HL7 paths as SEG-F, SEG-F.C or SEG-F.C.S, e.g. `PID-3[5=PI].1`";
    let (seg_part, rest) = t
        .split_once('-')
        .ok_or_else(|| format!("{t:?} has no field number; {hint}"))?;
    let (seg, seg_sel) = split_sel(seg_part)?;
    if seg.len() != 3
        || !seg
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "{seg:?} is not a segment name (three capitals or digits, e.g. PID); {hint}"
        ));
    }
    let seg_sel = parse_sel(seg_sel, 3)?;
    // The field part may hold a selector with dots inside (`3[4.1=CHN]`), so split it first.
    let field_end = rest
        .find('[')
        .and_then(|open| selector::close(&rest[open + 1..]).map(|c| open + 1 + c));
    let (field_and_sel, tail) = match field_end {
        Some(i) => (&rest[..=i], rest[i + 1..].to_string()),
        None => match rest.find('.') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, String::new()),
        },
    };
    let (field, rep_sel) = split_sel(field_and_sel)?;
    let field = num(field, "field").map_err(|e| format!("{e}; {hint}"))?;
    let rep_sel = parse_sel(rep_sel, 2)?;
    let (comp, sub) = if tail.is_empty() {
        (None, None)
    } else {
        let r = tail
            .strip_prefix('.')
            .ok_or_else(|| format!("{t:?}: unexpected {tail:?}; {hint}"))?;
        parse_comp_sub(r)?
    };
    Ok(Hl7Path {
        seg: seg.to_string(),
        seg_sel,
        field,
        rep_sel,
        comp,
        sub,
    })
}

/// The text at `at` (component, sub-component) of a repetition, first parts where unnamed.
fn rep_part<'m>(rep: &Repeat<'m>, at: &[usize]) -> &'m str {
    let c = at.first().copied().unwrap_or(1);
    let s = at.get(1).copied().unwrap_or(1);
    rep.component(c)
        .and_then(|comp| comp.subcomponent(s).map(|x| x.raw_value()))
        .unwrap_or("")
}

fn matches(seps: &Separators, raw: &str, cond: &Cond) -> bool {
    let v = unescape(seps, raw);
    let v = v.trim();
    let hit = cond.values.iter().any(|x| x == v);
    hit != cond.negate
}

fn select<'x, T>(
    items: &'x [T],
    sel: &Sel,
    seps: &Separators,
    part: impl Fn(&T, &[usize]) -> &'x str,
) -> Vec<&'x T> {
    match sel {
        Sel::First => items.first().into_iter().collect(),
        Sel::All => items.iter().collect(),
        Sel::Nth(n) => items.get(n - 1).into_iter().collect(),
        Sel::Alts(alts) => {
            let mut out = Vec::new();
            for alt in alts {
                for it in items {
                    if alt.iter().all(|c| matches(seps, part(it, &c.at), c))
                        && !out.iter().any(|o: &&T| std::ptr::eq(*o, it))
                    {
                        out.push(it);
                    }
                }
            }
            out
        }
    }
}

impl Hl7Path {
    /// The repetitions this path selects, with their segment.
    pub fn reps<'a>(&self, msg: &'a Message<'a>) -> Vec<(&'a Segment<'a>, &'a Repeat<'a>)> {
        let mut out = Vec::new();
        self.each_rep(msg, |seg, rep| {
            out.push((seg, rep));
            false
        });
        out
    }

    /// Call `f` on each selected repetition in order until it returns `true`.
    fn each_rep<'a>(
        &self,
        msg: &'a Message<'a>,
        mut f: impl FnMut(&'a Segment<'a>, &'a Repeat<'a>) -> bool,
    ) {
        let seps = &msg.separators;
        let mut named = msg.segments.iter().filter(|s| s.name == self.seg);
        let mut visit = |seg: &'a Segment<'a>| -> bool {
            let Some(field) = seg.field(self.field) else {
                return false;
            };
            match &self.rep_sel {
                Sel::First => field.repeats.first().is_some_and(|r| f(seg, r)),
                Sel::Nth(n) => field.repeats.get(n - 1).is_some_and(|r| f(seg, r)),
                Sel::All => field.repeats.iter().any(|r| f(seg, r)),
                sel @ Sel::Alts(_) => select(&field.repeats, sel, seps, |r, at| rep_part(r, at))
                    .into_iter()
                    .any(|r| f(seg, r)),
            }
        };
        match &self.seg_sel {
            Sel::First => {
                if let Some(seg) = named.next() {
                    visit(seg);
                }
            }
            Sel::Nth(n) => {
                if let Some(seg) = named.nth(n - 1) {
                    visit(seg);
                }
            }
            Sel::All => {
                for seg in named {
                    if visit(seg) {
                        return;
                    }
                }
            }
            sel @ Sel::Alts(_) => {
                let segs: Vec<&Segment<'a>> = named.collect();
                for seg in select(&segs, sel, seps, |s, at| {
                    let fno = at.first().copied().unwrap_or(1);
                    s.field(fno)
                        .and_then(|fl| fl.repeat(1))
                        .map(|r| rep_part(r, &at[1.min(at.len())..]))
                        .unwrap_or("")
                }) {
                    if visit(seg) {
                        return;
                    }
                }
            }
        }
    }

    pub fn eval(&self, msg: &Message<'_>, out: &mut Vec<String>) {
        self.each_rep(msg, |_, rep| {
            push_rep_value(&msg.separators, rep, self.comp, self.sub, out);
            false
        });
    }
}

/// The value of a repetition, a component or a sub-component, unescaped and trimmed.
pub fn push_rep_value(
    seps: &Separators,
    rep: &Repeat<'_>,
    comp: Option<usize>,
    sub: Option<usize>,
    out: &mut Vec<String>,
) {
    let raw = match (comp, sub) {
        (None, _) => rep.raw_value(),
        (Some(c), None) => rep.component(c).map(|x| x.raw_value()).unwrap_or(""),
        (Some(c), Some(s)) => rep
            .component(c)
            .and_then(|x| x.subcomponent(s))
            .map(|x| x.raw_value())
            .unwrap_or(""),
    };
    push_text(&unescape(seps, raw), out);
}

fn push_text(s: &str, out: &mut Vec<String>) {
    let t = s.trim();
    if !t.is_empty() {
        out.push(t.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// XML

#[derive(Debug, Clone, PartialEq)]
pub struct XmlPath {
    pub absolute: bool,
    pub steps: Vec<Step>,
    pub tail: Tail,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub descendant: bool,
    pub name: NameTest,
    pub preds: Vec<Pred>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NameTest {
    /// Required namespace URI (from a prefix); `None` matches any namespace.
    pub ns: Option<String>,
    /// Local name; `None` = `*`.
    pub local: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    /// `[@attr]`, `[@attr='v']`, `[@attr=v1,v2]`: the attribute present, or one of the values.
    Attr {
        name: NameTest,
        values: Option<Vec<String>>,
    },
    /// `[child/@attr=v1,v2]`, `[child='v']`, `[child]`: a relative path from the element
    /// yields one of the values (or anything). E.g. the contact person who is a parent:
    /// `personalRelationship[code/@code=51,52]`.
    Child {
        path: Box<XmlPath>,
        values: Option<Vec<String>>,
    },
    Nth(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tail {
    Text,
    Attr(NameTest),
}

fn name_test(s: &str, ns: &BTreeMap<String, String>) -> Result<NameTest, String> {
    let s = s.trim();
    let (prefix, local) = match s.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, s),
    };
    let ns = match prefix {
        None => None,
        Some(p) => Some(ns.get(p).cloned().ok_or_else(|| {
            format!("namespace prefix `{p}` is not declared under `namespaces:`")
        })?),
    };
    if local.is_empty()
        || !(local == "*"
            || local
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!("{s:?} is not an XML name"));
    }
    Ok(NameTest {
        ns,
        local: (local != "*").then(|| local.to_string()),
    })
}

fn compile_xml(t: &str, ns: &BTreeMap<String, String>, relative: bool) -> Result<XmlPath, String> {
    let hint =
        "write XML paths like `encounterEvent/id/item[@root='2.16.156.10011.1.12']/@extension`";
    let absolute = !relative && t.starts_with('/') && !t.starts_with("//");
    let mut rest = t;
    let mut steps = Vec::new();
    let mut tail = Tail::Text;
    let mut first = true;
    while !rest.is_empty() {
        let mut descendant = first && !relative && !absolute;
        if let Some(r) = rest.strip_prefix("//") {
            descendant = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('/') {
            rest = r;
        }
        first = false;
        // A step ends at the next '/' outside brackets and quotes.
        let (mut depth, mut quote, mut end) = (0i32, None::<char>, rest.len());
        for (i, c) in rest.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '[') => depth += 1,
                (None, ']') => depth -= 1,
                (None, '/') if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let step = &rest[..end];
        rest = &rest[end..];
        if step.is_empty() {
            return Err(format!("{t:?} has an empty step; {hint}"));
        }
        if let Some(a) = step.strip_prefix('@') {
            if !rest.is_empty() {
                return Err(format!("{t:?}: `@{a}` must be the last step"));
            }
            tail = Tail::Attr(name_test(a, ns)?);
            break;
        }
        if step == "text()" {
            if !rest.is_empty() {
                return Err(format!("{t:?}: `text()` must be the last step"));
            }
            break;
        }
        let (name, preds_text) = match step.find('[') {
            Some(i) => (&step[..i], &step[i..]),
            None => (step, ""),
        };
        let mut preds = Vec::new();
        let mut p = preds_text;
        while let Some(r) = p.strip_prefix('[') {
            let close =
                selector::close(r).ok_or_else(|| format!("{t:?}: `[` without `]`; {hint}"))?;
            let inner = r[..close].trim();
            p = &r[close + 1..];
            if inner.bytes().all(|b| b.is_ascii_digit()) {
                preds.push(Pred::Nth(num(inner, "position")?));
            } else if let Some(a) = inner.strip_prefix('@') {
                let (n, v) = match a.split_once('=') {
                    None => (a, None),
                    Some((n, v)) => (n, Some(selector::values(v, t)?)),
                };
                preds.push(Pred::Attr {
                    name: name_test(n, ns)?,
                    values: v,
                });
            } else {
                let (p, v) = match selector::find_top(inner, '=') {
                    None => (inner, None),
                    Some(i) => (&inner[..i], Some(selector::values(&inner[i + 1..], t)?)),
                };
                let path = compile_xml(p.trim(), ns, true).map_err(|e| {
                    format!("{t:?}: predicate [{inner}] is not `[@attr=value]`, `[child/@attr=value]`, `[child]` or `[n]` ({e})")
                })?;
                preds.push(Pred::Child {
                    path: Box::new(path),
                    values: v,
                });
            }
        }
        if !p.trim().is_empty() {
            return Err(format!("{t:?}: unexpected {p:?} after a predicate"));
        }
        steps.push(Step {
            descendant,
            name: name_test(name, ns)?,
            preds,
        });
    }
    if steps.is_empty() && matches!(tail, Tail::Text) && !relative {
        return Err(format!("{t:?} names no element; {hint}"));
    }
    Ok(XmlPath {
        absolute,
        steps,
        tail,
    })
}

fn name_ok(t: &NameTest, local: &str, ns: Option<&str>) -> bool {
    t.local.as_deref().is_none_or(|l| l == local)
        && t.ns.as_deref().is_none_or(|want| Some(want) == ns)
}

impl XmlPath {
    /// Elements this path selects, starting from `start` (`None` = the document).
    pub fn elements(&self, doc: &XmlDoc, start: Option<usize>) -> Vec<usize> {
        let mut ctx: Vec<Option<usize>> = vec![start];
        for step in &self.steps {
            let mut next: Vec<usize> = Vec::new();
            for c in &ctx {
                let mut cands = Vec::new();
                match (c, step.descendant) {
                    (None, false) => cands.push(0),
                    (None, true) => {
                        cands.push(0);
                        doc.descendants(0, &mut cands);
                    }
                    (Some(e), false) => {
                        if let Some(el) = doc.elements.get(*e) {
                            cands.extend(el.children.iter().copied());
                        }
                    }
                    (Some(e), true) => doc.descendants(*e, &mut cands),
                }
                cands.retain(|&i| {
                    let el = &doc.elements[i];
                    name_ok(&step.name, &el.local, el.ns.as_deref())
                });
                for p in &step.preds {
                    match p {
                        Pred::Nth(n) => cands = cands.get(n - 1).copied().into_iter().collect(),
                        Pred::Attr { name, values } => cands.retain(|&i| {
                            doc.elements[i].attrs.iter().any(|(l, ns, v)| {
                                name_ok(name, l, ns.as_deref())
                                    && values
                                        .as_ref()
                                        .is_none_or(|want| want.iter().any(|w| w == v))
                            })
                        }),
                        Pred::Child { path, values } => cands.retain(|&i| {
                            // `[child]` asks for the element, whatever its text.
                            if values.is_none() && path.tail == Tail::Text {
                                return !path.elements(doc, Some(i)).is_empty();
                            }
                            let mut found = Vec::new();
                            path.eval(doc, Some(i), &mut found);
                            match values {
                                None => !found.is_empty(),
                                Some(want) => found.iter().any(|f| want.contains(f)),
                            }
                        }),
                    }
                }
                for i in cands {
                    if !next.contains(&i) {
                        next.push(i);
                    }
                }
            }
            ctx = next.into_iter().map(Some).collect();
        }
        ctx.into_iter().flatten().collect()
    }

    pub fn eval(&self, doc: &XmlDoc, start: Option<usize>, out: &mut Vec<String>) {
        for i in self.elements(doc, start) {
            let el = &doc.elements[i];
            match &self.tail {
                Tail::Text => push_text(&el.text, out),
                Tail::Attr(n) => {
                    if let Some((_, _, v)) = el
                        .attrs
                        .iter()
                        .find(|(l, ns, _)| name_ok(n, l, ns.as_deref()))
                    {
                        push_text(v, out);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

fn push_json(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => push_text(s, out),
        Value::Number(n) => out.push(n.to_string()),
        Value::Bool(b) => out.push(b.to_string()),
        Value::Array(items) => {
            for it in items {
                if !matches!(it, Value::Array(_) | Value::Object(_)) {
                    push_json(it, out);
                }
            }
        }
        Value::Null | Value::Object(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

impl Path {
    /// Every value this path yields for one message.
    pub fn eval(
        &self,
        doc: &Doc<'_>,
        env: &Env<'_>,
        bound: &[Option<Bound<'_>>],
        out: &mut Vec<String>,
    ) {
        match (self, doc) {
            (Path::Header(h), _) => {
                if let Some(v) = env.headers.get(h) {
                    push_text(v, out);
                }
            }
            (Path::Facility, _) => push_text(env.facility, out),
            (Path::Root, Doc::Xml(d)) => {
                if let Some(r) = d.root() {
                    out.push(r.local.clone());
                }
            }
            (Path::Hl7(p), Doc::Hl7(m)) => p.eval(m, out),
            (Path::Xml(p), Doc::Xml(d)) => p.eval(d, None, out),
            (Path::Json(p), Doc::Json(v)) => {
                for x in p.select(v) {
                    push_json(x, out);
                }
            }
            (Path::Let { slot, rest }, doc) => {
                match (bound.get(*slot).copied().flatten(), rest, doc) {
                    (Some(Bound::Hl7(_, rep)), LetRest::Hl7 { comp, sub }, Doc::Hl7(m)) => {
                        push_rep_value(&m.separators, rep, *comp, *sub, out)
                    }
                    (Some(Bound::Xml(e)), LetRest::Xml(p), Doc::Xml(d)) => p.eval(d, Some(e), out),
                    (Some(Bound::Json(v)), LetRest::Json(p), _) => {
                        for x in p.select(v) {
                            push_json(x, out);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// What a `let` binds: the first repetition / element / JSON value the path selects.
    pub fn bind<'a>(&self, doc: &Doc<'a>) -> Option<Bound<'a>> {
        match (self, doc) {
            (Path::Hl7(p), Doc::Hl7(m)) => {
                let mut first = None;
                p.each_rep(m, |s, r| {
                    first = Some(Bound::Hl7(s, r));
                    true
                });
                first
            }
            (Path::Xml(p), Doc::Xml(d)) => p.elements(d, None).first().map(|&e| Bound::Xml(e)),
            (Path::Json(p), Doc::Json(v)) => p.select(v).first().map(|&x| Bound::Json(x)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hl7(t: &str) -> Hl7Path {
        compile_hl7(t).unwrap()
    }

    const MSG: &str = "MSH|^~\\&|HIS|HX|||20261120||ADT^A03^ADT_A03|M1|P|2.5\rPID|1||31010419551212002X^^^CHN^NI~M1^^^HX^MR~P9^^^HXEYE&1.2&ISO^PI||王^秀英||||||||02161234567^WPN^PH~^PRN^CP^^^^^^^^^13911112222\rNK1|1|A|SPO||13900002222\rNK1|2|B|MTH^Mother||13900001111\r";

    fn vals(p: &str) -> Vec<String> {
        let m = Message::parse_with_lenient_newlines(MSG, true).unwrap();
        let mut out = Vec::new();
        hl7(p).eval(&m, &mut out);
        out
    }

    #[test]
    fn hl7_paths_select_repetitions_by_component() {
        assert_eq!(vals("MSH-9.2"), ["A03"]);
        assert_eq!(vals("MSH-9"), ["ADT^A03^ADT_A03"]);
        assert_eq!(vals("PID-3[5=PI | 5=MR].1"), ["P9", "M1"]);
        assert_eq!(vals("PID-3[5=MR|5=PI].1"), ["M1", "P9"]);
        assert_eq!(vals("PID-3[5=PI].4"), ["HXEYE&1.2&ISO"]);
        assert_eq!(vals("PID-3[5=PI].4.1"), ["HXEYE"]);
        assert_eq!(vals("PID-3[5!=NI,NNCHN & 4!=CHN].1"), ["M1", "P9"]);
        assert_eq!(vals("PID-3[2].1"), ["M1"]);
        assert_eq!(vals("PID-3[*].1").len(), 3);
        assert_eq!(
            vals("PID-3.1"),
            ["31010419551212002X"],
            "no selector = first"
        );
        assert_eq!(vals("PID-5.1"), ["王"]);
        assert_eq!(vals("PID-13[3=CP].12"), ["13911112222"]);
        assert_eq!(vals("NK1[3=MTH,FTH]-5.1"), ["13900001111"]);
        assert_eq!(vals("NK1[*]-5.1"), ["13900002222", "13900001111"]);
        assert_eq!(vals("NK1[2]-2"), ["B"]);
        // Quoted values may hold the selector's own separators (issue 18 §6).
        assert_eq!(vals("NK1[3='MTH','F,TH']-5.1"), ["13900001111"]);
        assert_eq!(vals("PID-3[5='PI' | 5='MR'].1"), ["P9", "M1"]);
        assert!(vals("PV1-19").is_empty());
        assert!(vals("PID-99.1").is_empty());
    }

    #[test]
    fn hl7_path_errors_say_what_to_write() {
        for (bad, says) in [
            ("PID", "no field number"),
            ("pid-3", "segment name"),
            ("PID-0", "start at 1"),
            ("PID-3[5=PI", "closed"),
            ("PID-3[5~PI].1", "KEY=VALUE"),
            ("PID-3[5=].1", "empty value"),
            ("PID-3[x=PI].1", "position"),
            ("PID-3.1.2.3", "at most"),
            ("PID-x", "field number"),
        ] {
            let e = compile_hl7(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn xml_paths() {
        let doc = crate::decode::xml::parse_str(
            r#"<r xmlns="urn:hl7-org:v3"><id root="1" extension="MSG1"/><e><id><item root="a" extension="X"/><item root="b" extension="Y"/></id><name><item><part value="孙"/></item></name><t>  txt </t></e></r>"#,
        )
        .unwrap();
        let ns: BTreeMap<String, String> =
            [("v3".to_string(), "urn:hl7-org:v3".to_string())].into();
        let ev = |p: &str| {
            let mut out = Vec::new();
            compile_xml(p, &ns, false)
                .unwrap()
                .eval(&doc, None, &mut out);
            out
        };
        assert_eq!(ev("id/@extension"), ["MSG1"], "nested id has no @extension");
        assert_eq!(ev("/r/id/@extension"), ["MSG1"]);
        assert_eq!(ev("/v3:r/v3:id/@root"), ["1"]);
        assert!(ev("/e/id/@root").is_empty(), "absolute starts at the root");
        assert_eq!(ev("e/id/item[@root='b']/@extension"), ["Y"]);
        assert_eq!(ev("e/id/item[2]/@extension"), ["Y"]);
        assert_eq!(ev("item/@extension"), ["X", "Y"]);
        assert_eq!(ev("name/item/part/@value"), ["孙"]);
        assert_eq!(ev("t"), ["txt"]);
        assert_eq!(ev("t/text()"), ["txt"]);
        assert_eq!(ev("//part/@value"), ["孙"]);
        assert!(
            compile_xml("x:id", &ns, false)
                .unwrap_err()
                .contains("not declared")
        );
        assert!(
            compile_xml("a/@b/c", &ns, false)
                .unwrap_err()
                .contains("last step")
        );
        assert_eq!(ev("e/id/item[@root=b]/@extension"), ["Y"], "unquoted value");
        assert_eq!(
            ev("e/id/item[@root=c,a]/@extension"),
            ["X"],
            "one of a list"
        );
        for (bad, says) in [
            ("a[@b=]", "empty value"),
            ("a[@b='c' d]", "expected `,`"),
            ("a[@b=c", "without `]`"),
        ] {
            let e = compile_xml(bad, &ns, false).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// Issue 21: the contact person who is a parent (GB/T 4761 codes), by a child's attribute.
    #[test]
    fn xml_child_predicates_filter_by_a_descendant_value() {
        let doc = crate::decode::xml::parse_str(
            r#"<p xmlns="urn:hl7-org:v3"><personalRelationship><code code="10"/><telecom><item value="13900000010"/></telecom></personalRelationship><personalRelationship><code code="52"/><telecom><item value="13900000052"/></telecom></personalRelationship><x><id><item root="r" extension="1"/></id><v>a,b</v></x></p>"#,
        )
        .unwrap();
        let ns = BTreeMap::new();
        let ev = |p: &str| {
            let mut out = Vec::new();
            compile_xml(p, &ns, false)
                .unwrap()
                .eval(&doc, None, &mut out);
            out
        };
        assert_eq!(
            ev("personalRelationship[code/@code=50,51,52]/telecom/item/@value"),
            ["13900000052"]
        );
        assert_eq!(
            ev("personalRelationship[code/@code='10']/telecom/item/@value"),
            ["13900000010"]
        );
        assert_eq!(ev("personalRelationship[telecom]/code/@code"), ["10", "52"]);
        assert!(ev("personalRelationship[code/@code=99]/telecom/item/@value").is_empty());
        assert_eq!(
            ev("x[v='a,b']/id/item/@root"),
            ["r"],
            "a quoted value holds a comma"
        );
        assert_eq!(
            ev("x[id/item[@root='r']/@extension=1]/v"),
            ["a,b"],
            "predicates nest"
        );
        assert!(
            compile_xml("x[a/@b/c=1]", &ns, false)
                .unwrap_err()
                .contains("last step")
        );
    }

    #[test]
    fn json_pointers_and_variables() {
        let v: Value = serde_json::json!({"a": {"b": " x ", "n": 5, "t": true, "l": ["p", "q"]}});
        let headers: BTreeMap<String, String> =
            [("service-code".to_string(), "S0032".to_string())].into();
        let env = Env {
            headers: &headers,
            facility: "HX",
            unmatched: Default::default(),
        };
        let doc = Doc::Json(&v);
        let lets = vec!["a".to_string()];
        let ns = BTreeMap::new();
        let ev = |p: &str, bound: &[Option<Bound<'_>>]| {
            let mut out = Vec::new();
            compile(p, FormatName::Json, &ns, &lets)
                .unwrap()
                .eval(&doc, &env, bound, &mut out);
            out
        };
        assert_eq!(ev("/a/b", &[]), ["x"]);
        assert_eq!(ev("/a/n", &[]), ["5"]);
        assert_eq!(ev("/a/t", &[]), ["true"]);
        assert_eq!(ev("/a/l", &[]), ["p", "q"]);
        assert_eq!(ev("$header.service-code", &[]), ["S0032"]);
        assert_eq!(ev("$facility", &[]), ["HX"]);
        let a = compile("/a", FormatName::Json, &ns, &[])
            .unwrap()
            .bind(&doc);
        assert_eq!(ev("$a/b", &[a]), ["x"]);
        assert!(
            compile("a/b", FormatName::Json, &ns, &[])
                .unwrap_err()
                .contains("pointer")
        );
        assert!(
            compile("$nope.1", FormatName::Json, &ns, &[])
                .unwrap_err()
                .contains("not defined")
        );
    }
}
