//! Mapping files: how interface engineers turn any HIS feed into a [`PatientEvent`] without Rust.
//!
//! - [`model`] — the YAML file as written (serde + JSON Schema).
//! - [`path`] — HL7 / XML / JSON path expressions.
//! - [`target`] — the canonical fields a mapping fills.
//! - [`compile()`] — checks a file (every error with file:line:column and a hint) and builds a
//!   [`Mapping`]; [`Mapping::apply`] runs it on one parsed message; [`build`] turns the field
//!   values into a [`PatientEvent`] applying the identifier rules (R-ID-1..5).
//!
//! The test cases beside each mapping (`cem-bridge test`) run in `crate::translate::testing`:
//! they decode as well as map.
//!
//! Pure: files (CSV tables, test inputs) are read through [`Files`], supplied by the caller.

pub mod build;
pub mod json_path;
pub mod model;
pub mod path;
pub mod selector;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use jiff::tz::TimeZone;
use serde_saphyr::{Location, Spanned};

use crate::decode::Format;
use crate::event::{PatientEvent, UnmatchedCode};
use crate::reason::{DeadLetterReason, Rejection};
use model::{
    ConcatPart, EventName, EventSpec, FieldRule, FormatName, MappingFile, TableSpec, TestCase,
    Transform, Unmatched,
};
use path::{Bound, Doc, Env, Path};
use target::{Kind, Target};

/// Reads files a mapping refers to (CSV tables, test inputs), relative to the mapping file.
pub trait Files {
    fn read(&self, relative_to: &str, path: &str) -> Result<Vec<u8>, String>;
}

/// A problem in a mapping file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MappingError {}

/// A checked, ready-to-run mapping.
#[derive(Debug)]
pub struct Mapping {
    pub name: String,
    /// Tried before mappings of lower priority (`priority:`, default 0).
    pub priority: i32,
    /// The file it came from, as given to [`compile`].
    pub file: String,
    pub format: Format,
    conditions: Vec<Cond>,
    lets: Vec<Path>,
    event: EventRule,
    fields: Vec<(Target, Rule)>,
    /// Test cases with their line numbers.
    pub tests: Vec<(TestCase, u64)>,
}

#[derive(Debug)]
struct Cond {
    /// The path as written, to compare conditions of two mappings (reachability).
    text: String,
    path: Path,
    one_of: Option<Vec<String>>,
    not_in: Option<Vec<String>>,
    exists: Option<bool>,
}

#[derive(Debug)]
enum EventRule {
    Fixed(EventName),
    Lookup {
        paths: Vec<Path>,
        table: BTreeMap<String, EventName>,
        otherwise: Option<EventName>,
        text: String,
    },
}

#[derive(Debug)]
pub(crate) struct Rule {
    sources: Vec<Source>,
    transforms: Vec<Tf>,
    default: Option<String>,
    required: bool,
    /// `events:`: the rule applies to these events only.
    events: Option<Vec<EventName>>,
    /// `join:`: every value joined with this separator.
    join: Option<String>,
    /// The paths as written, for error messages.
    pub(crate) text: String,
}

#[derive(Debug)]
enum Source {
    Path(Path),
    Value(String),
    Concat(Vec<Part>),
    /// One rule of a field's list form (issue 18 §2).
    Rule(Box<Rule>),
}

#[derive(Debug)]
enum Part {
    Text(String),
    Read(Rule),
}

#[derive(Debug)]
enum Tf {
    Trim,
    Upper,
    Lower,
    StripPrefix(String),
    Replace(String, String),
    Regex(regex_lite::Regex),
    Table(Arc<Table>),
    Datetime { format: String, zone: TimeZone },
    Date { format: String },
    Only(Vec<String>),
}

#[derive(Debug)]
struct Table {
    /// Its name under `tables:`, or `inline map of FIELD`.
    name: String,
    values: HashMap<String, String>,
    unmatched: Unmatched,
    default: Option<String>,
}

/// What a mapping made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Event(Box<PatientEvent>),
    /// The mapping says `ignore`: acked and counted, no effect.
    Ignored {
        message_id: Option<String>,
        /// The code that selected `ignore` (e.g. the trigger), when a lookup did.
        code: Option<String>,
    },
}

/// Settings for applying a mapping to one message.
pub struct ApplyContext<'a> {
    pub zone: &'a TimeZone,
    pub now: jiff::Timestamp,
    pub headers: &'a BTreeMap<String, String>,
    pub facility: &'a str,
}

fn loc_err(
    file: &str,
    loc: &Location,
    message: impl Into<String>,
    hint: Option<&str>,
) -> MappingError {
    MappingError {
        file: file.to_string(),
        line: loc.line(),
        column: loc.column(),
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// Parse and check a mapping file. `file` is its path as shown in errors (and the base for
/// relative paths given to `files`).
pub fn compile(
    file: &str,
    text: &str,
    zone: &TimeZone,
    files: &dyn Files,
) -> Result<Mapping, Vec<MappingError>> {
    let model: MappingFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let msg = e.without_snippet().to_string();
        // The library's text may repeat the position; keep the first line.
        let mut msg = msg.lines().next().unwrap_or("").to_string();
        if let Some(i) = msg.rfind(" at line ") {
            msg.truncate(i);
        }
        let hint = yaml_hint(&msg);
        vec![MappingError {
            file: file.to_string(),
            line,
            column,
            message: msg,
            hint,
        }]
    })?;
    Compiler {
        file,
        zone,
        files,
        errors: Vec::new(),
    }
    .run(model)
}

/// What to do about a YAML or structure error (issue 18 §5): "did you mean" for a misspelt key
/// or value (a transform, an event name…), and where to look for an indentation mistake.
fn yaml_hint(msg: &str) -> Option<String> {
    // serde: "unknown variant `strip_prefx`, expected one of trim, upper, …" (or "one of `a`,
    // `b`"), the same for "unknown field".
    let near = |msg: &str| -> Option<String> {
        let given = msg.split('`').nth(1)?;
        let (_, list) = msg.split_once("expected one of ")?;
        let options = list.split(',').map(|o| o.trim().trim_matches('`'));
        target::nearest_of(given, options).map(|n| format!("did you mean `{n}`? "))
    };
    if msg.contains("unknown field") {
        Some(format!(
            "{}check the spelling against docs/mapping.md or the JSON Schema (schemas/mapping.schema.json)",
            near(msg).unwrap_or_default()
        ))
    } else if msg.contains("unknown variant") {
        Some(format!(
            "{}see docs/mapping.md for the allowed values",
            near(msg).unwrap_or_default()
        ))
    } else if [
        "mapping values are not allowed",
        "did not find expected key",
        "did not find expected '-'",
        "block mapping",
        "bad indentation",
        "could not find expected ':'",
    ]
    .iter()
    .any(|s| msg.contains(s))
    {
        Some("this is usually indentation: YAML nests by spaces, so a key one space too far right or left (here or on the line above) breaks the structure; indent every key of one level by the same spaces, and never use tabs".into())
    } else {
        None
    }
}

struct Compiler<'a> {
    file: &'a str,
    zone: &'a TimeZone,
    files: &'a dyn Files,
    errors: Vec<MappingError>,
}

impl Compiler<'_> {
    fn err(&mut self, loc: &Location, msg: impl Into<String>, hint: Option<&str>) {
        self.errors.push(loc_err(self.file, loc, msg, hint));
    }

    fn run(mut self, m: MappingFile) -> Result<Mapping, Vec<MappingError>> {
        let format = m.format;
        let ns = m.namespaces.clone();
        if format != FormatName::Xml && !ns.is_empty() {
            self.errors.push(MappingError {
                file: self.file.into(),
                line: 1,
                column: 1,
                message: "`namespaces` is for XML mappings only".into(),
                hint: None,
            });
        }
        let let_names: Vec<String> = m.bindings.keys().cloned().collect();
        let mut lets = Vec::new();
        for (name, p) in &m.bindings {
            if matches!(name.as_str(), "header" | "facility" | "root")
                || name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.err(
                    &p.referenced,
                    format!("`let` name {name:?} is reserved or not a plain name"),
                    Some("use letters, digits and _; header, facility and root are taken"),
                );
            }
            match path::compile(&p.value, format, &ns, &[]) {
                Ok(Path::Hl7(h)) if h.comp.is_some() => {
                    self.err(&p.referenced, format!("`let {name}` selects a repetition: drop the component (`.{}`) and write it after `${name}`", h.comp.unwrap_or(1)), Some("e.g. `pid: \"PID-3[5=PI]\"` then `patient.id: $pid.1`"));
                    lets.push(Path::Facility);
                }
                Ok(Path::Xml(x)) if x.tail != path::Tail::Text => {
                    self.err(&p.referenced, format!("`let {name}` selects an element: drop the final `@attribute` and write it after `${name}`"), Some("e.g. `enc: v3:encounterEvent` then `$enc/id/item/@extension`"));
                    lets.push(Path::Facility);
                }
                Ok(c @ (Path::Hl7(_) | Path::Xml(_) | Path::Json(_))) => lets.push(c),
                Ok(_) => {
                    self.err(
                        &p.referenced,
                        format!("`let {name}` must select part of the message, not a variable"),
                        None,
                    );
                    lets.push(Path::Facility);
                }
                Err(e) => {
                    self.err(&p.referenced, format!("let {name}: {e}"), None);
                    lets.push(Path::Facility);
                }
            }
        }
        let mut conditions = Vec::new();
        for c in &m.conditions {
            let v = &c.value;
            let given = [
                v.one_of.is_some(),
                v.equals.is_some(),
                v.not_in.is_some(),
                v.exists.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if given != 1 {
                self.err(
                    &c.referenced,
                    "a match condition needs exactly one of `in`, `equals`, `not_in`, `exists`",
                    Some("e.g. `- {path: MSH-9.1, in: [ADT]}`"),
                );
            }
            match path::compile(&v.path, format, &ns, &let_names) {
                Ok(p) => conditions.push(Cond {
                    text: v.path.trim().to_string(),
                    path: p,
                    one_of: v
                        .one_of
                        .clone()
                        .or_else(|| v.equals.clone().map(|e| vec![e])),
                    not_in: v.not_in.clone(),
                    exists: v.exists,
                }),
                Err(e) => self.err(&c.referenced, format!("match path: {e}"), None),
            }
        }
        let tables = self.tables(&m.tables);
        let event = match &m.event.value {
            EventSpec::Fixed(n) => EventRule::Fixed(*n),
            EventSpec::Lookup(l) => {
                let mut paths = Vec::new();
                for p in l.path.as_slice() {
                    match path::compile(p, format, &ns, &let_names) {
                        Ok(c) => paths.push(c),
                        Err(e) => self.err(&m.event.referenced, format!("event path: {e}"), None),
                    }
                }
                if l.table.is_empty() {
                    self.err(
                        &m.event.referenced,
                        "the event table is empty",
                        Some("list codes, e.g. `table: {A03: discharge}`"),
                    );
                }
                EventRule::Lookup {
                    paths,
                    table: l.table.clone(),
                    otherwise: l.otherwise,
                    text: l.path.as_slice().join(", "),
                }
            }
        };
        let mut fields = Vec::new();
        for (name, spec) in &m.fields {
            let Some(target) = Target::from_name(name) else {
                let close = target::nearest(name)
                    .map(|t| format!("did you mean `{}`? ", t.name()))
                    .unwrap_or_default();
                self.err(&spec.referenced, format!("unknown field `{name}`"), Some(&format!("{close}fields are listed in docs/mapping.md (message.id, patient.id, visit.number, …)")));
                continue;
            };
            if let Some(rule) = self.rule(
                &spec.value.0,
                &spec.referenced,
                format,
                &ns,
                &let_names,
                &tables,
                name,
            ) {
                fields.push((target, rule));
            }
        }
        for required in [Target::MessageId, Target::EventTime, Target::PatientId] {
            if !matches!(event, EventRule::Fixed(EventName::Ignore))
                && !fields.iter().any(|(t, _)| *t == required)
            {
                self.errors.push(MappingError {
                    file: self.file.into(),
                    line: m.event.referenced.line(),
                    column: 1,
                    message: format!(
                        "the mapping does not set `{}`, which every event needs",
                        required.name()
                    ),
                    hint: Some(format!("add it under `fields:` ({})", required.doc())),
                });
            }
        }
        for t in &m.tests {
            let c = &t.value;
            if c.input.is_some() == c.input_text.is_some() {
                self.err(
                    &t.referenced,
                    format!(
                        "test {:?}: give exactly one of `input` (a file) or `input_text`",
                        c.name
                    ),
                    None,
                );
            }
            if c.expect.error.is_some() == c.expect.event.is_some() {
                self.err(
                    &t.referenced,
                    format!("test {:?}: expect either an `event` or an `error`", c.name),
                    None,
                );
            }
            if let Some(r) = &c.expect.error
                && DeadLetterReason::from_code(r).is_none()
            {
                let all: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.code()).collect();
                self.err(
                    &t.referenced,
                    format!("test {:?}: unknown error {r:?}", c.name),
                    Some(&format!("one of {}", all.join(", "))),
                );
            }
            for f in c.expect.fields.keys() {
                match Target::from_name(f) {
                    None => self.err(
                        &t.referenced,
                        format!("test {:?}: unknown field `{f}` in expect.fields", c.name),
                        target::nearest(f)
                            .map(|t| format!("did you mean `{}`?", t.name()))
                            .as_deref(),
                    ),
                    Some(Target::PatientGivenName | Target::PatientDeathTime) => self.err(
                        &t.referenced,
                        format!(
                            "test {:?}: `{f}` is an input only and not kept in the event",
                            c.name
                        ),
                        Some("compare patient.name (family + given) or patient.deceased instead"),
                    ),
                    Some(_) => {}
                }
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        Ok(Mapping {
            name: m.name,
            priority: m.priority,
            file: self.file.to_string(),
            format: match format {
                FormatName::Hl7v2 => Format::Hl7v2,
                FormatName::Xml => Format::Xml,
                FormatName::Json => Format::Json,
            },
            conditions,
            lets,
            event,
            fields,
            tests: m
                .tests
                .into_iter()
                .map(|t| (t.value, t.referenced.line()))
                .collect(),
        })
    }

    fn tables(
        &mut self,
        specs: &BTreeMap<String, Spanned<TableSpec>>,
    ) -> HashMap<String, Arc<Table>> {
        let mut out = HashMap::new();
        for (name, spec) in specs {
            let s = &spec.value;
            let mut values: HashMap<String, String> = s.values.clone().into_iter().collect();
            if let Some(csv) = &s.csv {
                match self.files.read(self.file, csv) {
                    Ok(bytes) => match parse_csv_table(
                        &bytes,
                        s.key_column.as_deref(),
                        s.value_column.as_deref(),
                    ) {
                        Ok(rows) => values.extend(rows),
                        Err(e) => {
                            self.err(&spec.referenced, format!("table {name}: {csv}: {e}"), None)
                        }
                    },
                    Err(e) => self.err(
                        &spec.referenced,
                        format!("table {name}: cannot read {csv}: {e}"),
                        Some("CSV paths are relative to the mapping file"),
                    ),
                }
            } else if s.values.is_empty() {
                self.err(
                    &spec.referenced,
                    format!("table {name} has neither `values` nor `csv`"),
                    None,
                );
            }
            if s.unmatched == Unmatched::Default && s.default.is_none() {
                self.err(
                    &spec.referenced,
                    format!("table {name}: `unmatched: default` needs a `default` value"),
                    None,
                );
            }
            out.insert(
                name.clone(),
                Arc::new(Table {
                    name: name.clone(),
                    values,
                    unmatched: s.unmatched,
                    default: s.default.clone(),
                }),
            );
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        r: &FieldRule,
        loc: &Location,
        format: FormatName,
        ns: &BTreeMap<String, String>,
        lets: &[String],
        tables: &HashMap<String, Arc<Table>>,
        field: &str,
    ) -> Option<Rule> {
        if !r.alternatives.is_empty() {
            let mut sources = Vec::new();
            let mut texts = Vec::new();
            for alt in &r.alternatives {
                if let Some(rule) = self.rule(alt, loc, format, ns, lets, tables, field) {
                    texts.push(match &rule.events {
                        Some(evs) => format!(
                            "{} (for {})",
                            rule.text,
                            evs.iter().map(|e| e.code()).collect::<Vec<_>>().join(", ")
                        ),
                        None => rule.text.clone(),
                    });
                    sources.push(Source::Rule(Box::new(rule)));
                }
            }
            return Some(Rule {
                sources,
                transforms: Vec::new(),
                default: None,
                required: false,
                events: None,
                join: None,
                text: texts.join(", then "),
            });
        }
        if r.events.as_ref().is_some_and(|e| e.is_empty()) {
            self.err(
                loc,
                format!("{field}: `events: []` names no event, so the rule would never apply"),
                Some("list the events it is for, e.g. `events: [discharge]`, or remove the key"),
            );
        }
        let given = [r.path.is_some(), r.value.is_some(), r.concat.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if given != 1 && !(given == 0 && r.default.is_some()) {
            self.err(
                loc,
                format!("{field}: give exactly one of `path`, `value` or `concat`"),
                Some("e.g. `patient.id: {path: PID-3.1, required: true}`"),
            );
            return None;
        }
        let mut sources = Vec::new();
        let mut text = String::new();
        if let Some(p) = &r.path {
            text = p.as_slice().join(", ");
            for one in p.as_slice() {
                match path::compile(one, format, ns, lets) {
                    Ok(c) => sources.push(Source::Path(c)),
                    Err(e) => self.err(loc, format!("{field}: {e}"), None),
                }
            }
        }
        if let Some(v) = &r.value {
            text = format!("value {v:?}");
            sources.push(Source::Value(v.clone()));
        }
        if let Some(parts) = &r.concat {
            let mut out = Vec::new();
            let mut texts = Vec::new();
            for p in parts {
                match p {
                    ConcatPart::Text(t) => out.push(Part::Text(t.clone())),
                    ConcatPart::Read(inner) => {
                        if inner.concat.is_some() {
                            self.err(
                                loc,
                                format!("{field}: concat inside concat is not supported"),
                                None,
                            );
                            continue;
                        }
                        if let Some(rule) = self.rule(inner, loc, format, ns, lets, tables, field) {
                            texts.push(rule.text.clone());
                            out.push(Part::Read(rule));
                        }
                    }
                }
            }
            text = format!("concat of {}", texts.join(" + "));
            sources.push(Source::Concat(out));
        }
        let mut transforms = Vec::new();
        for t in &r.transforms {
            let tf = match t {
                Transform::Trim => Tf::Trim,
                Transform::Upper => Tf::Upper,
                Transform::Lower => Tf::Lower,
                Transform::StripPrefix(p) => Tf::StripPrefix(p.clone()),
                Transform::Replace { from, to } => Tf::Replace(from.clone(), to.clone()),
                Transform::Regex(re) => match regex_lite::Regex::new(re) {
                    Ok(r) => Tf::Regex(r),
                    Err(e) => {
                        self.err(
                            loc,
                            format!("{field}: regex {re:?} does not compile: {e}"),
                            None,
                        );
                        continue;
                    }
                },
                Transform::Table(name) => match tables.get(name) {
                    Some(t) => Tf::Table(t.clone()),
                    None => {
                        let known: Vec<&String> = tables.keys().collect();
                        self.err(
                            loc,
                            format!("{field}: table `{name}` is not defined under `tables:`"),
                            Some(&format!("defined tables: {known:?}")),
                        );
                        continue;
                    }
                },
                Transform::Map(values) => Tf::Table(Arc::new(Table {
                    name: format!("inline map of {field}"),
                    values: values.clone().into_iter().collect(),
                    unmatched: Unmatched::Keep,
                    default: None,
                })),
                Transform::Datetime { format: f, zone } => {
                    let z = match zone {
                        None => self.zone.clone(),
                        Some(z) => match TimeZone::get(z) {
                            Ok(z) => z,
                            Err(_) => {
                                self.err(
                                    loc,
                                    format!("{field}: unknown time zone {z:?}"),
                                    Some("use an IANA name such as Asia/Shanghai"),
                                );
                                continue;
                            }
                        },
                    };
                    if let Err(e) = check_strftime(f) {
                        self.err(
                            loc,
                            format!("{field}: datetime format {f:?}: {e}"),
                            Some("use strftime codes: %Y %m %d %H %M %S"),
                        );
                        continue;
                    }
                    Tf::Datetime {
                        format: f.clone(),
                        zone: z,
                    }
                }
                Transform::Date { format: f } => {
                    if let Err(e) = check_strftime(f) {
                        self.err(
                            loc,
                            format!("{field}: date format {f:?}: {e}"),
                            Some("use strftime codes: %Y %m %d"),
                        );
                        continue;
                    }
                    Tf::Date { format: f.clone() }
                }
                Transform::Only(v) => Tf::Only(v.clone()),
            };
            transforms.push(tf);
        }
        Some(Rule {
            sources,
            transforms,
            default: r.default.clone(),
            required: r.required,
            events: r.events.clone(),
            join: r.join.clone(),
            text,
        })
    }
}

fn check_strftime(f: &str) -> Result<(), String> {
    if !f.contains('%') {
        return Err("it has no % code".into());
    }
    // Formatting a known value finds unknown codes.
    let dt = jiff::civil::date(2026, 1, 2).at(3, 4, 5, 0);
    jiff::fmt::strtime::format(f, dt)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Parse a two-column (or named-column) CSV with a header row.
fn parse_csv_table(
    bytes: &[u8],
    key: Option<&str>,
    value: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = split_csv(lines.next().ok_or("the file is empty")?);
    let col = |want: Option<&str>, default: usize| -> Result<usize, String> {
        match want {
            None => Ok(default),
            Some(w) => header
                .iter()
                .position(|h| h == w)
                .ok_or_else(|| format!("no column {w:?} in the header {header:?}")),
        }
    };
    let (k, v) = (col(key, 0)?, col(value, 1)?);
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells = split_csv(line);
        match (cells.get(k), cells.get(v)) {
            (Some(a), Some(b)) => out.push((a.clone(), b.clone())),
            _ => {
                return Err(format!(
                    "line {} has {} columns; {} needed",
                    i + 2,
                    cells.len(),
                    k.max(v) + 1
                ));
            }
        }
    }
    Ok(out)
}

/// One CSV line: commas, double-quoted cells with `""` escapes.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

impl Rule {
    /// The values the rule yields, after transforms, in order. Sources are read one after the
    /// other and reading stops after the first source that produced a value `usable` accepts
    /// (later paths are fallbacks; this keeps decoding cheap).
    fn values(
        &self,
        doc: &Doc<'_>,
        env: &Env<'_>,
        bound: &[Option<Bound<'_>>],
        usable: &dyn Fn(&str) -> bool,
        event: EventName,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if !self.applies_to(event) {
            return out;
        }
        let mut raw = Vec::new();
        for s in &self.sources {
            raw.clear();
            match s {
                Source::Path(p) => p.eval(doc, env, bound, &mut raw),
                Source::Rule(r) => raw.extend(r.values(doc, env, bound, usable, event)),
                Source::Value(v) => raw.push(v.clone()),
                Source::Concat(parts) => {
                    let mut joined = String::new();
                    let mut any = false;
                    for p in parts {
                        match p {
                            Part::Text(t) => joined.push_str(t),
                            Part::Read(r) => {
                                if let Some(v) = r
                                    .values(doc, env, bound, &|_| true, event)
                                    .into_iter()
                                    .next()
                                {
                                    any = true;
                                    joined.push_str(&v);
                                }
                            }
                        }
                    }
                    if any {
                        raw.push(joined);
                    }
                }
            }
            let mut found = false;
            'each: for mut v in raw.drain(..) {
                for t in &self.transforms {
                    match apply_transform(t, v, env) {
                        Some(x) => v = x,
                        None => continue 'each,
                    }
                }
                let v = v.trim();
                if !v.is_empty() {
                    found |= usable(v);
                    out.push(v.to_string());
                }
            }
            if found {
                break;
            }
        }
        if out.is_empty()
            && let Some(d) = &self.default
        {
            out.push(d.clone());
        }
        if let Some(sep) = &self.join
            && out.len() > 1
        {
            out = vec![out.join(sep)];
        }
        out
    }

    fn applies_to(&self, event: EventName) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event))
    }

    /// Whether a missing value dead-letters `event`: `required: true` on the rule, or on the
    /// rule of its list form that applies to the event.
    pub(crate) fn required_for(&self, event: EventName) -> bool {
        self.applies_to(event)
            && (self.required
                || self.sources.iter().any(|s| match s {
                    Source::Rule(r) => r.required_for(event),
                    _ => false,
                }))
    }
}

/// Whether a value is usable for a field of `kind` (the first usable value is taken).
fn usable(kind: Kind, v: &str, zone: &TimeZone, today: jiff::civil::Date) -> bool {
    match kind {
        Kind::Text => true,
        Kind::Bool => build::parse_bool(v).is_some(),
        Kind::Time => build::parse_time(v, zone).is_some(),
        Kind::Date => build::parse_date(v).is_some(),
        Kind::Mobile => crate::identifiers::normalize_mobile(v).is_some(),
        Kind::IdCard => crate::identifiers::valid_id_card(v, today).is_some(),
        Kind::Sex => build::known_sex(v).is_some(),
        Kind::Class => build::known_class(v).is_some(),
    }
}

fn apply_transform(t: &Tf, v: String, env: &Env<'_>) -> Option<String> {
    Some(match t {
        Tf::Trim => v.trim().to_string(),
        Tf::Upper => v.to_uppercase(),
        Tf::Lower => v.to_lowercase(),
        Tf::StripPrefix(p) => v.strip_prefix(p.as_str()).map(str::to_string).unwrap_or(v),
        Tf::Replace(from, to) => {
            if from.is_empty() {
                v
            } else {
                v.replace(from.as_str(), to)
            }
        }
        Tf::Regex(re) => {
            let caps = re.captures(&v)?;
            caps.get(1).or_else(|| caps.get(0))?.as_str().to_string()
        }
        Tf::Table(table) => match table.values.get(v.trim()) {
            Some(x) => x.clone(),
            None => match table.unmatched {
                Unmatched::Keep => {
                    env.unmatched
                        .borrow_mut()
                        .push((table.name.clone(), v.trim().to_string()));
                    v
                }
                Unmatched::Drop => return None,
                Unmatched::Default => table.default.clone()?,
            },
        },
        Tf::Datetime { format, zone } => {
            let dt = jiff::civil::DateTime::strptime(format, v.trim()).ok()?;
            let z = zone.to_ambiguous_zoned(dt).compatible().ok()?;
            z.timestamp().to_string()
        }
        Tf::Date { format } => jiff::civil::Date::strptime(format, v.trim())
            .ok()?
            .to_string(),
        Tf::Only(allowed) => {
            if allowed.iter().any(|a| a == v.trim()) {
                v
            } else {
                return None;
            }
        }
    })
}

impl Mapping {
    /// Whether every `match` condition holds for this message.
    pub fn matches(&self, doc: &Doc<'_>, env: &Env<'_>) -> bool {
        let bound = self.bind(doc);
        self.conditions.iter().all(|c| {
            let mut vals = Vec::new();
            c.path.eval(doc, env, &bound, &mut vals);
            let v = vals.first();
            if let Some(want) = c.exists {
                return v.is_some() == want;
            }
            if let Some(set) = &c.one_of {
                return v.is_some_and(|v| set.iter().any(|s| s == v));
            }
            if let Some(set) = &c.not_in {
                return v.is_none_or(|v| !set.iter().any(|s| s == v));
            }
            true
        })
    }

    fn bind<'a>(&self, doc: &Doc<'a>) -> Vec<Option<Bound<'a>>> {
        self.lets.iter().map(|p| p.bind(doc)).collect()
    }

    /// The values of every mapped field for this message (first usable value per field is
    /// chosen later by [`build`]).
    pub fn apply(&self, doc: &Doc<'_>, ctx: &ApplyContext<'_>) -> Result<Outcome, Rejection> {
        let env = Env {
            headers: ctx.headers,
            facility: ctx.facility,
            unmatched: Default::default(),
        };
        let bound = self.bind(doc);
        let (event, code) = match &self.event {
            EventRule::Fixed(n) => (*n, None),
            EventRule::Lookup {
                paths,
                table,
                otherwise,
                text,
            } => {
                let mut vals = Vec::new();
                // The first code (in path order) the table knows wins; else `otherwise`.
                for p in paths {
                    p.eval(doc, &env, &bound, &mut vals);
                }
                let known = vals
                    .iter()
                    .find_map(|c| table.get(c).map(|n| (*n, c.clone())));
                let code = vals.into_iter().next();
                let hit = match known {
                    Some((n, c)) => Some((n, Some(c))),
                    None => otherwise.map(|n| (n, code.clone())),
                };
                match hit {
                    Some((n, c)) => (n, c),
                    None => {
                        let known: Vec<&str> = table.keys().map(String::as_str).collect();
                        return Err(Rejection::new(
                            DeadLetterReason::UnknownEvent,
                            match &code {
                                Some(c) => format!(
                                    "event code {} (from {text}) is not in mapping {}'s table ({})",
                                    crate::reason::quoted(c),
                                    self.name,
                                    known.join(" ")
                                ),
                                None => format!("no event code at {text} (mapping {})", self.name),
                            },
                        ));
                    }
                }
            }
        };
        let today = ctx.now.to_zoned(ctx.zone.clone()).date();
        let mut unmatched = Vec::new();
        let values: Vec<(Target, &Rule, Vec<String>)> = self
            .fields
            .iter()
            .map(|(t, r)| {
                let kind = t.kind();
                let accept = |v: &str| usable(kind, v, ctx.zone, today);
                let v = r.values(doc, &env, &bound, &accept, event);
                // A code a kept table did not know, if it became the field's value.
                for (table, code) in env.unmatched.borrow_mut().drain(..) {
                    if v.first() == Some(&code) {
                        unmatched.push(UnmatchedCode {
                            mapping: self.name.clone(),
                            table,
                            field: *t,
                            code,
                        });
                    }
                }
                (*t, r, v)
            })
            .collect();
        if event == EventName::Ignore {
            let message_id = values
                .iter()
                .find(|(t, _, _)| *t == Target::MessageId)
                .and_then(|(_, _, v)| v.first().cloned());
            return Ok(Outcome::Ignored { message_id, code });
        }
        build::build(self, event, code, &values, ctx).map(|mut e| {
            e.unmatched_codes = unmatched;
            Outcome::Event(Box::new(e))
        })
    }
}

/// The JSON Schema of mapping files, pretty-printed (`cem-bridge schema mapping`).
pub fn schema() -> String {
    let s = schemars::schema_for!(MappingFile);
    serde_json::to_string_pretty(&s).unwrap_or_default()
}

/// The shipped mappings (`mappings/` of the repository), compiled into the crate so benches,
/// property tests and fuzzers run from anywhere. Files that do not compile are left out (the
/// shipped mappings' own tests make sure none is).
pub fn builtin(zone: &TimeZone) -> MappingSet {
    struct Embedded;
    impl Files for Embedded {
        fn read(&self, _: &str, path: &str) -> Result<Vec<u8>, String> {
            match path {
                "tables/json_disposition.csv" => Ok(include_bytes!(
                    "../../../mappings/json/tables/json_disposition.csv"
                )
                .to_vec()),
                _ => Err(format!("{path} is not built in")),
            }
        }
    }
    let sources = [
        (
            "hl7v2/adt.yaml",
            include_str!("../../../mappings/hl7v2/adt.yaml"),
        ),
        (
            "xml/hip_encounter.yaml",
            include_str!("../../../mappings/xml/hip_encounter.yaml"),
        ),
        (
            "xml/hip_registration_update.yaml",
            include_str!("../../../mappings/xml/hip_registration_update.yaml"),
        ),
        (
            "xml/hip_patient.yaml",
            include_str!("../../../mappings/xml/hip_patient.yaml"),
        ),
        (
            "json/his_events.yaml",
            include_str!("../../../mappings/json/his_events.yaml"),
        ),
    ];
    MappingSet::new(
        sources
            .iter()
            .filter_map(|(name, text)| compile(name, text, zone, &Embedded).ok())
            .collect(),
    )
}

/// A mapping that can never be chosen, and the one tried before it that takes its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub mapping: String,
    pub file: String,
    pub by: String,
    pub by_file: String,
    pub why: String,
}

impl std::fmt::Display for Shadowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mapping {} ({}) is never chosen: {} ({}) is tried before it and matches every message it matches ({}). Put {} earlier in the source's `mappings` list, or narrow {}'s `match`",
            self.mapping, self.file, self.by, self.by_file, self.why, self.file, self.by
        )
    }
}

impl Cond {
    /// The same condition as written (path and values, in any order).
    fn same_as(&self, other: &Cond) -> bool {
        let sorted = |v: &Option<Vec<String>>| {
            v.clone().map(|mut v| {
                v.sort();
                v
            })
        };
        self.text == other.text
            && sorted(&self.one_of) == sorted(&other.one_of)
            && sorted(&self.not_in) == sorted(&other.not_in)
            && self.exists == other.exists
    }
}

/// The mappings of one connector, tried in order.
#[derive(Debug, Default, Clone)]
pub struct MappingSet {
    pub mappings: Vec<Arc<Mapping>>,
}

impl MappingSet {
    /// The mappings in the order they are tried: highest `priority` first, then load order.
    pub fn new(mut mappings: Vec<Mapping>) -> Self {
        mappings.sort_by_key(|m| std::cmp::Reverse(m.priority));
        Self {
            mappings: mappings.into_iter().map(Arc::new).collect(),
        }
    }

    /// The mappings that can never be chosen (issue 18 §3): for each, the earlier mapping of the
    /// same format that matches every message it matches, and why — decided from the
    /// conditions as written: the earlier one has no `match`, or each of its conditions is
    /// also one of the later one's (same path, same values).
    pub fn unreachable(&self) -> Vec<Shadowed> {
        let mut out = Vec::new();
        for (j, later) in self.mappings.iter().enumerate() {
            let by = self.mappings[..j].iter().find_map(|earlier| {
                if earlier.format != later.format {
                    return None;
                }
                if earlier.conditions.is_empty() {
                    return Some((
                        earlier,
                        format!(
                            "it has no `match` conditions, so it takes every {} message",
                            later.format.code()
                        ),
                    ));
                }
                earlier
                    .conditions
                    .iter()
                    .all(|e| later.conditions.iter().any(|l| e.same_as(l)))
                    .then(|| {
                        (
                            earlier,
                            "each of its `match` conditions is also one of this mapping's".into(),
                        )
                    })
            });
            if let Some((earlier, why)) = by {
                out.push(Shadowed {
                    mapping: later.name.clone(),
                    file: later.file.clone(),
                    by: earlier.name.clone(),
                    by_file: earlier.file.clone(),
                    why,
                });
            }
        }
        out
    }

    /// The first mapping of `format` whose conditions hold, or why there is none.
    pub fn choose(
        &self,
        format: Format,
        doc: &Doc<'_>,
        env: &Env<'_>,
    ) -> Result<&Mapping, Rejection> {
        let of_format: Vec<&Arc<Mapping>> = self
            .mappings
            .iter()
            .filter(|m| m.format == format)
            .collect();
        if of_format.is_empty() {
            return Err(Rejection::new(
                DeadLetterReason::NoMapping,
                format!(
                    "well-formed {} message, but this connector has no {} mapping",
                    format.code(),
                    format.code()
                ),
            ));
        }
        self.mappings
            .iter()
            .find(|m| m.format == format && m.matches(doc, env))
            .map(|m| m.as_ref())
            .ok_or_else(|| {
                let names: Vec<&str> = of_format.iter().map(|m| m.name.as_str()).collect();
                Rejection::new(
                    DeadLetterReason::NoMapping,
                    format!(
                        "no {} mapping matches this message (tried {})",
                        format.code(),
                        names.join(", ")
                    ),
                )
            })
    }
}

#[cfg(test)]
pub(crate) mod tests;
