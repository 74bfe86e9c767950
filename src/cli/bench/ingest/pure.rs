//! `bench ingest`, phase 1 and the bench's two clocks: the pure pipeline on one core (decode +
//! survey decision of the A04 sample in memory, against the bare hl7-parser parse of the same
//! text), and the check that the clock the bridges ingest on leaves the A04 surveys not yet due
//! while the clock they push on makes them due and not stale, under the default policy.

use std::collections::BTreeMap;
use std::hint::black_box;

use anyhow::{Context, anyhow, bail};
use cem_pipeline::anonymize::Pseudonymizer;
use cem_pipeline::decode::DecodeOptions;
use cem_pipeline::mapping::Outcome;
use cem_pipeline::policy::SurveyPolicy;
use cem_pipeline::survey::{SurveyContext, SurveyDecision, decide};
use cem_pipeline::translate::decode;

use crate::cli::bench::{A04, BENCH_CLOCK_START, BENCH_KEY, a04_text, best_rates, timestamp};

/// The clock the bridges ingest on: ten minutes after the A04 sample's visit began (09:30),
/// before its outpatient survey is due (visit + `outpatient_delay_minutes`, 11:30), so nothing
/// is pushed while the bench measures ingest. [`BENCH_CLOCK_START`] (the next morning) is the
/// clock they push on.
pub(super) const INGEST_CLOCK_START: &str = "2026-11-20T09:40:00+08:00";

/// Rates of phase 1, calls per second on one core (best of 7 rounds).
pub(super) struct Pure {
    pub parse_rate: f64,
    pub decide_rate: f64,
}

/// What decoding and deciding the A04 sample needs, set up as a bridge with the default
/// policy has it.
struct Setup {
    policy: SurveyPolicy,
    pseudo: Pseudonymizer,
    zone: jiff::tz::TimeZone,
    fields: cem_pipeline::anonymize::CemFieldPolicy,
    lists: cem_pipeline::lists::ExclusionLists,
    mappings: cem_pipeline::mapping::MappingSet,
    headers: BTreeMap<String, String>,
}

impl Setup {
    fn new() -> anyhow::Result<Self> {
        let zone = cem_pipeline::time::default_zone();
        Ok(Self {
            policy: SurveyPolicy::default(),
            pseudo: Pseudonymizer::new(BENCH_KEY, "bench").context("the bench pseudonym key")?,
            mappings: cem_pipeline::mapping::builtin(&zone),
            zone,
            fields: Default::default(),
            lists: Default::default(),
            headers: BTreeMap::new(),
        })
    }

    /// Decode the A04 sample at `now` and decide its survey; `None` when the mapping ignores it.
    fn decide(
        &self,
        now: jiff::Timestamp,
        opts: &DecodeOptions,
    ) -> Result<Option<SurveyDecision>, cem_pipeline::reason::Rejection> {
        let ctx = SurveyContext {
            tenant: "bench",
            zone: &self.zone,
            pseudo: &self.pseudo,
            now,
            fields: &self.fields,
            lists: &self.lists,
        };
        decode(A04, opts, &self.mappings, &self.headers).map(|d| match d.outcome {
            Outcome::Event(event) => Some(decide(&event, &self.policy, &ctx)),
            Outcome::Ignored { .. } => None,
        })
    }
}

fn decision_at(now: jiff::Timestamp) -> anyhow::Result<SurveyDecision> {
    match Setup::new()?.decide(now, &DecodeOptions::at(now)) {
        Ok(Some(decision)) => Ok(decision),
        Ok(None) => bail!("the built-in A04 sample is ignored by its mapping"),
        Err(r) => bail!(
            "the built-in A04 sample does not decode: {} ({})",
            r.reason.code(),
            r.detail
        ),
    }
}

/// Check that the A04 survey decided at [`INGEST_CLOCK_START`] is due after the ingest phases
/// can end, and that [`BENCH_CLOCK_START`] is past its due time and before it goes stale.
pub(super) fn check_clocks() -> anyhow::Result<()> {
    let ingest = timestamp(INGEST_CLOCK_START)?;
    let push = timestamp(BENCH_CLOCK_START)?;
    let job = match decision_at(ingest)? {
        SurveyDecision::Schedule(job) => job,
        other => bail!(
            "the A04 sample schedules no survey at {INGEST_CLOCK_START} ({other:?}); the bench would measure the wrong path"
        ),
    };
    let margin = jiff::SignedDuration::from_mins(60);
    if job.due_at.duration_since(ingest) < margin {
        bail!(
            "the A04 survey decided at {INGEST_CLOCK_START} is due at {}: less than an hour later, so pushes would mix into the ingest measurement; move INGEST_CLOCK_START earlier",
            job.due_at
        );
    }
    if push < job.due_at || push >= job.stale_at {
        bail!(
            "the bench pushes at {BENCH_CLOCK_START}, but the A04 survey is due at {} and stale at {}: move BENCH_CLOCK_START between them",
            job.due_at,
            job.stale_at
        );
    }
    Ok(())
}

pub(super) fn pure_pipeline() -> anyhow::Result<Pure> {
    let text = a04_text()?;
    let now = timestamp(BENCH_CLOCK_START)?;
    let opts = DecodeOptions::at(now);
    let setup = Setup::new()?;
    // Measure the path the bridge takes for this message, not a rejection.
    match decision_at(now)? {
        SurveyDecision::Schedule(_) => {}
        other => bail!(
            "the A04 sample schedules no survey ({other:?}); the bench would measure the wrong path"
        ),
    }
    hl7_parser::Message::parse_with_lenient_newlines(text, true)
        .map_err(|_| anyhow!("hl7-parser cannot parse the built-in A04 sample"))?;

    let (parse_rate, decide_rate) = best_rates(
        || {
            let _ = black_box(hl7_parser::Message::parse_with_lenient_newlines(
                black_box(text),
                true,
            ));
        },
        || {
            let _ = black_box(setup.decide(black_box(now), &opts));
        },
    );
    Ok(Pure {
        parse_rate,
        decide_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_clock_leaves_the_survey_not_due_and_the_push_clock_makes_it_due() {
        check_clocks().unwrap();
    }
}
