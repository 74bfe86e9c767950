//! Loading mapping files from disk for the runtime and the CLI (`check`, `test`, `map`).
//!
//! A connector's `mappings` lists files or folders; folders are read recursively for `*.yaml`
//! and `*.yml`, in file-name order, which is the order mappings are tried in. Relative paths
//! in `bridge.toml` are resolved against its folder when it is read (`paths.rs`), those on the
//! command line against the working directory; paths inside a mapping (CSV tables, test
//! inputs) are relative to the mapping file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cem_pipeline::mapping::{self, Files, Mapping, MappingError, MappingSet};
use jiff::tz::TimeZone;

/// Reads files relative to the mapping file that names them.
pub struct DiskFiles;

impl Files for DiskFiles {
    fn read(&self, relative_to: &str, path: &str) -> Result<Vec<u8>, String> {
        let base = Path::new(relative_to).parent().unwrap_or(Path::new("."));
        let full = base.join(path);
        std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))
    }
}

/// Every mapping file under `paths`, in the order they are tried.
pub fn mapping_files(paths: &[String]) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        let path = Path::new(p);
        if path.is_dir() {
            walk(path, &mut out, &mut errors);
        } else if path.is_file() {
            out.push(path.to_path_buf());
        } else {
            errors.push(format!(
                "{p}: no such file or folder (relative paths in bridge.toml start from its folder; on the command line, from the working directory {})",
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out, errors);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Compile every mapping under `paths`; all problems are returned, each with file:line:column.
pub fn load(paths: &[String], zone: &TimeZone) -> Result<MappingSet, Vec<String>> {
    let files = mapping_files(paths)?;
    if files.is_empty() {
        return Err(vec![format!(
            "{}: no mapping files (*.yaml) found",
            paths.join(", ")
        )]);
    }
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut errors = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for f in files {
        let label = f.display().to_string();
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{label}: cannot read: {e}"));
                continue;
            }
        };
        match mapping::compile(&label, &text, zone, &DiskFiles) {
            Ok(m) => {
                if let Some(first) = names.insert(m.name.clone(), label.clone()) {
                    errors.push(format!(
                        "{label}: mapping name {:?} is also used by {first}; names must be unique",
                        m.name
                    ));
                }
                mappings.push(m);
            }
            Err(errs) => errors.extend(errs.iter().map(MappingError::to_string)),
        }
    }
    if errors.is_empty() {
        Ok(MappingSet::new(mappings))
    } else {
        Err(errors)
    }
}
