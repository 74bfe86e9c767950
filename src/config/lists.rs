//! `[lists]`: the opt-out, staff and follow-up opt-out list files (loaded by `privacy::lists`).

use std::path::{Path, PathBuf};

use cem_pipeline::lists::ListKind;
use serde::Deserialize;

/// `[lists]`: files of people who get no survey. Each line `kind,value[,authority]` with kind
/// `patient_id`, `id_card`, `mobile` or `pseudonym` (see docs/configuration.md).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ListsConfig {
    /// Opt-out files (R-EXC-3: checked on the patient and the mobile the survey goes to),
    /// e.g. the CEM's unsubscribes (回复TD) exported daily.
    pub opt_out: Vec<PathBuf>,
    /// Staff files (R-EXC-4: checked on patient, 身份证号 and mobile), e.g. the HR export.
    pub staff: Vec<PathBuf>,
    /// Follow-up opt-out files (R-FUP-2): no post-operative calls or reminders; surveys still
    /// go (the survey opt-out list does not stop follow-ups either).
    pub followup_opt_out: Vec<PathBuf>,
}

impl ListsConfig {
    /// Every configured file with its list.
    pub fn files(&self) -> impl Iterator<Item = (ListKind, &Path)> {
        self.opt_out
            .iter()
            .map(|p| (ListKind::OptOut, p.as_path()))
            .chain(self.staff.iter().map(|p| (ListKind::Staff, p.as_path())))
            .chain(
                self.followup_opt_out
                    .iter()
                    .map(|p| (ListKind::FollowupOptOut, p.as_path())),
            )
    }
}
