//! A CEM unsubscribe (回复TD, R-EXC-3) as the CEM reports it: the body of
//! `POST /hooks/cem/unsubscribes` parsed and checked, and who it names.

use serde::Deserialize;

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
