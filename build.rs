//! Build script: the git commit the binary is built from, for `cem-bridge --version` and
//! `/health` (`CEM_BRIDGE_COMMIT` at compile time).
//!
//! `CEM_BRIDGE_COMMIT` in the build environment wins (the Docker build, whose context has no
//! `.git`); else `git rev-parse --short HEAD`; else "unknown" — a source tarball builds too.
//! It reruns only when HEAD or the checked-out branch moves, not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CEM_BRIDGE_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let given = std::env::var("CEM_BRIDGE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CEM_BRIDGE_COMMIT={}", commit.trim());
    for file in watched() {
        println!("cargo:rerun-if-changed={}", file.display());
    }
}

/// A git command's trimmed output, if git is there and succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// The files whose change means another commit: `HEAD`, the branch's ref file and
/// `packed-refs`. Only existing ones: a missing path would rerun the script on every build.
fn watched() -> Vec<PathBuf> {
    let Some(dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        return Vec::new();
    };
    let head = dir.join("HEAD");
    let mut files = vec![head.clone(), dir.join("packed-refs")];
    if let Some(branch) = std::fs::read_to_string(&head)
        .ok()
        .and_then(|h| h.strip_prefix("ref:").map(|r| r.trim().to_string()))
    {
        // A linked worktree keeps its HEAD apart, the refs in the common dir.
        let common = git(&["rev-parse", "--git-common-dir"])
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.clone());
        files.push(common.join(Path::new(&branch)));
    }
    files.retain(|f| f.exists());
    files
}
