//! A minimal `HIPMessageServer` caller, as a 互联互通 platform calls its subscribers: for
//! `cem-bridge publish --soap` (testing a door from the command line) and the benchmarks.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::envelope::{SoapVersion, attribute, entity, escape};

/// The request a 东华-style platform sends (SOAP 1.1 with `SOAPAction`) or a SOAP 1.2 one.
pub fn request(version: SoapVersion, namespace: &str, action: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{}\" xmlns:hip=\"{}\"><soap:Body><hip:HIPMessageServer><hip:action>{}</hip:action><hip:message>{}</hip:message></hip:HIPMessageServer></soap:Body></soap:Envelope>",
        version.namespace(),
        escape(namespace),
        escape(action),
        escape(message)
    )
}

/// An HTTP client for [`call`]: a minute's timeout (the subscriber answers once the message
/// is durable).
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
}

/// Send one call; returns the HTTP status and the response body.
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    version: SoapVersion,
    action: &str,
    message: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let ns = "http://www.dhcc.com.cn";
    let mut req = http
        .post(url)
        .header("content-type", version.content_type())
        .body(request(version, ns, action, message));
    if version == SoapVersion::V11 {
        req = req.header("SOAPAction", format!("\"{ns}/HIPMessageServer\""));
    }
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// What a response says, for printing: the acknowledgement's type code and text, or `FAULT`
/// and the fault's reason.
pub fn summary(response: &str) -> (String, String) {
    let result = element_text(response, "HIPMessageServerResult");
    if let Some(ack) = result {
        let mut r = Reader::from_str(&ack);
        let mut code = String::new();
        let mut text = String::new();
        loop {
            match r.read_event() {
                Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                    let local = e.local_name().as_ref().to_string();
                    let attr = |name: &str| attribute(&e, name);
                    if local == "acknowledgement" {
                        code = attr("typeCode").unwrap_or_default();
                    } else if local == "text" && !code.is_empty() {
                        text = attr("value").unwrap_or_default();
                    }
                }
                Ok(Event::Eof) | Err(_) => break,
                _ => {}
            }
        }
        return (code, text);
    }
    let reason = element_text(response, "faultstring")
        .or_else(|| element_text(response, "Text"))
        .unwrap_or_default();
    ("FAULT".into(), reason)
}

/// The text (unescaped, CDATA included) of the first element with this local name.
fn element_text(doc: &str, local: &str) -> Option<String> {
    let mut r = Reader::from_str(doc);
    let mut inside = false;
    let mut out = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == local => inside = true,
            Ok(Event::End(e)) if inside && e.local_name().as_ref() == local => return Some(out),
            Ok(Event::Text(t)) if inside => out.push_str(&t.xml10_content()),
            Ok(Event::CData(t)) if inside => out.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(g)) if inside => out.extend(entity(&g)),
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{envelope, mcci};
    use super::*;

    #[test]
    fn a_request_reads_back_and_a_response_summarises() {
        let req = request(SoapVersion::V12, "urn:x", "S0032", "<a b=\"1\">é</a>");
        let call = envelope::parse(req.as_bytes()).unwrap();
        assert_eq!(call.action, "S0032");
        assert!(call.message.ends_with("<a b=\"1\">é</a>"));
        let ack = mcci::build(
            &mcci::Inbound::default(),
            mcci::Code::Error,
            Some("unknown_event: x & y"),
            jiff::Timestamp::UNIX_EPOCH,
        );
        let resp = envelope::response(SoapVersion::V11, "urn:x", &ack);
        assert_eq!(summary(&resp), ("AE".into(), "unknown_event: x & y".into()));
        let f = envelope::fault(SoapVersion::V12, envelope::Blame::Receiver, "later");
        assert_eq!(summary(&f), ("FAULT".into(), "later".into()));
    }
}
