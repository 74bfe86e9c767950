//! Deploying it (issue 20 §9): docker/compose.yaml and docker/Dockerfile agree with the config
//! the image runs (docker/bridge.toml), the systemd unit is complete, and `--version`,
//! `/health` and `cem-bridge health` name the release and the commit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cem_bridge::config::Config;

use crate::common::*;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The commit `git` says the tree is at, as build.rs reads it ("unknown" without git).
fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The Dockerfile's `COPY` lines of the final stage: (source, target, from another stage).
fn dockerfile_copies(text: &str) -> Vec<(String, String, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let last_stage = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("FROM "))
        .unwrap_or(0);
    lines[last_stage..]
        .iter()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let from = words.iter().any(|w| w.starts_with("--from="));
            let plain: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
            (
                plain[0].to_string(),
                plain[plain.len() - 1].to_string(),
                from,
            )
        })
        .collect()
}

/// Every `*_env` key's value in the config text (the environment variables it names).
fn env_names(value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                match v {
                    toml::Value::String(s) if k.ends_with("_env") => {
                        out.insert(s.clone());
                    }
                    _ => env_names(v, out),
                }
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| env_names(v, out)),
        _ => {}
    }
}

/// docker/compose.yaml against docker/bridge.toml and the Dockerfile: the ports the config
/// listens on beyond loopback are published, every environment variable the config names is
/// given to the bridge, and every path the config refers to is in the image (a COPY target, a
/// mounted volume or the WORKDIR) — so `docker compose up` does not fail on what a test can see.
#[test]
fn compose_file_provides_what_the_image_config_needs() {
    let text = read("docker/bridge.toml");
    let cfg = Config::parse(&text, Path::new("/etc/cem-bridge/bridge.toml"))
        .expect("docker/bridge.toml is valid");
    let compose: serde_json::Value =
        serde_saphyr::from_str(&read("docker/compose.yaml")).expect("compose.yaml is YAML");
    let bridge = &compose["services"]["bridge"];
    let dockerfile = read("docker/Dockerfile");

    // Ports.
    let published: BTreeSet<u16> = bridge["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(bridge["expose"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let p = p
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| p.to_string());
            p.rsplit(':').next()?.split('/').next()?.parse().ok()
        })
        .collect();
    let mut listens: Vec<(String, std::net::SocketAddr)> = cfg
        .sources
        .iter()
        .filter_map(|s| {
            let addr = cem_bridge::config::socket_addr(s.listen.as_deref()?)?;
            Some((format!("[[source]] {} listen", s.name), addr))
        })
        .collect();
    let ops = cfg
        .ops
        .listen_addr()
        .expect("the image's HEALTHCHECK asks /health: the ops server must be on");
    listens.push(("[ops] listen".into(), ops));
    for (what, addr) in &listens {
        if !addr.ip().is_loopback() {
            assert!(
                published.contains(&addr.port()),
                "{what} = {addr}, but compose publishes {published:?}"
            );
            assert!(
                dockerfile.contains(&format!("EXPOSE {}", addr.port())),
                "{what}: the Dockerfile should EXPOSE {}",
                addr.port()
            );
        }
    }

    // Environment variables.
    let mut needed = BTreeSet::new();
    env_names(&toml::from_str(&text).unwrap(), &mut needed);
    needed.insert(cfg.pseudonym.key_env.clone());
    needed.insert(cfg.vault.key_env.clone());
    let given: BTreeSet<String> = match &bridge["environment"] {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str()?.split('=').next().map(str::to_string))
            .collect(),
        _ => BTreeSet::new(),
    };
    let missing: Vec<_> = needed.difference(&given).collect();
    assert!(
        missing.is_empty(),
        "docker/bridge.toml names {missing:?}, which compose does not set"
    );

    // Paths.
    let copies = dockerfile_copies(&dockerfile);
    for (src, _, from_stage) in &copies {
        assert!(
            *from_stage || repo(src).exists(),
            "the Dockerfile copies {src}, which is not in the repository"
        );
    }
    assert!(
        copies.iter().any(
            |(src, dst, _)| src == "docker/bridge.toml" && dst == "/etc/cem-bridge/bridge.toml"
        ) && dockerfile.contains("CEM_BRIDGE_CONFIG=/etc/cem-bridge/bridge.toml"),
        "the image runs docker/bridge.toml"
    );
    let workdir = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("WORKDIR "))
        .expect("a WORKDIR")
        .to_string();
    let volumes: Vec<String> = bridge["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.split(':').nth(1).map(str::to_string))
        .collect();
    let in_image = |p: &Path| {
        copies
            .iter()
            .map(|c| c.1.as_str())
            .chain(volumes.iter().map(String::as_str))
            .chain([workdir.as_str()])
            .any(|root| p.starts_with(root))
    };
    let mut paths: Vec<(String, PathBuf, bool)> = Vec::new();
    for s in &cfg.sources {
        for m in &s.mappings {
            paths.push((format!("{} mappings", s.name), PathBuf::from(m), true));
        }
        for f in s.tls_cert.iter().chain(&s.tls_key) {
            paths.push((format!("{} TLS file", s.name), f.clone(), true));
        }
    }
    for (_, f) in cfg.lists.files() {
        paths.push(("[lists] file".into(), f.to_path_buf(), true));
    }
    if cfg.cem.mode == cem_bridge::config::peers::CemMode::Shadow {
        // Created at start: its folder must exist.
        paths.push((
            "[cem] shadow_file".into(),
            cfg.cem.shadow_file.clone(),
            false,
        ));
    }
    if let Some(file) = cfg.store.url.strip_prefix("sqlite://") {
        paths.push(("[store] url".into(), PathBuf::from(file), false));
    }
    for (what, p, exists) in paths {
        assert!(
            p.is_absolute(),
            "{what}: {} should be absolute in the image config",
            p.display()
        );
        let check = if exists {
            p.clone()
        } else {
            p.parent().unwrap().to_path_buf()
        };
        assert!(
            in_image(&check),
            "{what}: {} is not in the image (COPY targets, volumes, WORKDIR {workdir})",
            check.display()
        );
    }

    // The health check uses what the image has.
    assert!(
        dockerfile.contains("HEALTHCHECK")
            && dockerfile.contains("CMD [\"cem-bridge\", \"health\"]"),
        "the image checks its health with `cem-bridge health`"
    );
    assert!(
        copies.iter().any(|c| c.1 == "/usr/local/bin/cem-bridge"),
        "the binary is in the image"
    );
}

/// The systemd unit runs the bridge as its own user, restarts it on failure, reloads with
/// SIGHUP (which the bridge handles: app/reload.rs) and takes its keys from the env file.
#[test]
fn systemd_unit_is_hardened_and_reloads_with_sighup() {
    let unit = read("packaging/cem-bridge.service");
    for line in [
        "User=cem-bridge",
        "Restart=on-failure",
        "EnvironmentFile=/etc/cem-bridge/env",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=cem-bridge",
        "CapabilityBoundingSet=",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "packaging/cem-bridge.service lacks {line:?}"
        );
    }
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.contains(" run -c /etc/cem-bridge/bridge.toml"),
        "{exec}"
    );
}

/// `--version` says the release and the commit it was built from.
#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(bridge_bin())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.trim(),
        format!(
            "cem-bridge {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            git_commit()
        )
    );
}

/// `/health` answers `{"status":"ok","version","commit"}`, and `cem-bridge health` exits 0
/// while the bridge runs and 1 once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_version_and_commit_and_the_health_command_follows_it() {
    let setup = Setup::new("health-version", "http://127.0.0.1:9/unused");
    let bridge = setup.start().await;
    let addr = bridge.ops_addr().expect("ops server on");
    let url = format!("http://{addr}/health");
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "commit": git_commit(),
        })
    );
    let probe = |url: String| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(bridge_bin())
                .args(["health", "--url", &url])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let up = probe(url.clone()).await;
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("\"status\":\"ok\""));
    bridge.shutdown().await;
    let down = probe(url).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains(&format!("cannot connect to {addr}")),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    cleanup(&setup).await;
}
