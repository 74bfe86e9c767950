//! Paths in `bridge.toml` resolved against the config file's folder, so `cem-bridge run -c
//! /etc/cem-bridge/bridge.toml` reads the same files from any working directory.
//!
//! The old form (relative to the working directory) still works: a relative path that does not
//! exist beside the config file but does from the working directory is used as it is, with a
//! deprecation notice naming the key and the path to write instead. A path that does not exist
//! yet (a SQLite file, a shadow file to create) goes beside the config file unless only its
//! parent folder exists from the working directory.

use std::path::{Component, Path, PathBuf};

/// Where a relative path from the config file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Beside the config file (or absolute, or the config file is in the working directory).
    Here(PathBuf),
    /// Only from the working directory (the deprecated form): the path to use now, and what to
    /// write in the config instead.
    FromWorkingDir { path: PathBuf, write: PathBuf },
}

impl Resolved {
    pub fn path(&self) -> &Path {
        match self {
            Self::Here(p) | Self::FromWorkingDir { path: p, .. } => p,
        }
    }
}

/// Resolve `written` (a path as the config file at `config` writes it).
pub fn resolve(config: &Path, written: &Path) -> Resolved {
    let dir = config.parent().unwrap_or(Path::new(""));
    if written.is_absolute() || written.as_os_str().is_empty() || is_here(dir) {
        return Resolved::Here(written.to_path_buf());
    }
    let beside = clean(&dir.join(written));
    if beside.exists() {
        return Resolved::Here(beside);
    }
    let from_cwd = || Resolved::FromWorkingDir {
        path: written.to_path_buf(),
        write: relative(dir, written),
    };
    if written.exists() {
        return from_cwd();
    }
    // Not there yet (to be created): its folder decides.
    match written.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !dir.join(parent).exists() && parent.exists() => from_cwd(),
        _ => Resolved::Here(beside),
    }
}

fn is_here(dir: &Path) -> bool {
    dir.as_os_str().is_empty() || dir == Path::new(".")
}

/// `path` without `.` and with `a/..` folded (lexically).
fn clean(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

/// `target` (relative to the working directory) as a path relative to `dir`; absolute when the
/// two share no folder below the root, or the working directory cannot be read.
fn relative(dir: &Path, target: &Path) -> PathBuf {
    let (Ok(dir), Ok(target)) = (std::path::absolute(dir), std::path::absolute(target)) else {
        return target.to_path_buf();
    };
    let (dir, target) = (clean(&dir), clean(&target));
    let d: Vec<_> = dir.components().collect();
    let t: Vec<_> = target.components().collect();
    let common = d.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return target;
    }
    let mut out = PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_folds_dots() {
        assert_eq!(
            clean(Path::new("config/../mappings")),
            Path::new("mappings")
        );
        assert_eq!(clean(Path::new("./a/./b")), Path::new("a/b"));
        assert_eq!(clean(Path::new("../a")), Path::new("../a"));
        assert_eq!(clean(Path::new("/../a")), Path::new("/a"));
    }

    #[test]
    fn relative_walks_up_from_the_config_folder() {
        assert_eq!(
            relative(Path::new("/etc/cem/conf"), Path::new("/etc/cem/mappings")),
            Path::new("../mappings")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a/b/c")),
            Path::new("b/c")
        );
        assert_eq!(
            relative(Path::new("/etc/cem"), Path::new("/opt/cem/mappings")),
            Path::new("/opt/cem/mappings"),
            "nothing shared below the root: absolute"
        );
    }

    #[test]
    fn absolute_and_working_dir_configs_leave_paths_as_written() {
        assert_eq!(
            resolve(Path::new("/x/b.toml"), Path::new("/abs/m")),
            Resolved::Here("/abs/m".into())
        );
        assert_eq!(
            resolve(Path::new("b.toml"), Path::new("m")),
            Resolved::Here("m".into())
        );
    }
}
