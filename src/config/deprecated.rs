//! Deprecated forms in `bridge.toml`: keys renamed or replaced since the first release, and
//! paths written relative to the working directory. Each one found becomes a [`Notice`] with
//! file:line that `cem-bridge check` prints and `run` logs at start; a renamed key keeps
//! working, a replaced one is refused with what to write instead.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// What became of a key.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Renamed within its table: the old name still works, with a notice. The new name is
    /// the last segment only (`old` in `[surveys]` → `new` in `[surveys]`).
    Renamed { to: &'static str },
    /// Replaced by something of another shape: refused, saying what to write instead.
    Replaced { instead: &'static str },
}

/// One deprecated key: a dotted path where `[]` after a segment means "in every element of
/// this array of tables" (`source[].old`).
#[derive(Debug, Clone, Copy)]
pub struct Deprecated {
    pub key: &'static str,
    pub change: Change,
}

/// Keys of earlier releases (first release: `[surveys]` with one template per patient class).
pub const DEPRECATED: &[Deprecated] = &[
    Deprecated {
        key: "surveys.outpatient_template",
        change: Change::Replaced {
            instead: "a template rule: [[surveys.rule]] with event = \"registered\", class = \"O\", dept = \"*\" and template = the old value (docs/configuration.md, [surveys])",
        },
    },
    Deprecated {
        key: "surveys.inpatient_template",
        change: Change::Replaced {
            instead: "a template rule: [[surveys.rule]] with event = \"discharged\", class = \"I\", dept = \"*\" and template = the old value (docs/configuration.md, [surveys])",
        },
    },
    Deprecated {
        key: "surveys.delay_minutes",
        change: Change::Replaced {
            instead: "outpatient_delay_minutes (outpatients: visit start + minutes) and inpatient_send_time (inpatients: a local time the day after discharge)",
        },
    },
];

/// A deprecated form found in a config file: `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub file: PathBuf,
    /// 1-based; `None` for a default the file does not write.
    pub line: Option<usize>,
    /// Dotted key, e.g. `source[0].mappings[1]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "{}:{l}: {}: {}",
                self.file.display(),
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// One step of a key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The 1-based line of the value at `path` in `text` (the key's line for tables), if written.
pub fn line_of(text: &str, path: &[Seg<'_>]) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = root.span();
    let mut value: Option<&toml::de::DeValue<'_>> = None;
    let mut table = Some(root.get_ref());
    for seg in path {
        match (seg, value) {
            (Seg::Key(k), _) => {
                let (key, v) = table?
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == *k)?;
                span = if matches!(v.get_ref(), toml::de::DeValue::Table(_)) {
                    key.span()
                } else {
                    v.span()
                };
                value = Some(v.get_ref());
            }
            (Seg::Index(i), Some(toml::de::DeValue::Array(a))) => {
                let v = a.get(*i)?;
                span = v.span();
                value = Some(v.get_ref());
            }
            (Seg::Index(_), _) => return None,
        }
        table = match value {
            Some(toml::de::DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    Some(line_at(text, span.start))
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Apply `table` to config `text`: renamed keys are renamed in the text (same lines, so later
/// messages keep their line numbers) and reported; a replaced key is an error naming its line.
pub fn apply(
    text: &str,
    file: &Path,
    table: &[Deprecated],
) -> Result<(String, Vec<Notice>), ConfigError> {
    let Ok(root) = toml::de::DeTable::parse(text) else {
        // Not TOML: the real parse reports it with its position.
        return Ok((text.to_string(), Vec::new()));
    };
    let mut found = Vec::new();
    for d in table {
        let segs: Vec<&str> = d.key.split('.').collect();
        find(root.get_ref(), &segs, String::new(), &mut |key, span| {
            found.push((d, key, span))
        });
    }
    let mut out = text.to_string();
    let mut notices = Vec::new();
    // Rename from the end of the text so earlier spans stay valid.
    found.sort_by_key(|(_, _, span)| std::cmp::Reverse(span.start));
    for (d, key, span) in found {
        let line = Some(line_at(text, span.start));
        match d.change {
            Change::Renamed { to } => {
                out.replace_range(span.clone(), to);
                let new_key = match key.rsplit_once('.') {
                    Some((table, _)) => format!("{table}.{to}"),
                    None => to.to_string(),
                };
                notices.push(Notice {
                    file: file.to_path_buf(),
                    line,
                    key,
                    message: format!(
                        "deprecated: this key is now {new_key}; rename it (the old name still works for now)"
                    ),
                });
            }
            Change::Replaced { instead } => {
                return Err(ConfigError::Obsolete(Notice {
                    file: file.to_path_buf(),
                    line,
                    key,
                    message: format!("no longer exists; write {instead}"),
                }));
            }
        }
    }
    notices.sort_by_key(|n| n.line);
    Ok((out, notices))
}

/// Calls `hit(key, key span)` for every key matching `segs` under `table`.
fn find(
    table: &toml::de::DeTable<'_>,
    segs: &[&str],
    prefix: String,
    hit: &mut dyn FnMut(String, std::ops::Range<usize>),
) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    let (name, every) = match first.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (*first, false),
    };
    let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
        return;
    };
    let here = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    };
    if rest.is_empty() {
        hit(here, key.span());
        return;
    }
    match (value.get_ref(), every) {
        (toml::de::DeValue::Table(t), false) => find(t, rest, here, hit),
        (toml::de::DeValue::Array(items), true) => {
            for (i, item) in items.iter().enumerate() {
                if let toml::de::DeValue::Table(t) = item.get_ref() {
                    find(t, rest, format!("{here}[{i}]"), hit);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENAMED: &[Deprecated] = &[
        Deprecated {
            key: "source[].old_charset",
            change: Change::Renamed { to: "charset" },
        },
        Deprecated {
            key: "surveys.gone",
            change: Change::Replaced {
                instead: "something else",
            },
        },
    ];

    #[test]
    fn a_renamed_key_is_rewritten_in_place_and_reported_with_its_line() {
        let text = "tenant = \"t\"\n[[source]]\nname = \"a\"\n[[source]]\nname = \"b\"\nold_charset = \"gbk\"\n";
        let (out, notices) = apply(text, Path::new("b.toml"), RENAMED).unwrap();
        assert_eq!(out, text.replace("old_charset", "charset"));
        assert_eq!(notices.len(), 1);
        assert_eq!(
            notices[0].to_string(),
            "b.toml:6: source[1].old_charset: deprecated: this key is now source[1].charset; rename it (the old name still works for now)"
        );
    }

    #[test]
    fn a_replaced_key_is_refused_with_its_line_and_what_to_write() {
        let text = "tenant = \"t\"\n\n[surveys]\ngone = 3\n";
        let e = apply(text, Path::new("b.toml"), RENAMED)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "b.toml:4: surveys.gone: no longer exists; write something else"
        );
    }

    #[test]
    fn first_release_survey_keys_are_refused_with_the_rule_to_write() {
        let text = "tenant = \"t\"\n[surveys]\noutpatient_template = \"OP-1\"\n";
        let e = apply(text, Path::new("old.toml"), DEPRECATED)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("old.toml:3: surveys.outpatient_template: no longer exists")
                && e.contains("[[surveys.rule]]"),
            "{e}"
        );
    }

    #[test]
    fn line_of_finds_values_in_arrays_and_tables() {
        let text = "a = 1\n[store]\nurl = \"x\"\n[[source]]\nname = \"s\"\nmappings = [\n  \"m1\",\n  \"m2\",\n]\n";
        assert_eq!(
            line_of(text, &[Seg::Key("store"), Seg::Key("url")]),
            Some(3)
        );
        let m2 = [
            Seg::Key("source"),
            Seg::Index(0),
            Seg::Key("mappings"),
            Seg::Index(1),
        ];
        assert_eq!(line_of(text, &m2), Some(8));
        assert_eq!(line_of(text, &[Seg::Key("cem"), Seg::Key("x")]), None);
    }
}
