//! The account at the end of a chaos run: where every message of the stream ended (the store's
//! ledger, its jobs, the broker's dead-letter queue), what the CEM recorder saw, and the report.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, bail};

use super::faults::Fault;
use super::stream::{Class, Msg};
use crate::store::Store;

/// Whether the dead-letter queue holds a message whose body contains `needle`. Reads without
/// acking, on a channel it then closes, so every message stays in the queue.
pub(super) async fn dlq_holds(amqp: &str, dlq: &str, needle: &[u8]) -> bool {
    use lapin::options::BasicGetOptions;
    let Ok(conn) = cem_connectors::amqp::connect(amqp, "cem-bridge-chaos-dlq").await else {
        return false;
    };
    let mut found = false;
    if let Ok(ch) = conn.create_channel().await {
        while let Ok(Some(m)) = ch
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await
        {
            if m.delivery
                .data
                .windows(needle.len().max(1))
                .any(|w| w == needle)
            {
                found = true;
                break;
            }
        }
        let _ = ch.close(200, "bye".into()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
    found
}

/// Where every message of the stream ended.
pub(super) struct Outcome {
    pub(super) by_class: BTreeMap<Class, usize>,
    /// (kind, class) → count, for the messages whose outcome their kind does not allow.
    pub(super) unexpected: BTreeMap<(String, Class), usize>,
    /// Reasons of suppressed / cancelled jobs and of dead letters.
    pub(super) reasons: BTreeMap<String, usize>,
    /// Messages with any outcome.
    pub(super) settled: usize,
    pub(super) pushed: usize,
    pub(super) duplicates_absorbed: usize,
    /// Dead letters the broker holds that the store does not (a message the store refuses
    /// outright — the poison one on PostgreSQL — is dead-lettered without a record).
    pub(super) broker_only_dead_letters: u64,
}

impl Outcome {
    pub(super) fn lost(&self) -> usize {
        self.by_class.get(&Class::Lost).copied().unwrap_or(0)
    }
    pub(super) fn double(&self) -> usize {
        self.by_class.get(&Class::TwoEffects).copied().unwrap_or(0)
    }
    /// Every message settled: none missing, and no survey still pending that its kind expects
    /// to be pushed (a push in retry after a CEM fault is still on its way).
    pub(super) fn done(&self) -> bool {
        self.lost() == 0
            && !self
                .unexpected
                .keys()
                .any(|(_, class)| *class == Class::Pending)
    }
}

pub(super) async fn account(
    store: &Store,
    msgs: &[Msg],
    queue: &str,
    amqp: &str,
) -> anyhow::Result<Outcome> {
    let ledger = store.ledger().await.context("reading the store's inbox")?;
    let jobs = store.jobs().await.context("reading the store's jobs")?;
    let inbox: std::collections::HashSet<&str> = ledger.inbox.iter().map(String::as_str).collect();
    let mut dead: HashMap<&str, &str> = HashMap::new();
    for (id, reason) in &ledger.dead_letters {
        if let Some(id) = id {
            dead.insert(id.as_str(), reason.as_str());
        }
    }
    let by_job: HashMap<&str, &crate::store::JobRow> =
        jobs.iter().map(|j| (j.message_id.as_str(), j)).collect();
    // A message the store refuses outright (the poison one on PostgreSQL) is dead-lettered
    // without a record: look for it in the broker's dead-letter queue.
    let unrecorded: Vec<&Msg> = msgs
        .iter()
        .filter(|m| {
            m.kind == "poison"
                && !inbox.contains(m.id.as_str())
                && !dead.contains_key(m.id.as_str())
        })
        .collect();
    let mut broker_only = 0u64;
    for m in &unrecorded {
        if dlq_holds(amqp, &format!("{queue}.dlq"), m.id.as_bytes()).await {
            broker_only += 1;
        }
    }
    let mut o = Outcome {
        by_class: BTreeMap::new(),
        unexpected: BTreeMap::new(),
        reasons: BTreeMap::new(),
        settled: 0,
        pushed: 0,
        duplicates_absorbed: 0,
        broker_only_dead_letters: broker_only,
    };
    let mut broker_only_left = broker_only;
    for m in msgs {
        let id = m.id.as_str();
        let in_inbox = inbox.contains(id);
        let dl = dead.get(id);
        let class = match (in_inbox, dl, by_job.get(id)) {
            (true, Some(_), _) => Class::TwoEffects,
            (_, Some(reason), _) => {
                *o.reasons
                    .entry(format!("dead letter {reason}"))
                    .or_default() += 1;
                Class::DeadLettered
            }
            (_, None, Some(j)) => match j.status.as_str() {
                "sent" => Class::Pushed,
                "pending" => Class::Pending,
                "cancelled" => {
                    *o.reasons
                        .entry(format!("cancelled {}", j.reason.as_deref().unwrap_or("-")))
                        .or_default() += 1;
                    Class::Cancelled
                }
                other => {
                    *o.reasons
                        .entry(format!("{other} {}", j.reason.as_deref().unwrap_or("-")))
                        .or_default() += 1;
                    Class::Suppressed
                }
            },
            (true, None, None) => Class::Recorded,
            (false, None, None) if m.kind == "poison" && broker_only_left > 0 => {
                broker_only_left -= 1;
                *o.reasons
                    .entry("dead letter poison (broker only)".into())
                    .or_default() += 1;
                Class::DeadLettered
            }
            (false, None, None) => Class::Lost,
        };
        if class != Class::Lost {
            o.settled += 1;
        }
        if class == Class::Pushed {
            o.pushed += 1;
        }
        *o.by_class.entry(class).or_default() += 1;
        if !matches!(class, Class::Lost | Class::TwoEffects) && !m.allowed.contains(&class) {
            *o.unexpected.entry((m.kind.to_string(), class)).or_default() += 1;
        }
    }
    o.duplicates_absorbed = ledger.duplicates.max(0) as usize;
    Ok(o)
}

pub(super) struct Report {
    pub(super) store: &'static str,
    pub(super) messages: usize,
    pub(super) deliveries: u64,
    pub(super) outcome: Outcome,
    pub(super) faults: Vec<Fault>,
    pub(super) starts: usize,
    pub(super) exit: Option<i32>,
    pub(super) accepted: usize,
    pub(super) replays: u64,
    pub(super) refused: u64,
    pub(super) patients_twice: usize,
    pub(super) pii: u64,
    pub(super) took: Duration,
}

impl Report {
    pub(super) fn problems(&self) -> Vec<String> {
        let o = &self.outcome;
        let mut p = Vec::new();
        if o.lost() > 0 {
            p.push(format!(
                "{} message(s) lost: no record, no dead letter",
                o.lost()
            ));
        }
        if o.double() > 0 {
            p.push(format!("{} message(s) with two effects", o.double()));
        }
        for ((kind, class), n) in &o.unexpected {
            p.push(format!(
                "{n} {kind} message(s) ended {}, which that kind does not allow",
                class.name()
            ));
        }
        if self.accepted != o.pushed {
            p.push(format!(
                "the CEM accepted {} surveys but the store says {} were sent",
                self.accepted, o.pushed
            ));
        }
        if self.patients_twice > 0 {
            p.push(format!(
                "{} patient(s) surveyed twice (do-not-disturb)",
                self.patients_twice
            ));
        }
        if self.pii > 0 {
            p.push(format!("{} CEM request(s) with a personal value", self.pii));
        }
        p
    }

    pub(super) fn verdict(&self) -> anyhow::Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            bail!("chaos run failed: {}", p.join("; "))
        }
    }

    pub(super) fn print(&self, json: bool) {
        let o = &self.outcome;
        if json {
            let v = serde_json::json!({
                "store": self.store,
                "messages": self.messages,
                "deliveries": self.deliveries,
                "outcomes": o.by_class.iter().map(|(c, n)| (c.name().to_string(), *n)).collect::<BTreeMap<_, _>>(),
                "reasons": o.reasons,
                "duplicates_absorbed": o.duplicates_absorbed,
                "broker_only_dead_letters": o.broker_only_dead_letters,
                "lost": o.lost(),
                "two_effects": o.double(),
                "unexpected": o.unexpected.iter().map(|((k, c), n)| format!("{n} {k} {}", c.name())).collect::<Vec<_>>(),
                "faults": self.faults.iter().map(|f| serde_json::json!({
                    "fault": f.what,
                    "recovered_ms": f.recovered.map(|d| d.as_millis() as u64),
                })).collect::<Vec<_>>(),
                "bridge_starts": self.starts,
                "final_exit_code": self.exit,
                "cem_accepted": self.accepted,
                "cem_replays_409": self.replays,
                "cem_refused": self.refused,
                "patients_surveyed_twice": self.patients_twice,
                "requests_with_personal_values": self.pii,
                "seconds": self.took.as_secs_f64(),
                "problems": self.problems(),
            });
            println!("{v:#}");
            return;
        }
        println!(
            "\nchaos run on {} — {} messages, {} deliveries, {:.0} s",
            self.store,
            self.messages,
            self.deliveries,
            self.took.as_secs_f64()
        );
        println!("\n{:<48} {:>8}", "outcome", "messages");
        for (c, n) in &o.by_class {
            println!("{:<48} {:>8}", c.name(), n);
        }
        for (r, n) in &o.reasons {
            println!("  {:<46} {:>8}", r, n);
        }
        println!(
            "{:<48} {:>8}",
            "duplicate deliveries absorbed (inbox)", o.duplicates_absorbed
        );
        println!(
            "{:<48} {:>8}",
            "dead letters in the broker only", o.broker_only_dead_letters
        );
        println!(
            "\n{:<56} {:>12}",
            "fault (recovery: next message settled / next push)", "recovered in"
        );
        for f in &self.faults {
            let r = f
                .recovered
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "no backlog".into());
            println!("{:<56} {:>12}", f.what, r);
        }
        println!(
            "\nbridge starts {}, final SIGTERM exit {}; CEM accepted {} surveys, {} replays answered 409, {} requests refused or failed",
            self.starts,
            self.exit
                .map(|c| c.to_string())
                .unwrap_or_else(|| "killed".into()),
            self.accepted,
            self.replays,
            self.refused
        );
        println!(
            "lost {}, two effects {}, patients surveyed twice {}, requests with personal values {}",
            o.lost(),
            o.double(),
            self.patients_twice,
            self.pii
        );
        let p = self.problems();
        if p.is_empty() {
            println!("every message accounted for");
        } else {
            for x in p {
                println!("PROBLEM: {x}");
            }
        }
    }
}
