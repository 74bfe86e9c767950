//! The faults a chaos run injects from outside the bridge: RabbitMQ (`rabbitmqctl`), PostgreSQL
//! (`pg_ctlcluster`) and the SQLite store's own small disk; and what is recorded of each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The SQLite store on a small RAM disk of its own (tmpfs, mounted as root), so the bench can
/// fill it up and free it again.
pub(super) struct SmallDisk {
    pub(super) mount: PathBuf,
}

impl SmallDisk {
    /// Mount a 2 GiB tmpfs at `dir/disk` (RAM only as used); `None` when this is not possible here (not root, no
    /// `mount`): the disk-full fault is then left out and the report says so.
    pub(super) fn mount(dir: &Path) -> Option<Self> {
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2g", "tmpfs"])
            .arg(&mount)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { mount })
    }

    /// Write a filler file until the disk is full; its path.
    pub(super) fn fill(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let path = self.mount.join("filler");
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        Ok(path)
    }

    pub(super) fn free(&self, filler: &Path) {
        let _ = std::fs::remove_file(filler);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// One injected fault: what, when it ended (the bridge or the peer back), and how long until
/// the first message was settled after it.
pub(super) struct Fault {
    pub(super) what: String,
    pub(super) ended: Instant,
    /// Recovery is the next settled message (broker and store faults) or the next survey the
    /// CEM accepted (CEM faults).
    pub(super) pushes: bool,
    pub(super) progress_at_end: u64,
    pub(super) recovered: Option<Duration>,
}

pub(super) fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("rabbitmqctl (the local RabbitMQ's CLI) is not on PATH")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Close the bridge's connections to `queue` from the broker side. How many were closed.
pub(super) fn close_bridge_connections(queue: &str) -> anyhow::Result<usize> {
    let list = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "-q",
        "--no-table-headers",
    ])?;
    let mut n = 0;
    for pid in list
        .lines()
        .filter(|l| l.contains(queue))
        .filter_map(|l| l.split('\t').next())
    {
        rabbitmqctl(&[
            "close_connection",
            pid,
            "chaos bench: broker-side disconnect",
        ])?;
        n += 1;
    }
    Ok(n)
}

pub(super) fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL's cluster list (/etc/postgresql)")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    let st = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .context("pg_ctlcluster")?;
    if !st.success() {
        bail!("pg_ctlcluster {version} main restart failed");
    }
    Ok(())
}
