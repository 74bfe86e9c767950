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

fn decision_at(now: jiff::Timestamp) -> anyhow::Result<SurveyDecision> {
    let opts = DecodeOptions::at(now);
    let policy = SurveyPolicy::default();
    let pseudo = Pseudonymizer::new(BENCH_KEY, "bench").context("the bench pseudonym key")?;
    let zone = cem_pipeline::time::default_zone();
    let fields = cem_pipeline::anonymize::CemFieldPolicy::default();
    let lists = cem_pipeline::lists::ExclusionLists::default();
    let ctx = SurveyContext {
        tenant: "bench",
        zone: &zone,
        pseudo: &pseudo,
        now,
        fields: &fields,
        lists: &lists,
    };
    let mappings = cem_pipeline::mapping::builtin(&zone);
    match decode(A04, &opts, &mappings, &BTreeMap::new()).map(|d| d.outcome) {
        Ok(Outcome::Event(event)) => Ok(decide(&event, &policy, &ctx)),
        Ok(other) => bail!("the built-in A04 sample maps to {other:?}"),
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
    let policy = SurveyPolicy::default();
    let pseudo = Pseudonymizer::new(BENCH_KEY, "bench").context("the bench pseudonym key")?;
    let zone = cem_pipeline::time::default_zone();
    let fields = cem_pipeline::anonymize::CemFieldPolicy::default();
    let lists = cem_pipeline::lists::ExclusionLists::default();
    let ctx = SurveyContext {
        tenant: "bench",
        zone: &zone,
        pseudo: &pseudo,
        now,
        fields: &fields,
        lists: &lists,
    };
    let mappings = cem_pipeline::mapping::builtin(&zone);
    let headers = BTreeMap::new();
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
            let r = decode(black_box(A04), &opts, &mappings, &headers).map(|d| match d.outcome {
                Outcome::Event(e) => Some(decide(&e, &policy, &ctx)),
                Outcome::Ignored { .. } => None,
            });
            let _ = black_box(r);
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
