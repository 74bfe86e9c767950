//! `cem-bridge` command line: run, check, test, map, schema, publish, dlq, trace, health, bench.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cem_bridge::app::{self, Secrets};
use cem_bridge::cli::bench;
use cem_bridge::cli::inspect;
use cem_bridge::cli::map;
use cem_bridge::cli::publish::{self, PublishRequest, publish_files};
use cem_bridge::config::{Config, LogFormat};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cem-bridge",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CEM_BRIDGE_COMMIT"), ")"),
    about = "HIS/HL7 events from RabbitMQ to anonymised CEM survey pushes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the bridge until Ctrl-C / SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a config file, every mapping its sources name, and the pseudonym key in the
    /// environment, without running. Lists every problem with file:line:column.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also run every file of this folder through each source's mappings and list the codes
        /// their tables do not know (kept as the value with `unmatched: keep`).
        #[arg(long, value_name = "DIR")]
        sample: Option<PathBuf>,
    },
    /// Run the test cases of mapping files (folders are searched for *.yaml).
    Test {
        /// Mapping files or folders.
        #[arg(default_value = "mappings")]
        paths: Vec<String>,
        /// Also list the cases that pass.
        #[arg(short, long)]
        verbose: bool,
        /// Time zone for local times in messages.
        #[arg(long, default_value = "Asia/Shanghai")]
        time_zone: String,
    },
    /// Dry-run one message: the event, the anonymised CEM payload and the survey decision.
    Map {
        /// Mapping files or folders (default: the mappings of the config's first source).
        #[arg(short, long = "mapping")]
        mappings: Vec<String>,
        /// Config for tenant, pseudonym key, survey policy, facility and time zone.
        #[arg(
            short,
            long,
            env = "CEM_BRIDGE_CONFIG",
            default_value = "config/bridge.toml"
        )]
        config: PathBuf,
        /// AMQP header the message would arrive with, e.g. --header service-code=S0032.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Show personal values in clear (your own test data only; masked by default).
        #[arg(long)]
        reveal: bool,
        /// The message file.
        file: PathBuf,
    },
    /// Print the JSON Schema of mapping files or of bridge.toml (committed in schemas/).
    Schema {
        #[arg(value_enum, default_value = "mapping")]
        what: SchemaKind,
    },
    /// Publish files to a queue as persistent messages with publisher confirms.
    Publish {
        /// Take the broker URL and queue from this config's first source.
        #[arg(
            short,
            long,
            env = "CEM_BRIDGE_CONFIG",
            default_value = "config/bridge.toml"
        )]
        config: PathBuf,
        /// Queue to publish to (default: the config's first source queue).
        #[arg(short, long)]
        queue: Option<String>,
        /// Broker URL (default: the config's first source URL).
        #[arg(long)]
        amqp: Option<String>,
        /// Extra message header, e.g. --header service-code=S0023 (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Send over MLLP to HOST:PORT (an `kind = "mllp"` source) instead of RabbitMQ, one
        /// message after the other's ACK; prints each ACK.
        #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["soap", "queue", "amqp"])]
        mllp: Option<String>,
        /// Call HIPMessageServer at this URL (a `kind = "soap"` source) instead of RabbitMQ;
        /// prints each acknowledgement.
        #[arg(long, value_name = "URL", conflicts_with_all = ["queue", "amqp"], requires = "action")]
        soap: Option<String>,
        /// With --soap: the service code sent as `action`, e.g. S0032.
        #[arg(long)]
        action: Option<String>,
        /// With --soap: send SOAP 1.2 (default SOAP 1.1 with SOAPAction, as 东华 HSB does).
        #[arg(long)]
        soap12: bool,
        /// With --soap: the environment variable holding a bearer token to send.
        #[arg(long)]
        token_env: Option<String>,
        /// Files to send, one message each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Dead letters recorded in the store (the bodies stay in the dead-letter queues).
    Dlq {
        #[command(subcommand)]
        what: DlqCmd,
    },
    /// Everything the store knows about a message id, survey job id or patient pseudonym (pk_…):
    /// decisions with rule and reason, jobs with status and attempts, dead letters.
    Trace {
        #[command(flatten)]
        config: ConfigArg,
        /// Message id (MSH-10), job id, or patient pseudonym `pk_…`.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running bridge's `/health` (the ops server): exit 0 when it answers 200 "ok",
    /// else 1. For container health checks and monitors without curl.
    Health {
        /// The URL to ask (default: `/health` on the config's `[ops] listen`).
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Measure throughput on this machine and print the figures (needs RabbitMQ).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaKind {
    /// Mapping files (YAML).
    Mapping,
    /// bridge.toml.
    Config,
}

/// The bridge config (`bridge.toml`).
#[derive(Args)]
struct ConfigArg {
    #[arg(
        short,
        long,
        env = "CEM_BRIDGE_CONFIG",
        default_value = "config/bridge.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// The newest dead letters: id, time, connector, reason, message id, detail.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back through a mapping: `--dry-run` shows, per message, what the
    /// configured mappings and a new `--mapping` make of it; without it, every message the
    /// mapping now accepts is republished to its source queue (and marked replayed).
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Only these dead letter ids (as `dlq list` shows); default: all not replayed yet.
        ids: Vec<i64>,
        /// A new mapping file or folder to use instead of the configured ones (repeatable).
        #[arg(long = "mapping")]
        mappings: Vec<String>,
        /// Show what would happen; send and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only dead letters of this connector.
        #[arg(long)]
        connector: Option<String>,
        /// Only dead letters with this reason (e.g. missing_patient_id).
        #[arg(long)]
        reason: Option<String>,
        /// Also the ones replayed before.
        #[arg(long)]
        again: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// One dead letter in full, and where its body is.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The id `dlq list` shows.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Decode+map rate per format against the bare parser of the same bytes (no broker).
    Decode,
    /// Due survey jobs pushed to a local HTTP recorder: store-only and full dispatch rates on
    /// SQLite, and on PostgreSQL with one and two instances (issue 5).
    Dispatch {
        /// Due jobs per run.
        #[arg(long, default_value_t = cem_bridge::cli::bench::dispatch::DEFAULT_COUNT)]
        count: usize,
        /// PostgreSQL admin URL (a scratch database is created and dropped); `none` = SQLite only.
        #[arg(long, default_value = cem_bridge::cli::bench::dispatch::DEFAULT_POSTGRES)]
        postgres: String,
    },
    /// The bridge as a child process under faults (kills, broker outages, a failing CEM,
    /// PostgreSQL restarts) with every message accounted for at the end (issue 22).
    Chaos {
        /// Distinct messages in the stream.
        #[arg(long, default_value_t = cem_bridge::cli::bench::chaos::DEFAULT_COUNT)]
        count: usize,
        /// SIGKILLs of the bridge (each followed by a restart).
        #[arg(long, default_value_t = cem_bridge::cli::bench::chaos::DEFAULT_KILLS)]
        kills: usize,
        /// Broker URL; the bench creates and deletes its own uniquely named queue.
        #[arg(long, default_value = bench::DEFAULT_AMQP)]
        amqp: String,
        /// PostgreSQL admin URL: run on a scratch database there and restart PostgreSQL
        /// mid-stream (needs pg_ctlcluster); without it, SQLite.
        #[arg(long)]
        postgres: Option<String>,
        /// Seconds each CEM fault lasts (refused, 500, slow, 429).
        #[arg(long, default_value_t = 5)]
        cem_phase_s: u64,
        /// Do not stop and start RabbitMQ (it affects every client of the local broker).
        #[arg(long)]
        no_broker_restart: bool,
        /// Do not fill the SQLite store's disk (a tmpfs of its own, mounted when run as root)
        /// and free it again.
        #[arg(long)]
        no_disk_full: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Issue 17: pure pipeline, raw consume+ack and the floor (consume + parse + ack), bridge
    /// ingest and its ratio to the floor, push to an HTTP CEM unlimited and at 500/s, latency
    /// at 1000 msg/s offered, peak RSS during ingest, the MLLP door; one table or --json.
    Ingest {
        /// Registrations per broker and bridge measurement (the limited push takes at most
        /// 3000, the latency run at most this many).
        #[arg(long, default_value_t = bench::ingest::DEFAULT_COUNT)]
        count: usize,
        /// Broker URL; the bench creates and deletes its own uniquely named queues.
        #[arg(long, default_value = bench::DEFAULT_AMQP)]
        amqp: String,
        /// Store: SQLite in the temp dir when left out; a postgres://user@host:5432/db URL runs
        /// on fresh scratch databases there (created and dropped).
        #[arg(long)]
        store: Option<String>,
        /// Bridges run in-process on the same queue and store for ingest and push.
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// Print one JSON object on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Seconds of the latency run at 1000 msg/s (at most --count messages).
        #[arg(long, default_value_t = bench::ingest::DEFAULT_LATENCY_SECS)]
        latency_secs: u64,
        /// Leave out the MLLP door phase.
        #[arg(long)]
        skip_doors: bool,
        /// The bench bridges' `prefetch` (unacked deliveries; at least --batch-size).
        #[arg(long, default_value_t = bench::ingest::BRIDGE_PREFETCH)]
        prefetch: u16,
        /// The bench bridges' `batch_size` (deliveries per store transaction, at most).
        #[arg(long, default_value_t = bench::ingest::BRIDGE_BATCH)]
        batch_size: usize,
        /// After printing, fail when bridge ingest / the floor (consume + parse + ack) is
        /// below this ratio (a CI regression guard).
        #[arg(long)]
        min_floor_ratio: Option<f64>,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// A panic hook that never prints the panic payload: payloads can quote message text
/// (e.g. a string-slicing panic shows the string), and that may be personal data (R-ANO-8).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "unknown location".into());
        eprintln!(
            "cem-bridge: internal error (panic) at {at}; payload withheld because it may hold message content"
        );
    }));
}

fn init_logs(cfg: Option<&Config>) {
    let level = cfg
        .map(|c| c.log.level.clone())
        .unwrap_or_else(|| "info".into());
    init_logs_at(&level, cfg);
}

fn init_logs_at(level: &str, cfg: Option<&Config>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cfg.map(|c| c.log.format) == Some(LogFormat::Json) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cem-bridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cem-bridge: error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running (the work `run` gave up on at its shutdown timeout) are dropped; a
    // blocking call among them does not hold the exit up.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// Load the config for a read-only command; logs only warnings, to stderr.
fn load_for_reading(path: &std::path::Path) -> anyhow::Result<Config> {
    let cfg = Config::load(path)?;
    init_logs_at("warn", Some(&cfg));
    Ok(cfg)
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run { config } => {
            let cfg = Config::load(&config.config)?;
            init_logs(Some(&cfg));
            let secrets = Secrets::from_env(&cfg);
            let limit = std::time::Duration::from_secs(cfg.shutdown_timeout_s);
            let bridge = app::start(cfg, secrets).await?;
            app::signal().await;
            tracing::info!(
                shutdown_timeout_s = limit.as_secs(),
                "shutdown requested: finishing in-flight work"
            );
            bridge.shutdown_within(limit).await
        }
        Cmd::Check { config, sample } => {
            let config = config.config;
            let cfg = Config::load(&config)?;
            init_logs(Some(&cfg));
            let secrets = Secrets::from_env(&cfg);
            app::refuse_short_secrets(&cfg, &secrets)?;
            let pseudo = app::pseudonymizer(&cfg, &secrets)?;
            app::vault_cipher(&cfg, &secrets)?;
            let tickets = app::webhook_secret(&cfg, &secrets)?.is_some();
            let lists = app::load_lists(&cfg, &pseudo)?;
            for w in cfg.warnings() {
                eprintln!("warning: {w}");
            }
            let zone = cfg.zone();
            let mut problems = 0;
            let mut counts = Vec::new();
            let mut orders = Vec::new();
            let mut samples = Vec::new();
            for s in &cfg.sources {
                // TLS files readable and secrets set, as `run` would need them.
                if let Err(e) = s.door("check") {
                    eprintln!("[[source]] {:?}: {e}", s.name);
                    problems += 1;
                }
                match cem_bridge::config::mappings::load(&s.mappings, &zone) {
                    Ok(set) => {
                        counts.push(format!("{}: {} mapping(s)", s.name, set.mappings.len()));
                        // Issue 18 §3: the order mappings are tried in, and any never chosen.
                        orders.push(format!(
                            "{}: mappings tried in this order: {}",
                            s.name,
                            set.mappings
                                .iter()
                                .map(|m| format!("{} ({}, {})", m.name, m.format.code(), m.file))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        for shadow in set.unreachable() {
                            eprintln!("warning: [[source]] {:?}: {shadow}", s.name);
                        }
                        if let Some(dir) = &sample {
                            let opts = cem_pipeline::decode::DecodeOptions {
                                max_bytes: s.max_message_bytes,
                                zone: zone.clone(),
                                default_charset: cem_pipeline::decode::Charset::from_label(
                                    &s.charset,
                                )
                                .unwrap_or_default(),
                                facility: s.facility().to_string(),
                                ..cem_pipeline::decode::DecodeOptions::at(jiff::Timestamp::now())
                            };
                            samples.push(cem_bridge::cli::map::unknown_codes_report(
                                &s.name, &set, &opts, dir,
                            )?);
                        }
                    }
                    Err(errors) => {
                        for e in &errors {
                            eprintln!("{e}");
                        }
                        problems += errors.len();
                    }
                }
            }
            if problems > 0 {
                anyhow::bail!(
                    "{}: {problems} problem(s) in the sources and their mapping files",
                    config.display()
                );
            }
            println!(
                "{}: ok ({} source(s): {}; store {}, cem {:?}; lists: {} opt-out, {} staff, {} follow-up opt-out)",
                config.display(),
                cfg.sources.len(),
                counts.join(", "),
                cfg.store.url,
                cfg.cem.mode,
                lists.opt_out.len(),
                lists.staff.len(),
                lists.followup_opt_out.len()
            );
            for o in &orders {
                println!("{o}");
            }
            for s in &samples {
                print!("{s}");
            }
            if tickets {
                println!(
                    "tickets: on (POST /hooks/cem/tickets on [ops] listen{}; hcrm {:?}, callcenter {:?}; call outcomes to the CEM: {})",
                    cfg.tickets
                        .as_ref()
                        .and_then(|t| t.queue.as_ref())
                        .map(|q| format!(", and queue {}", q.queue))
                        .unwrap_or_default(),
                    cfg.hcrm.mode,
                    cfg.callcenter.mode,
                    cfg.cem_results
                        .as_ref()
                        .map(|p| format!("{:?}", p.mode))
                        .unwrap_or_else(|| "off".into())
                );
            }
            match (tickets, cfg.followup.enabled) {
                (true, true) => println!(
                    "follow-ups: on (surgical wards {}; calls through the call center, questionnaires {} and reminders {} through the CEM)",
                    cfg.followup.surgical_wards.join(" "),
                    cfg.followup.online_template,
                    cfg.followup.reminder_template
                ),
                (false, true) => println!(
                    "follow-ups: off (they need [tickets]: the ticket loop's call-center sink makes the calls)"
                ),
                (_, false) => println!("follow-ups: off ([followup] enabled = false)"),
            }
            Ok(())
        }
        Cmd::Test {
            paths,
            verbose,
            time_zone,
        } => {
            init_logs(None);
            let zone = jiff::tz::TimeZone::get(&time_zone)
                .with_context(|| format!("--time-zone {time_zone:?} is not an IANA zone"))?;
            if map::test_command(&paths, &zone, verbose)? {
                Ok(())
            } else {
                anyhow::bail!("mapping tests failed")
            }
        }
        Cmd::Map {
            mappings,
            config,
            headers,
            json,
            reveal,
            file,
        } => {
            init_logs(None);
            let cfg = Config::load(&config).with_context(
                || "`map` reads the tenant, pseudonym key and survey policy from a config; pass -c",
            )?;
            let zone = cfg.zone();
            let src = &cfg.sources[0];
            let paths = if mappings.is_empty() {
                src.mappings.clone()
            } else {
                mappings
            };
            let set = cem_bridge::config::mappings::load(&paths, &zone)
                .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
            let pseudo = app::pseudonymizer(&cfg, &Secrets::from_env(&cfg))?;
            let lists = app::load_lists(&cfg, &pseudo)?;
            let now = cem_bridge::process::clock::Clock::from_env()?.now();
            let req = map::MapRequest {
                reveal,
                ..map::MapRequest::for_source(
                    &cfg,
                    src,
                    &set,
                    &file,
                    headers.into_iter().collect(),
                    lists,
                    pseudo,
                    now,
                )
            };
            let report = map::map_report(&req)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", map::render_map_report(&report));
            }
            Ok(())
        }
        Cmd::Schema { what } => {
            let schema = match what {
                SchemaKind::Mapping => cem_pipeline::mapping::schema(),
                SchemaKind::Config => cem_bridge::config::schema(),
            };
            println!("{schema}");
            Ok(())
        }
        Cmd::Publish {
            config,
            queue,
            amqp,
            headers,
            mllp,
            soap,
            action,
            soap12,
            token_env,
            files,
        } => {
            init_logs(None);
            if mllp.is_some() || soap.is_some() {
                let answers = match (&mllp, &soap) {
                    (Some(addr), _) => publish::send_mllp(addr, &files).await?,
                    (None, Some(url)) => {
                        let token = match &token_env {
                            Some(v) => Some(std::env::var(v).with_context(|| {
                                format!("--token-env names {v}, which is not set")
                            })?),
                            None => None,
                        };
                        let action = action.as_deref().unwrap_or_default();
                        publish::send_soap(url, action, soap12, token.as_deref(), &files).await?
                    }
                    (None, None) => unreachable!("checked above"),
                };
                let refused = answers.iter().filter(|a| !a.accepted()).count();
                for a in &answers {
                    if a.text.is_empty() || a.accepted() {
                        println!("{}: {}", a.file, a.code);
                    } else {
                        println!("{}: {} {}", a.file, a.code, a.text);
                    }
                }
                if refused > 0 {
                    anyhow::bail!(
                        "{refused} of {} message(s) were not accepted (AA)",
                        answers.len()
                    );
                }
                println!("{} message(s) accepted", answers.len());
                return Ok(());
            }
            let from_cfg = || -> anyhow::Result<Config> {
                Config::load(&config)
                    .context("pass --queue and --amqp, or a config with a [[source]]")
            };
            let (url, queue) = match (amqp, queue) {
                (Some(u), Some(q)) => (u, q),
                (u, q) => {
                    let cfg = from_cfg()?;
                    let s = &cfg.sources[0];
                    (
                        u.unwrap_or_else(|| s.url.clone()),
                        q.unwrap_or_else(|| s.queue.clone()),
                    )
                }
            };
            let n = publish_files(&PublishRequest {
                url,
                queue: queue.clone(),
                files,
                headers: headers.into_iter().collect::<BTreeMap<_, _>>(),
            })
            .await?;
            println!("published {n} message(s) to {queue} (persistent, confirmed)");
            Ok(())
        }
        Cmd::Dlq {
            what:
                DlqCmd::List {
                    config,
                    limit,
                    json,
                },
        } => {
            let cfg = load_for_reading(&config.config)?;
            let store = inspect::open_store(&cfg).await?;
            let rows = store.recent_dead_letters(limit).await?;
            let total = store.dead_letter_count().await?;
            store.close().await;
            print!(
                "{}",
                inspect::dead_letter_list(&rows, total, &cfg.zone(), json)
            );
            Ok(())
        }
        Cmd::Dlq {
            what: DlqCmd::Show { config, id, json },
        } => {
            let cfg = load_for_reading(&config.config)?;
            let store = inspect::open_store(&cfg).await?;
            let row = store.dead_letter_by_id(id).await?;
            store.close().await;
            let row = row.ok_or(inspect::InspectError::NoDeadLetter(id))?;
            let dlq = cfg
                .sources
                .iter()
                .find(|s| s.name == row.connector)
                .map(|s| s.dlq());
            println!(
                "{}",
                inspect::dead_letter_detail(&row, dlq.as_deref(), &cfg.zone(), json).trim_end()
            );
            Ok(())
        }
        Cmd::Dlq {
            what:
                DlqCmd::Replay {
                    config,
                    ids,
                    mappings,
                    dry_run,
                    connector,
                    reason,
                    again,
                    limit,
                },
        } => {
            let cfg = load_for_reading(&config.config)?;
            let secrets = Secrets::from_env(&cfg);
            let req = cem_bridge::cli::dlq_replay::ReplayRequest {
                filter: cem_bridge::store::ops::ReplayFilter {
                    ids,
                    connector,
                    reason,
                    again,
                    limit,
                },
                mappings,
                dry_run,
            };
            let report = cem_bridge::cli::dlq_replay::replay(&cfg, &secrets, &req).await?;
            print!("{}", report.text);
            Ok(())
        }
        Cmd::Trace { config, id, json } => {
            let cfg = load_for_reading(&config.config)?;
            let store = inspect::open_store(&cfg).await?;
            let trace = store.trace(&id).await?;
            store.close().await;
            if trace.is_empty() {
                return Err(inspect::InspectError::NothingFound(id).into());
            }
            println!(
                "{}",
                inspect::trace_report(&id, &trace, &cfg.zone(), json).trim_end()
            );
            Ok(())
        }
        Cmd::Health { url, config } => {
            let url = match url {
                Some(u) => u,
                None => cem_bridge::cli::health::url_from_config(
                    &Config::load(&config.config)
                        .context("`health` asks the [ops] listen of this config; or pass --url")?,
                )?,
            };
            println!("{}", cem_bridge::cli::health::check(&url).await?);
            Ok(())
        }
        Cmd::Bench {
            what: BenchCmd::Decode,
        } => {
            init_logs(None);
            let figures =
                tokio::task::spawn_blocking(cem_bridge::cli::bench::decode::run).await??;
            print!("{}", cem_bridge::cli::bench::decode::render(&figures));
            Ok(())
        }
        Cmd::Bench {
            what: BenchCmd::Dispatch { count, postgres },
        } => {
            bench::init_logs();
            cem_bridge::cli::bench::dispatch::run(
                &cem_bridge::cli::bench::dispatch::DispatchBench {
                    count,
                    postgres: (postgres != "none").then_some(postgres),
                },
            )
            .await
        }
        Cmd::Bench {
            what:
                BenchCmd::Chaos {
                    count,
                    kills,
                    amqp,
                    postgres,
                    cem_phase_s,
                    no_broker_restart,
                    no_disk_full,
                    json,
                },
        } => {
            bench::init_logs();
            bench::chaos::run(&bench::chaos::ChaosBench {
                count,
                kills,
                amqp,
                postgres,
                cem_phase: std::time::Duration::from_secs(cem_phase_s),
                broker_restart: !no_broker_restart,
                disk_full: !no_disk_full,
                json,
            })
            .await
        }
        Cmd::Bench {
            what:
                BenchCmd::Ingest {
                    count,
                    amqp,
                    store,
                    instances,
                    json,
                    latency_secs,
                    skip_doors,
                    prefetch,
                    batch_size,
                    min_floor_ratio,
                },
        } => {
            bench::init_logs();
            bench::ingest::run(&bench::ingest::IngestBench {
                count,
                amqp,
                store,
                instances,
                json,
                latency_secs,
                skip_doors,
                batching: bench::ingest::Batching {
                    prefetch,
                    batch_size,
                },
                min_floor_ratio,
            })
            .await
        }
    }
}
