//! Opt-outs the CEM reports (R-EXC-3): a patient who answers 回复TD to a survey SMS, or
//! unsubscribes in WeChat, must get no further survey. `POST /hooks/cem/unsubscribes` (signed
//! like the CEM's ticket webhook) names the survey the patient answered by its `jobId` (or the
//! `requestId` = `sv:{jobId}` the bridge sent as the idempotency key), or a patient pseudonym;
//! the bridge stores the job's patient (`pk_…`) and mobile (`mk_…`) pseudonyms in `opt_outs`.
//! Scheduling checks the table (suppressed `opted_out`), and so does the claim transaction at
//! send time, so a survey scheduled before the unsubscribe is not sent either — on every
//! instance sharing the store. Follow-ups are not stopped (R-FUP-2 has its own list).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use metrics::counter;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::ops::OpsState;
use crate::store::{AuditEntry, Store, StoreError, db};
use crate::webhook::answer;

/// The body of an unsubscribe callback (camelCase; unknown fields are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsubscribe {
    /// The CEM's event id (logged).
    pub event_id: String,
    /// The survey job the patient answered (`jobId` of the dispatch body) …
    #[serde(default)]
    pub job_id: Option<String>,
    /// … or its idempotency key `sv:{jobId}` …
    #[serde(default)]
    pub request_id: Option<String>,
    /// … or the patient pseudonym `pk_…` when no survey is named.
    #[serde(default)]
    pub patient_key: Option<String>,
    /// `sms`, `wechat`, … (recorded as the source).
    #[serde(default)]
    pub channel: Option<String>,
}

/// Who unsubscribed, resolved from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Job(String),
    Patient(String),
}

impl Unsubscribe {
    /// Parse and check; the error names the field, never a value.
    pub fn parse(body: &[u8]) -> Result<(Self, Subject), String> {
        let u: Self = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not an unsubscribe event: {e}"))?;
        if u.event_id.trim().is_empty() || u.event_id.len() > 128 {
            return Err("eventId: must be 1–128 characters".into());
        }
        let job = u
            .job_id
            .clone()
            .filter(|j| !j.trim().is_empty())
            .or_else(|| {
                u.request_id
                    .as_deref()
                    .and_then(|r| r.strip_prefix("sv:"))
                    .map(str::to_string)
            });
        let subject = match (job, u.patient_key.as_deref()) {
            (Some(j), _) if j.len() <= 128 => Subject::Job(j),
            (Some(_), _) => return Err("jobId: longer than 128 characters".into()),
            (None, Some(pk)) if pk.starts_with("pk_") && pk.len() <= 64 => {
                Subject::Patient(pk.to_string())
            }
            (None, Some(_)) => {
                return Err("patientKey: must be the bridge's patient pseudonym `pk_…`".into());
            }
            (None, None) => {
                return Err(
                    "name the survey (jobId, or requestId `sv:{jobId}`) or the patient (patientKey `pk_…`)"
                        .into(),
                );
            }
        };
        Ok((u, subject))
    }
}

/// What recording an unsubscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutRecorded {
    /// New opt-out rows were written (this many).
    Recorded(u64),
    /// Every pseudonym was already opted out (a repeated callback).
    Already,
    /// No survey job has this id (pruned, or another tenant's).
    UnknownJob,
}

impl OptOutRecorded {
    pub fn code(self) -> &'static str {
        match self {
            Self::Recorded(_) => "recorded",
            Self::Already => "already",
            Self::UnknownJob => "unknown_job",
        }
    }
}

impl Store {
    /// Record an unsubscribe from `source` (e.g. `cem:sms`): the job's patient (resolved
    /// through merges) and mobile pseudonyms, or the patient alone; audited once.
    pub async fn record_opt_out(
        &self,
        subject: &Subject,
        source: &str,
        now: i64,
    ) -> Result<OptOutRecorded, StoreError> {
        let mut tx = self.begin().await?;
        let (job_id, keys) = match subject {
            Subject::Job(job_id) => {
                let row = sqlx::query(
                    "SELECT patient_key, mobile_key FROM survey_jobs WHERE job_id = $1",
                )
                .bind(job_id.as_str())
                .fetch_optional(&mut *tx.tx)
                .await
                .map_err(db("read the unsubscribed job"))?;
                let Some(row) = row else {
                    return Ok(OptOutRecorded::UnknownJob);
                };
                use sqlx::Row;
                let pk: String = row.try_get("patient_key").map_err(db("read job"))?;
                let mk: Option<String> = row.try_get("mobile_key").map_err(db("read job"))?;
                let pk = tx.resolve_patient(&pk).await?;
                (Some(job_id.as_str()), [Some(pk), mk])
            }
            Subject::Patient(pk) => (None, [Some(tx.resolve_patient(pk).await?), None]),
        };
        let mut added = 0;
        for key in keys.iter().flatten() {
            added += sqlx::query(
                "INSERT INTO opt_outs (opt_key, source, job_id, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (opt_key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(source)
            .bind(job_id)
            .bind(now)
            .execute(&mut *tx.tx)
            .await
            .map_err(db("record opt-out"))?
            .rows_affected();
        }
        if added == 0 {
            return Ok(OptOutRecorded::Already);
        }
        tx.audit(&AuditEntry {
            job_id,
            patient_key: keys[0].as_deref(),
            action: "opted_out",
            rule: Some("R-EXC-3"),
            reason: Some("cem_unsubscribe"),
            detail: Some(&format!(
                "{source}: {added} pseudonym(s) added to the opt-out table"
            )),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        Ok(OptOutRecorded::Recorded(added))
    }
}

/// `POST /hooks/cem/unsubscribes`. Answers 200 `{"code": 0, "result": "recorded"|"already"}`
/// once stored (durable before the 2xx); 401 unsigned or wrongly signed; 400 malformed (the
/// field named); 404 unknown job; 503 store failure (the CEM retries). Counted in
/// `cem_bridge_optouts_total{result}`.
pub async fn unsubscribes(State(s): State<OpsState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(intake) = s.tickets.as_deref() else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "error": "webhook_disabled", "message": "CEM callbacks are off: add a [tickets] table (it holds the CEM webhook secret) to the bridge config, or feed unsubscribes through [lists] opt_out files" }),
        );
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = intake.clock.now_ms();
    if let Err(e) = cem_pipeline::ticket::verify(
        &intake.secret,
        header(&intake.timestamp_header),
        header(&intake.signature_header),
        &body,
        now / 1000,
        intake.max_skew_s,
    ) {
        warn!(reason = e.reason(), "unsubscribe refused: {e}");
        counter!("cem_bridge_webhook_rejected_total", "reason" => e.reason()).increment(1);
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({ "code": 401, "error": e.reason(), "message": format!("{e}: sign `<unix seconds>.<body>` with HMAC-SHA256 under the CEM webhook secret") }),
        );
    }
    let (event, subject) = match Unsubscribe::parse(&body) {
        Ok(p) => p,
        Err(message) => {
            counter!("cem_bridge_webhook_rejected_total", "reason" => "malformed").increment(1);
            return answer(
                StatusCode::BAD_REQUEST,
                json!({ "code": 400, "error": "malformed", "message": message }),
            );
        }
    };
    let source = format!(
        "cem:{}",
        event
            .channel
            .as_deref()
            .filter(|c| !c.is_empty()
                && c.len() <= 16
                && c.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or("unknown")
    );
    match intake.store.record_opt_out(&subject, &source, now).await {
        Ok(r) => {
            counter!("cem_bridge_optouts_total", "result" => r.code()).increment(1);
            let job_id = match &subject {
                Subject::Job(j) => j.as_str(),
                Subject::Patient(_) => "",
            };
            if r == OptOutRecorded::UnknownJob {
                warn!(event_id = %event.event_id, job_id, "unsubscribe names no known survey job");
                return answer(
                    StatusCode::NOT_FOUND,
                    json!({ "code": 404, "error": "unknown_job", "message": "no survey job has this jobId (pruned after [retention] jobs_days, or not this bridge's)" }),
                );
            }
            info!(event_id = %event.event_id, job_id, source = %source, result = r.code(), "unsubscribe recorded");
            answer(StatusCode::OK, json!({ "code": 0, "result": r.code() }))
        }
        Err(e) => {
            warn!(event_id = %event.event_id, error = %e, "cannot record an unsubscribe; answered 503 so the CEM retries");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "code": 503, "error": "store_unavailable", "message": "not stored; retry" }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsubscribe_names_a_job_a_request_or_a_patient() {
        let (_, s) =
            Unsubscribe::parse(br#"{"eventId":"e1","jobId":"j1","channel":"sms"}"#).unwrap();
        assert_eq!(s, Subject::Job("j1".into()));
        let (_, s) = Unsubscribe::parse(br#"{"eventId":"e1","requestId":"sv:j2"}"#).unwrap();
        assert_eq!(s, Subject::Job("j2".into()));
        let (_, s) = Unsubscribe::parse(br#"{"eventId":"e1","patientKey":"pk_ab"}"#).unwrap();
        assert_eq!(s, Subject::Patient("pk_ab".into()));
        let e = Unsubscribe::parse(br#"{"eventId":"e1","patientKey":"13812345678"}"#).unwrap_err();
        assert!(e.starts_with("patientKey") && !e.contains("138"), "{e}");
        let e = Unsubscribe::parse(br#"{"eventId":"e1"}"#).unwrap_err();
        assert!(e.contains("jobId"), "{e}");
        let e = Unsubscribe::parse(br#"{"eventId":"","jobId":"j"}"#).unwrap_err();
        assert!(e.starts_with("eventId"), "{e}");
        assert!(Unsubscribe::parse(b"not json").is_err());
    }
}
