//! The mapping file as written (YAML): serde + JSON Schema types, no behaviour.
//!
//! [`super::compile`] turns a [`MappingFile`] into a checked, ready-to-run [`super::Mapping`].
//! Every struct denies unknown keys so a typo is an error with a line and column, and doc
//! comments become the descriptions an editor shows from the JSON Schema.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// One mapping file: which messages it applies to, the event it produces and how each
/// canonical field is read.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// Short unique name, shown in traces, dead letters and `cem-bridge test` output.
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Message format: `hl7v2`, `xml` or `json`.
    pub format: FormatName,
    /// Mappings are tried highest priority first, then in load order (default 0). A site
    /// mapping that must win over a shipped one of the same format says `priority: 10`.
    #[serde(default)]
    pub priority: i32,
    /// XML only: namespace prefixes used in this file's paths, e.g. `{v3: "urn:hl7-org:v3"}`.
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// Conditions that must all hold for this mapping to apply. The first mapping (in file-name
    /// order) of the message's format whose conditions hold is used.
    #[serde(default, rename = "match")]
    #[schemars(with = "Vec<Condition>")]
    pub conditions: Vec<Spanned<Condition>>,
    /// Named selections reused by several fields: `pid: "PID-3[5=PI | 5=MR]"` then `$pid.1`,
    /// `$pid.4.1`. A selection binds the first matching repetition / element / JSON value.
    #[serde(default, rename = "let")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub bindings: BTreeMap<String, Spanned<String>>,
    /// The event kind: a fixed name, or a path plus a table from its value to event names.
    #[schemars(with = "EventSpec")]
    pub event: Spanned<EventSpec>,
    /// Canonical field name → where to read it. See docs/mapping.md for the list of fields.
    #[serde(default)]
    #[schemars(with = "CanonicalFields")]
    pub fields: BTreeMap<String, Spanned<FieldSpec>>,
    /// Code tables used by the `table` transform: inline values or a CSV file.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, TableSpec>")]
    pub tables: BTreeMap<String, Spanned<TableSpec>>,
    /// Test cases run by `cem-bridge test`.
    #[serde(default)]
    #[schemars(with = "Vec<TestCase>")]
    pub tests: Vec<Spanned<TestCase>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    Hl7v2,
    Xml,
    Json,
}

/// A condition on the message: `{path: MSH-9.1, in: [ADT]}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Where to read the value (a path, `$header.NAME`, or `$root` for the XML root element).
    pub path: String,
    /// The value must be one of these.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// The value must equal this.
    #[serde(default)]
    pub equals: Option<String>,
    /// The value must not be one of these (an absent value passes).
    #[serde(default)]
    pub not_in: Option<Vec<String>>,
    /// `true`: the value must be present; `false`: it must be absent.
    #[serde(default)]
    pub exists: Option<bool>,
}

/// Event names a mapping may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    /// 挂号 (R-EVT-3 REGISTERED): schedules an outpatient survey.
    Registration,
    /// 退号 / 取消入院 (VISIT_CANCELLED).
    RegistrationCancelled,
    /// 入院 (ADMITTED): recorded only.
    Admission,
    /// 出院 (DISCHARGED): inpatient survey.
    Discharge,
    /// 取消出院 (DISCHARGE_CANCELLED).
    DischargeCancelled,
    /// Demographics update (UPDATED): A08, A31, S0002. Patient-level (R-PAT-1).
    PatientUpdated,
    /// A person registered without a visit (PATIENT_REGISTERED): A28, S0001. Patient-level
    /// (R-PAT-1): fills the patient record, never schedules a survey.
    PatientRegistered,
    /// 患者合并 (MERGED).
    PatientMerged,
    /// Acked and counted, no effect, not an error.
    Ignore,
}

impl EventName {
    pub fn code(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::RegistrationCancelled => "registration_cancelled",
            Self::Admission => "admission",
            Self::Discharge => "discharge",
            Self::DischargeCancelled => "discharge_cancelled",
            Self::PatientUpdated => "patient_updated",
            Self::PatientRegistered => "patient_registered",
            Self::PatientMerged => "patient_merged",
            Self::Ignore => "ignore",
        }
    }
}

/// `event: discharge`, or `event: {path: [MSH-9.2, EVN-1], table: {A03: discharge}}`.
#[derive(Debug, Clone)]
pub enum EventSpec {
    Fixed(EventName),
    Lookup(EventLookup),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventLookup {
    /// Where the trigger code is read; several paths = the first present wins.
    pub path: OneOrMany,
    /// Trigger code → event name. Codes not listed are dead-lettered as `unknown_event`.
    pub table: BTreeMap<String, EventName>,
    /// Event for codes not in the table (instead of `unknown_event`), e.g. `ignore`.
    #[serde(default)]
    pub otherwise: Option<EventName>,
}

impl<'de> Deserialize<'de> for EventSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(
            d,
            |s: &str| {
                EventName::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s))
                .map(EventSpec::Fixed)
                .map_err(|_| {
                    format!("unknown event {s:?}; use registration, registration_cancelled, admission, discharge, discharge_cancelled, patient_registered, patient_updated, patient_merged or ignore")
                })
            },
            EventSpec::Lookup,
        )
    }
}

impl JsonSchema for EventSpec {
    fn schema_name() -> Cow<'static, str> {
        "EventSpec".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let fixed = g.subschema_for::<EventName>();
        let lookup = g.subschema_for::<EventLookup>();
        json_schema!({ "anyOf": [fixed, lookup] })
    }
}

/// One path, or several tried in order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// Schema of `fields:`: one property per canonical field, with its description, and no other
/// key — so an editor completes the names and flags `patient.phone` as you type (issue 18 §5).
#[allow(dead_code)]
struct CanonicalFields;

impl JsonSchema for CanonicalFields {
    fn schema_name() -> Cow<'static, str> {
        "CanonicalFields".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let spec = serde_json::Value::from(g.subschema_for::<FieldSpec>());
        canonical_object(|doc| {
            let mut s = spec.clone();
            if let Some(o) = s.as_object_mut() {
                o.insert("description".into(), doc.into());
            }
            s
        })
    }
}

/// Schema of a test case's `expect.fields`: the canonical names, each a scalar (as text) or `~`.
#[allow(dead_code)]
struct ExpectedFields;

impl JsonSchema for ExpectedFields {
    fn schema_name() -> Cow<'static, str> {
        "ExpectedFields".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        canonical_object(
            |doc| serde_json::json!({ "type": ["string", "number", "boolean", "null"], "description": doc }),
        )
    }
}

/// An object whose keys are exactly the canonical field names, each with `value(doc)`.
fn canonical_object(value: impl Fn(&str) -> serde_json::Value) -> Schema {
    let props: serde_json::Map<String, serde_json::Value> = super::target::Target::ALL
        .iter()
        .map(|t| (t.name().to_string(), value(t.doc())))
        .collect();
    json_schema!({
        "type": "object",
        "properties": props,
        "additionalProperties": false,
        "description": "canonical fields (docs/mapping.md §5); any other name is an error"
    })
}

/// How one canonical field is read: a bare path string, or the full form.
#[derive(Debug, Clone)]
pub struct FieldSpec(pub FieldRule);

/// The full form of a field rule. Exactly one of `path`, `value`, `concat` is given.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// Path(s) to read; with several, the first that yields a usable value wins.
    #[serde(default)]
    pub path: Option<OneOrMany>,
    /// A constant.
    #[serde(default)]
    pub value: Option<String>,
    /// Parts joined without separator: strings are literal text, `{path: ...}` are read.
    #[serde(default)]
    #[schemars(with = "Option<Vec<ConcatPartSchema>>")]
    pub concat: Option<Vec<ConcatPart>>,
    /// Transforms applied in order to each value read.
    #[serde(default)]
    pub transforms: Vec<Transform>,
    /// Used when the path(s) yield no value at all (after transforms).
    #[serde(default)]
    pub default: Option<String>,
    /// Missing → the message is dead-lettered naming this field and its path.
    #[serde(default)]
    pub required: bool,
    /// Only for these events (e.g. `[discharge]`): for other events the rule is skipped. In a
    /// list of rules this reads a field from a different place per event.
    #[serde(default)]
    pub events: Option<Vec<EventName>>,
    /// Join every value the path yields (after transforms) with this separator, instead of
    /// taking the first usable one: `join: ","` over `/phones/*/no`.
    #[serde(default)]
    pub join: Option<String>,
    /// The list form with rules in it: tried in order, the first that applies to the event and
    /// yields a usable value wins.
    #[serde(skip)]
    #[schemars(skip)]
    pub alternatives: Vec<FieldRule>,
}

/// One entry of a field's list form: a path, or a full rule.
enum ListItem {
    Path(String),
    Rule(FieldRule),
}

impl<'de> Deserialize<'de> for ListItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(
            d,
            |s: &str| Ok(ListItem::Path(s.to_string())),
            ListItem::Rule,
        )
    }
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_map_or_list(
            d,
            |s: &str| {
                Ok(FieldSpec(FieldRule {
                    path: Some(OneOrMany::One(s.to_string())),
                    ..Default::default()
                }))
            },
            FieldSpec,
            Some(|items: Vec<ListItem>| {
                if items.iter().all(|i| matches!(i, ListItem::Path(_))) {
                    let paths = items
                        .into_iter()
                        .filter_map(|i| match i {
                            ListItem::Path(p) => Some(p),
                            ListItem::Rule(_) => None,
                        })
                        .collect();
                    return FieldSpec(FieldRule {
                        path: Some(OneOrMany::Many(paths)),
                        ..Default::default()
                    });
                }
                let alternatives = items
                    .into_iter()
                    .map(|i| match i {
                        ListItem::Path(p) => FieldRule {
                            path: Some(OneOrMany::One(p)),
                            ..Default::default()
                        },
                        ListItem::Rule(r) => r,
                    })
                    .collect();
                FieldSpec(FieldRule {
                    alternatives,
                    ..Default::default()
                })
            }),
        )
    }
}

impl JsonSchema for FieldSpec {
    fn schema_name() -> Cow<'static, str> {
        "FieldSpec".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let rule = g.subschema_for::<FieldRule>();
        json_schema!({ "anyOf": [
            { "type": "string", "description": "a path" },
            { "type": "array", "items": { "anyOf": [{ "type": "string" }, rule.clone()] }, "description": "paths or rules tried in order; a rule may name its `events`" },
            rule
        ] })
    }
}

/// A part of `concat`: literal text, or a rule that reads a value.
#[derive(Debug, Clone)]
pub enum ConcatPart {
    Text(String),
    Read(FieldRule),
}

impl<'de> Deserialize<'de> for ConcatPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(
            d,
            |s: &str| Ok(ConcatPart::Text(s.to_string())),
            ConcatPart::Read,
        )
    }
}

/// Schema stand-in for [`ConcatPart`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ConcatPartSchema {
    /// Literal text.
    Text(String),
    Read(FieldRule),
}

/// A transform applied to a value. Bare names (`- trim`) or one-key maps (`- table: sex`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// Remove surrounding white space (values are also trimmed when read).
    Trim,
    Upper,
    Lower,
    /// Remove a prefix when present, e.g. `tel:`.
    StripPrefix(String),
    /// Replace every occurrence of `from` with `to`.
    Replace {
        from: String,
        to: String,
    },
    /// Keep the first capture group (or the whole match); no match → no value.
    Regex(String),
    /// Look the value up in a table of this file's `tables`.
    Table(String),
    /// Look the value up in an inline table; values not listed are kept.
    Map(BTreeMap<String, String>),
    /// Parse a date-time with a strftime format (e.g. `%Y/%m/%d %H:%M`) in `zone` (default
    /// the bridge's time zone); the result is RFC 3339.
    Datetime {
        format: String,
        #[serde(default)]
        zone: Option<String>,
    },
    /// Parse a date with a strftime format (e.g. `%d.%m.%Y`); the result is `YYYY-MM-DD`.
    Date {
        format: String,
    },
    /// Keep the value only if it is one of these (else no value).
    Only(Vec<String>),
}

/// A code table: inline `values`, or a CSV file with a header row.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Inline code → value pairs.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// CSV file, relative to the mapping file; merged over `values`.
    #[serde(default)]
    pub csv: Option<String>,
    /// CSV column holding the code (default: the first column).
    #[serde(default)]
    pub key_column: Option<String>,
    /// CSV column holding the value (default: the second column).
    #[serde(default)]
    pub value_column: Option<String>,
    /// What a code not in the table gives: `keep` (the code itself, default), `drop` (no
    /// value) or a fixed `default` value.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// The value for unmatched codes when `unmatched: default`.
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    Keep,
    Drop,
    Default,
}

/// A test case: an input message and what the mapping must make of it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// Input file, relative to the mapping file.
    #[serde(default)]
    pub input: Option<String>,
    /// Inline input text (HL7 segments may be separated by newlines).
    #[serde(default)]
    pub input_text: Option<String>,
    /// AMQP headers the message arrives with, e.g. `service-code: S0032`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub expect: Expect,
}

/// What a test expects: an event with fields, or a dead-letter reason.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `registration`, `discharge`, …, or `ignore`.
    #[serde(default)]
    pub event: Option<EventName>,
    /// Canonical fields and their expected values (as `cem-bridge map` prints them); fields
    /// not listed are not compared. Use `~` (null) to expect a field to be absent.
    #[serde(default)]
    #[schemars(with = "ExpectedFields")]
    pub fields: BTreeMap<String, Option<String>>,
    /// Warnings expected, e.g. `[identity_mismatch]`; compared only when given.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    /// The dead-letter reason expected instead of an event, e.g. `missing_patient_id`.
    #[serde(default)]
    pub error: Option<String>,
    /// The mapping expected to be chosen (when several are loaded).
    #[serde(default)]
    pub mapping: Option<String>,
}

/// Deserialize a value given either as a string (`from_str`) or as a map (`T`'s own derive,
/// so unknown keys keep their precise error).
fn string_or_map<'de, D, T, R, F, G>(d: D, from_str: F, from_map: G) -> Result<R, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
    F: Fn(&str) -> Result<R, String>,
    G: Fn(T) -> R,
{
    string_map_or_list(d, from_str, from_map, None::<fn(Vec<String>) -> R>)
}

/// Like [`string_or_map`], also accepting a list of `I` when `from_list` is given.
fn string_map_or_list<'de, D, T, R, F, G, I, L>(
    d: D,
    from_str: F,
    from_map: G,
    from_list: Option<L>,
) -> Result<R, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
    I: Deserialize<'de>,
    F: Fn(&str) -> Result<R, String>,
    G: Fn(T) -> R,
    L: Fn(Vec<I>) -> R,
{
    struct V<T, R, F, G, I, L>(F, G, Option<L>, PhantomData<(T, R, I)>);
    impl<'de, T, R, F, G, I, L> Visitor<'de> for V<T, R, F, G, I, L>
    where
        T: Deserialize<'de>,
        I: Deserialize<'de>,
        F: Fn(&str) -> Result<R, String>,
        G: Fn(T) -> R,
        L: Fn(Vec<I>) -> R,
    {
        type Value = R;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.2.is_some() {
                f.write_str("a string, a list of strings or a map")
            } else {
                f.write_str("a string or a map")
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<R, E> {
            (self.0)(s).map_err(E::custom)
        }
        fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<R, M::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(m)).map(&self.1)
        }
        fn visit_seq<S: de::SeqAccess<'de>>(self, s: S) -> Result<R, S::Error> {
            match &self.2 {
                Some(list) => {
                    let v = Vec::<I>::deserialize(de::value::SeqAccessDeserializer::new(s))?;
                    Ok(list(v))
                }
                None => Err(de::Error::invalid_type(de::Unexpected::Seq, &self)),
            }
        }
    }
    d.deserialize_any(V(from_str, from_map, from_list, PhantomData))
}
