//! Starts the bridge from a [`Config`]: secrets, store, sink, the ops server, one ingest task
//! per source and the scheduler; stops them in order on shutdown.

pub mod reload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::mapping::MappingSet;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::http::{self, state::OpsState, telemetry};
use crate::ingest::context::IngestContext;
use crate::ingest::run_source;
use crate::privacy::vault::VaultCipher;
use crate::process::clock::Clock;
use crate::process::health::SourceHealth;
use crate::process::shutdown::{self, ShutdownTrigger};
use crate::store::{Store, StoreOptions};

/// A fixed, publicly known key for the demo config only (`allow_demo_key = true`).
const DEMO_KEY: &[u8] = b"cem-bridge-demo-key: public, never use in production";

/// Secrets read from the environment (never from the config file).
#[derive(Default, Clone)]
pub struct Secrets {
    pub pseudonym_key: Option<Vec<u8>>,
    pub cem_token: Option<String>,
    /// Bearer token for the ops server's data routes (`[ops] token_env`).
    pub ops_token: Option<String>,
    /// The current vault key (`[vault] key_env`), 32 bytes.
    pub vault_key: Option<Vec<u8>>,
    /// Keys of earlier rotations: (key id, key).
    pub vault_previous: Vec<(String, Vec<u8>)>,
    /// The token the CEM presents at `POST /contact/resolve` (`[cem] resolve_token_env`).
    pub resolve_token: Option<String>,
    /// The CEM's ticket webhook signing secret (`[tickets] webhook_secret_env`).
    pub webhook_secret: Option<Vec<u8>>,
    /// The call center's result-callback signing secret (`[tickets] callcenter_secret_env`).
    pub callcenter_secret: Option<Vec<u8>>,
    pub hcrm_token: Option<String>,
    pub callcenter_token: Option<String>,
    pub cem_results_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets([redacted])")
    }
}

/// Decode a key from the environment: 64+ hex digits are decoded, anything else is raw bytes.
pub fn key_bytes(value: &str) -> Vec<u8> {
    let v = value.trim();
    if v.len() >= 64 && v.len().is_multiple_of(2) && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..v.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok())
            .collect()
    } else {
        v.as_bytes().to_vec()
    }
}

/// A vault key: exactly 64 hex digits, else empty (refused with a clear message): a
/// passphrase of 32 characters must not pass as an AES-256 key.
fn vault_key_bytes(value: &str) -> Vec<u8> {
    let v = value.trim();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        key_bytes(v)
    } else {
        Vec::new()
    }
}

impl Secrets {
    pub fn from_env(cfg: &Config) -> Self {
        Self {
            pseudonym_key: std::env::var(&cfg.pseudonym.key_env)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| key_bytes(&v)),
            cem_token: cfg
                .cem
                .token_env
                .as_ref()
                .and_then(|e| std::env::var(e).ok()),
            ops_token: cfg
                .ops
                .token_env
                .as_ref()
                .and_then(|e| std::env::var(e).ok())
                .filter(|t| !t.trim().is_empty()),
            vault_key: std::env::var(&cfg.vault.key_env)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| vault_key_bytes(&v)),
            vault_previous: cfg
                .vault
                .previous
                .iter()
                .filter_map(|p| {
                    let v = std::env::var(&p.key_env).ok()?;
                    Some((p.key_id.clone(), vault_key_bytes(&v)))
                })
                .collect(),
            resolve_token: cfg
                .cem
                .resolve_token_env
                .as_ref()
                .and_then(|e| std::env::var(e).ok())
                .filter(|t| !t.trim().is_empty()),
            webhook_secret: cfg
                .tickets
                .as_ref()
                .and_then(|t| std::env::var(&t.webhook_secret_env).ok())
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().as_bytes().to_vec()),
            callcenter_secret: cfg
                .tickets
                .as_ref()
                .and_then(|t| std::env::var(&t.callcenter_secret_env).ok())
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().as_bytes().to_vec()),
            hcrm_token: cfg
                .hcrm
                .token_env
                .as_ref()
                .and_then(|e| std::env::var(e).ok()),
            callcenter_token: cfg
                .callcenter
                .token_env
                .as_ref()
                .and_then(|e| std::env::var(e).ok()),
            cem_results_token: cfg
                .cem_results
                .as_ref()
                .and_then(|p| p.token_env.as_ref())
                .and_then(|e| std::env::var(e).ok()),
        }
    }
}

/// The CEM's webhook secret when `[tickets]` is configured (`None` when it is not); refused
/// when missing or shorter than 16 characters.
pub fn webhook_secret(cfg: &Config, secrets: &Secrets) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(t) = &cfg.tickets else {
        return Ok(None);
    };
    let Some(secret) = secrets.webhook_secret.clone() else {
        anyhow::bail!(
            "[tickets] is configured but the webhook secret is missing: set the environment variable {} to the secret shared with the CEM (`openssl rand -hex 32`)",
            t.webhook_secret_env
        );
    };
    Ok(Some(secret))
}

/// Shortest token or signing secret taken for a guarded route: 32 characters, as many as
/// `openssl rand -hex 16` prints. `/contact/resolve` answers with mobiles.
pub const MIN_SECRET_CHARS: usize = 32;

/// The tokens and webhook secrets that are set but too short, one line each naming the
/// environment variable; `run` and `check` refuse to start with any.
pub fn short_secrets(cfg: &Config, secrets: &Secrets) -> Vec<String> {
    let mut short = Vec::new();
    let mut check = |var: Option<&str>, len: Option<usize>, what: &str| {
        if let (Some(var), Some(len)) = (var, len)
            && len < MIN_SECRET_CHARS
        {
            short.push(format!(
                "{var} ({what}) is {len} characters long; use at least {MIN_SECRET_CHARS}, e.g. `openssl rand -hex 32`"
            ));
        }
    };
    check(
        cfg.ops.token_env.as_deref(),
        secrets.ops_token.as_ref().map(|t| t.trim().chars().count()),
        "the ops bearer token",
    );
    check(
        cfg.cem.resolve_token_env.as_deref(),
        secrets
            .resolve_token
            .as_ref()
            .map(|t| t.trim().chars().count()),
        "the CEM's token for POST /contact/resolve",
    );
    if let Some(t) = &cfg.tickets {
        check(
            Some(&t.webhook_secret_env),
            secrets.webhook_secret.as_ref().map(Vec::len),
            "the CEM webhook secret",
        );
        check(
            Some(&t.callcenter_secret_env),
            secrets.callcenter_secret.as_ref().map(Vec::len),
            "the call center's webhook secret",
        );
    }
    short
}

/// [`short_secrets`] as one error.
pub fn refuse_short_secrets(cfg: &Config, secrets: &Secrets) -> anyhow::Result<()> {
    let short = short_secrets(cfg, secrets);
    if short.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} secret(s) too short to guard routes that reveal personal data:\n  {}",
        short.len(),
        short.join("\n  ")
    )
}

/// Follow-up planning when the ticket loop runs and `[followup] enabled` (the default).
fn followup_ctx(cfg: &Config) -> anyhow::Result<Option<crate::store::followups::FollowupCtx>> {
    let Some(t) = &cfg.tickets else {
        return Ok(None);
    };
    if !cfg.followup.enabled {
        return Ok(None);
    }
    Ok(Some(crate::store::followups::FollowupCtx {
        settings: cfg.followup.clone(),
        windows: t.windows().map_err(anyhow::Error::msg)?,
    }))
}

/// The ticket loop's parts, when `[tickets]` is configured: the intake the ops server serves
/// and the worker that sends to HCRM and the call center.
async fn ticket_loop(
    cfg: &Config,
    secrets: &Secrets,
    store: &Store,
    vault: &VaultCipher,
    lists: &Arc<crate::privacy::lists::Lists>,
    clock: Clock,
    instance: &str,
) -> anyhow::Result<
    Option<(
        Arc<crate::tickets::intake::TicketIntake>,
        crate::tickets::worker::TicketWorker,
    )>,
> {
    let Some(t) = &cfg.tickets else {
        return Ok(None);
    };
    let Some(secret) = webhook_secret(cfg, secrets)? else {
        return Ok(None);
    };
    if secrets.callcenter_secret.is_none() {
        warn!(
            "{} is not set: the call center's result callbacks (POST /hooks/callcenter/results) get 401 until it is",
            t.callcenter_secret_env
        );
    }
    let ctx = crate::store::tickets::TicketCtx {
        cipher: vault.clone(),
        zone: cfg.zone(),
        calendar: t.calendar().map_err(anyhow::Error::msg)?,
        windows: t.windows().map_err(anyhow::Error::msg)?,
        gap_hold_ms: t.gap_hold_ms(),
        cem_results: cfg.cem_results.is_some(),
    };
    use cem_connectors::sink::Peer;
    let peer = |peer, p, token| crate::sinks::from_peer_config(peer, p, token, &clock);
    let hcrm = peer(Peer::Hcrm, &cfg.hcrm, secrets.hcrm_token.clone()).await?;
    let callcenter = peer(
        Peer::CallCenter,
        &cfg.callcenter,
        secrets.callcenter_token.clone(),
    )
    .await?;
    let cem_results = match &cfg.cem_results {
        Some(p) => Some(peer(Peer::CemResults, p, secrets.cem_results_token.clone()).await?),
        None => None,
    };
    let wake = Arc::new(Notify::new());
    let intake = Arc::new(crate::tickets::intake::TicketIntake {
        store: store.clone(),
        ctx: ctx.clone(),
        secret,
        callcenter_secret: secrets.callcenter_secret.clone(),
        timestamp_header: t.timestamp_header.clone(),
        signature_header: t.signature_header.clone(),
        max_skew_s: t.max_skew_s,
        clock: clock.clone(),
        wake: wake.clone(),
    });
    let worker = crate::tickets::worker::TicketWorker {
        store: store.clone(),
        ctx,
        hcrm,
        callcenter,
        cem_results,
        clock,
        owner: format!("{instance}-tickets"),
        poll_interval: std::time::Duration::from_millis(t.poll_interval_ms),
        lease_ms: i64::try_from(t.lease_ms).unwrap_or(60_000),
        concurrency: t.concurrency,
        wake,
        followup: cfg.followup.clone(),
        lists: lists.clone(),
    };
    Ok(Some((intake, worker)))
}

/// The vault cipher from the environment keys, or the demo key where allowed (R-ANO-6).
pub fn vault_cipher(cfg: &Config, secrets: &Secrets) -> anyhow::Result<VaultCipher> {
    let v = &cfg.vault;
    let key = match &secrets.vault_key {
        Some(k) => k.clone(),
        None if v.allow_demo_key => {
            warn!(
                "no {} in the environment: using the public DEMO vault key. Names and phones in the store are NOT protected; set {} (openssl rand -hex 32) and remove allow_demo_key before real data",
                v.key_env, v.key_env
            );
            <sha2::Sha256 as sha2::Digest>::digest(DEMO_KEY).to_vec()
        }
        None => anyhow::bail!(
            "the vault key is missing: set the environment variable {} to 32 random bytes as 64 hex digits (e.g. `export {}=$(openssl rand -hex 32)`); it is never read from the config file",
            v.key_env,
            v.key_env
        ),
    };
    if key.len() != crate::privacy::vault::KEY_BYTES {
        anyhow::bail!(
            "{} must hold exactly 64 hex digits (32 random bytes: `openssl rand -hex 32`)",
            v.key_env
        );
    }
    for p in &v.previous {
        if !secrets.vault_previous.iter().any(|(id, _)| id == &p.key_id) {
            anyhow::bail!(
                "[vault] previous names key id {:?}, but the environment variable {} is not set",
                p.key_id,
                p.key_env
            );
        }
    }
    VaultCipher::new((&v.key_id, &key), &secrets.vault_previous)
        .with_context(|| format!("vault key from {}", v.key_env))
}

/// The pseudonymizer from the environment key, or the demo key where allowed.
pub fn pseudonymizer(cfg: &Config, secrets: &Secrets) -> anyhow::Result<Pseudonymizer> {
    let key = match &secrets.pseudonym_key {
        Some(k) => k.clone(),
        None if cfg.pseudonym.allow_demo_key => {
            warn!(
                "no {} in the environment: using the public DEMO pseudonym key. Pseudonyms are NOT protected; set {} (openssl rand -hex 32) and remove allow_demo_key before real data",
                cfg.pseudonym.key_env, cfg.pseudonym.key_env
            );
            DEMO_KEY.to_vec()
        }
        None => anyhow::bail!(
            "the pseudonym key is missing: set the environment variable {} to at least 32 random bytes (e.g. `export {}=$(openssl rand -hex 32)`); it is never read from the config file",
            cfg.pseudonym.key_env,
            cfg.pseudonym.key_env
        ),
    };
    Pseudonymizer::new(&key, &cfg.pseudonym.key_id)
        .with_context(|| format!("pseudonym key from {}", cfg.pseudonym.key_env))
}

/// A running bridge.
pub struct Bridge {
    trigger: ShutdownTrigger,
    sources: Vec<JoinHandle<()>>,
    scheduler: JoinHandle<()>,
    /// The ops server and the background tasks (gauges, retention), stopped last.
    background: Vec<JoinHandle<()>>,
    ops_addr: Option<SocketAddr>,
    health: SourceHealth,
    /// Wakes the scheduler (ingest does after a commit that made jobs).
    scheduler_wake: Arc<Notify>,
    pub store: Store,
    /// The mappings in use (reloaded on SIGHUP and on file change).
    pub mappings: Arc<crate::process::live::Mappings>,
    /// The survey policy in use (`[surveys]`, reloaded with the config file).
    pub policy: Arc<crate::process::live::Policy>,
}

/// `host-pid` names this instance in job leases, outbox claims and consumer tags; a second
/// bridge started in the same process (tests of two instances) gets `host-pid-2`, and so on.
fn instance_id() -> String {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    match n {
        1 => format!("{host}-{}", std::process::id()),
        n => format!("{host}-{}-{n}", std::process::id()),
    }
}

/// Compile each source's mappings; every problem in every file is reported at once.
pub fn load_mappings(
    cfg: &Config,
    zone: &jiff::tz::TimeZone,
) -> anyhow::Result<HashMap<String, Arc<MappingSet>>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for s in &cfg.sources {
        match crate::config::mappings::load(&s.mappings, zone) {
            Ok(set) => {
                let order: Vec<&str> = set.mappings.iter().map(|m| m.name.as_str()).collect();
                info!(connector = %s.name, mappings = set.mappings.len(), order = %order.join(", "), "mappings loaded (tried in this order)");
                for shadow in set.unreachable() {
                    warn!(connector = %s.name, "{shadow}");
                }
                out.insert(s.name.clone(), Arc::new(set));
            }
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| format!("[source {}] {e}", s.name)))
            }
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "the mapping files have {} problem(s); fix them (`cem-bridge check` lists them too):\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    Ok(out)
}

/// Read the opt-out and staff lists; every problem of every file at once.
pub fn load_lists(
    cfg: &Config,
    pseudo: &Pseudonymizer,
) -> anyhow::Result<cem_pipeline::lists::ExclusionLists> {
    crate::privacy::lists::load(&cfg.lists, pseudo, &cfg.zone()).map_err(|problems| {
        anyhow::anyhow!(
            "the [lists] files have {} problem(s); fix them (`cem-bridge check` lists them too):\n{}",
            problems.len(),
            problems.join("\n")
        )
    })
}

/// Start every task on the clock of `CEM_BRIDGE_CLOCK_START` (else the system clock).
pub async fn start(cfg: Config, secrets: Secrets) -> anyhow::Result<Bridge> {
    start_with_clock(cfg, secrets, Clock::from_env()?).await
}

/// Start every task. Fails fast (before consuming anything) on a bad key, store or sink.
pub async fn start_with_clock(
    cfg: Config,
    secrets: Secrets,
    clock: Clock,
) -> anyhow::Result<Bridge> {
    if clock.is_shifted() {
        warn!(now = %clock.now(), "the clock is shifted (CEM_BRIDGE_CLOCK_START): for tests and demos only");
    }
    let instance = instance_id();
    let started = clock.now_ms();
    let catch_up = crate::surveys::catchup::Shared::default();
    refuse_short_secrets(&cfg, &secrets)?;
    let pseudo = pseudonymizer(&cfg, &secrets)?;
    let vault = vault_cipher(&cfg, &secrets)?;
    let lists = Arc::new(crate::privacy::lists::Lists::new(load_lists(
        &cfg, &pseudo,
    )?));
    for w in cfg.warnings() {
        warn!("{w}");
    }
    if let Some(var) = &cfg.cem.resolve_token_env
        && secrets.resolve_token.is_none()
    {
        warn!(
            "[cem] resolve_token_env names {var}, which is not set: POST /contact/resolve answers 401 to everyone until it is"
        );
    }
    let store = Store::open(
        &cfg.store.url,
        &StoreOptions {
            max_connections: cfg.store.max_connections,
            sqlite_synchronous: cfg.store.sqlite_synchronous.clone(),
            ..Default::default()
        },
    )
    .await?
    .with_clock(clock.clone());
    let sink = crate::sinks::cem::from_config(&cfg.cem, secrets.cem_token.clone(), &clock).await?;
    let tickets = ticket_loop(
        &cfg,
        &secrets,
        &store,
        &vault,
        &lists,
        clock.clone(),
        &instance,
    )
    .await?;
    let health = SourceHealth::new(cfg.sources.iter().map(|s| s.name.as_str()));
    for s in &cfg.sources {
        health.set_kind(&s.name, s.kind.code());
    }
    // Every door ready before anything is consumed: a bad TLS file or a missing secret fails
    // the start, naming the source.
    let mut doors = Vec::with_capacity(cfg.sources.len());
    for s in &cfg.sources {
        let door = s
            .door(&instance)
            .map_err(|e| anyhow::anyhow!("[[source]] {:?}: {e}", s.name))?;
        doors.push(door);
    }
    let ops_token = match (&secrets.ops_token, cfg.ops.needs_token()) {
        (Some(t), true) => Some(t.clone()),
        (None, true) => anyhow::bail!(
            "[ops] listen = {:?} is reachable from other hosts, so the ops data routes need a bearer token: set the environment variable {}",
            cfg.ops.listen,
            cfg.ops
                .token_env
                .as_deref()
                .unwrap_or("named by [ops] token_env")
        ),
        (_, false) => None,
    };
    // Bound before anything is consumed: a taken port fails the start.
    let ops_listener = match cfg.ops.listen_addr() {
        Some(addr) => Some((telemetry::metrics_handle()?, http::bind(addr).await?)),
        None => None,
    };
    let zone = cfg.zone();
    let mappings = Arc::new(crate::process::live::Mappings::new(load_mappings(
        &cfg, &zone,
    )?));
    let policy = Arc::new(crate::process::live::Policy::new(cfg.surveys.clone()));
    let unmatched = crate::process::unmatched::UnmatchedCodes::default();
    let ctx = Arc::new(IngestContext {
        mappings: mappings.clone(),
        store: store.clone(),
        pseudo: pseudo.clone(),
        vault: vault.clone(),
        lists: lists.clone(),
        tenant: cfg.tenant.clone(),
        policy: policy.clone(),
        fields: cfg.anonymization.cem.clone(),
        zone,
        clock: clock.clone(),
        scheduler_wake: Arc::new(Notify::new()),
        health: health.clone(),
        followup: followup_ctx(&cfg)?,
        unmatched: unmatched.clone(),
    });
    let (trigger, _) = shutdown::channel();
    let mut background = vec![
        tokio::spawn(crate::store::retention::run(
            store.clone(),
            cfg.retention.clone(),
            trigger.subscribe(),
        )),
        // SQLite's WAL copied into the database file beside the writer, not inside its commits.
        tokio::spawn(crate::store::checkpoint::run(
            store.clone(),
            trigger.subscribe(),
        )),
        // The backlog: queue depths, rates, drain times (gauge, /api/summary, the page).
        tokio::spawn(
            crate::ingest::backlog::Poller::new(&cfg.sources, health.clone())
                .run(trigger.subscribe()),
        ),
        // After an outage: what was overdue at the start, and what became of it.
        tokio::spawn(crate::surveys::catchup::run(
            store.clone(),
            started,
            catch_up.clone(),
            trigger.subscribe(),
        )),
        // One info line a minute says what happened; each message's lines are at debug.
        tokio::spawn(crate::process::tally::run(
            std::time::Duration::from_secs(60),
            trigger.subscribe(),
        )),
    ];
    background.push(tokio::spawn(crate::app::reload::run(
        crate::app::reload::Reloadable {
            mappings: mappings.clone(),
            sources: cfg.sources.clone(),
            zone: cfg.zone(),
            lists: lists.clone(),
            lists_cfg: cfg.lists.clone(),
            pseudo,
            policy: policy.clone(),
            config: cfg.file.clone(),
        },
        trigger.subscribe(),
    )));
    let mut ops_addr = None;
    if let Some((prom, listener)) = ops_listener {
        ops_addr = listener.local_addr().ok();
        telemetry::register_zero_series(cfg.sources.iter().map(|s| s.name.as_str()));
        background.push(tokio::spawn(telemetry::run_gauges(
            store.clone(),
            prom.clone(),
            clock.clone(),
            trigger.subscribe(),
        )));
        background.push(http::serve(
            listener,
            OpsState {
                prom,
                store: store.clone(),
                sources: health.clone(),
                token: ops_token,
                zone: cfg.zone(),
                clock: clock.clone(),
                vault: vault.clone(),
                resolve_token: secrets.resolve_token.clone(),
                tickets: tickets.as_ref().map(|(i, _)| i.clone()),
                mappings: mappings.clone(),
                policy: policy.clone(),
                auth: Arc::default(),
                started,
                catch_up: catch_up.clone(),
                unmatched: unmatched.clone(),
            },
            trigger.subscribe(),
        ));
    }
    if let Some((intake, worker)) = tickets {
        let queue = cfg.tickets.as_ref().and_then(|t| t.queue.clone());
        if ops_addr.is_none() && queue.is_none() {
            warn!(
                "[tickets] is configured but [ops] listen is empty and there is no [tickets.queue]: ticket updates have no way in"
            );
        }
        if let Some(q) = queue {
            background.push(tokio::spawn(crate::tickets::queue::run(
                intake,
                q,
                instance.clone(),
                trigger.subscribe(),
            )));
        }
        background.push(tokio::spawn(crate::tickets::worker::run(
            worker,
            trigger.subscribe(),
        )));
    }
    let sources = cfg
        .sources
        .iter()
        .zip(doors)
        .map(|(s, door)| {
            tokio::spawn(run_source(
                ctx.clone(),
                s.clone(),
                door,
                trigger.subscribe(),
            ))
        })
        .collect();
    let scheduler_wake = ctx.scheduler_wake.clone();
    let scheduler = tokio::spawn(crate::surveys::scheduler::run(
        crate::surveys::scheduler::Scheduler {
            store: store.clone(),
            sink,
            cfg: cfg.scheduler.clone(),
            policy: policy.clone(),
            clock,
            owner: instance,
            wake: ctx.scheduler_wake.clone(),
            vault,
            contact_mode: cfg.cem.contact_mode,
            lists,
        },
        trigger.subscribe(),
    ));
    info!(tenant = %cfg.tenant, store = ?store.backend(), sources = cfg.sources.len(), ops = ?ops_addr, "cem-bridge started");
    Ok(Bridge {
        trigger,
        sources,
        scheduler,
        background,
        ops_addr,
        health,
        scheduler_wake,
        store,
        mappings,
        policy,
    })
}

impl Bridge {
    /// Where the ops server listens (the bound port when the config said port 0), if enabled.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Where a listening `[[source]]` (MLLP, SOAP) is bound, once it is listening — its real
    /// port when the config said port 0.
    pub fn door_addr(&self, source: &str) -> Option<SocketAddr> {
        self.health.address(source).map(|(a, _)| a)
    }

    /// Deliveries `source` acked since the start (a queue's deliveries are acked in order).
    pub fn acked(&self, source: &str) -> u64 {
        self.health.acked(source)
    }

    /// Make the scheduler claim due jobs now rather than at its next poll (after the clock was
    /// moved past their due time, say).
    pub fn wake_scheduler(&self) {
        self.scheduler_wake.notify_one();
    }

    /// Stop consuming, finish in-flight batches and pushes, close the store.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        for s in self.sources {
            let _ = s.await;
        }
        let _ = self.scheduler.await;
        for t in self.background {
            let _ = t.await;
        }
        self.store.close().await;
        info!("cem-bridge stopped");
    }

    /// [`shutdown`](Self::shutdown) within `limit` (`shutdown_timeout_s`), or an error saying
    /// what was left. Nothing waits for work past the limit: the process is to exit, and what
    /// did not finish was not acked (the broker redelivers it) or not recorded (a claimed job
    /// is sent again after its lease, under the same idempotency key).
    pub async fn shutdown_within(self, limit: std::time::Duration) -> anyhow::Result<()> {
        if tokio::time::timeout(limit, self.shutdown()).await.is_ok() {
            return Ok(());
        }
        let secs = limit.as_secs();
        tracing::error!(
            shutdown_timeout_s = secs,
            "in-flight work did not finish within shutdown_timeout_s; exiting without it (nothing uncommitted was acked)"
        );
        anyhow::bail!(
            "shutdown did not finish within shutdown_timeout_s = {secs} s; work in flight was left: unacked deliveries come back from the broker, and pushes not recorded are sent again after their lease"
        )
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
