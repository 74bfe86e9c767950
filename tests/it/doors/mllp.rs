//! The MLLP door with a raw TCP client: ACK codes and contents, ordering per connection, frames
//! split or packed, limits, and the ACK-after-durable rule under a dropped link and a crash.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const SB: u8 = 0x0B;
const EB: u8 = 0x1C;
const CR: u8 = 0x0D;

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = vec![SB];
    f.extend_from_slice(body);
    f.extend_from_slice(&[EB, CR]);
    f
}

/// Read one framed answer; `None` when the bridge closed the connection first.
async fn read_ack<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.iter().position(|&b| b == EB) {
            let start = got.iter().position(|&b| b == SB)?;
            return Some(String::from_utf8_lossy(&got[start + 1..end]).into_owned());
        }
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("an answer within 30 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The fields of one segment of an ACK.
fn segment(ack: &str, name: &str) -> Vec<String> {
    ack.split('\r')
        .find(|s| s.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {ack:?}"))
        .split('|')
        .map(str::to_string)
        .collect()
}

/// MSH-10 of a message file.
fn control_id(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split(['\r', '\n'])
        .next()
        .and_then(|msh| msh.split('|').nth(9))
        .unwrap_or_default()
        .to_string()
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> Option<String> {
    s.write_all(&framed(body)).await.expect("write");
    read_ack(s).await
}

/// Issue 16 §1/§5 (R-EVT-1, R-EVT-4): the shipped samples get `AA` with their MSH-10 echoed
/// and sender/receiver swapped; the bad samples get `AE` naming the reason and are stored as
/// dead letters of this connector; the surveys appear once; a resend is `AA` and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_get_aa_bad_ones_ae_with_the_reason_and_surveys_appear_once() {
    samples_flow(None, "mllp-samples").await;
}

/// The same on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_get_aa_bad_ones_ae_with_the_reason_and_surveys_appear_once_postgres() {
    let (url, db) = pg_database("mllpdoor").await;
    samples_flow(Some(url), "mllp-samples-pg").await;
    drop_pg_database(&db).await;
}

async fn samples_flow(store_url: Option<String>, name: &str) {
    let cem = Recorder::start().await;
    let mut setup = door_setup(name, &cem, "mllp", "127.0.0.1:0", "");
    setup.store_url = store_url;
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;
    let mut s = TcpStream::connect(addr).await.unwrap();

    let a03 = read_fixture("hl7v2/adt_a03_discharge.hl7");
    let a04 = read_fixture(A04_SAMPLE);
    for body in [&a03, &a04] {
        let ack = send(&mut s, body).await.expect("an ACK");
        let msh = segment(&ack, "MSH");
        let inbound: Vec<String> = String::from_utf8_lossy(body)
            .split(['\r', '\n'])
            .next()
            .unwrap()
            .split('|')
            .map(str::to_string)
            .collect();
        assert_eq!(msh[2..4], inbound[4..6], "MSH-3/4 are the inbound MSH-5/6");
        assert_eq!(msh[4..6], inbound[2..4], "MSH-5/6 are the inbound MSH-3/4");
        assert!(msh[8].starts_with("ACK"), "{ack}");
        assert_eq!(msh[11], inbound[11], "MSH-12 version echoed");
        assert_eq!(
            segment(&ack, "MSA")[1..3],
            ["AA".to_string(), control_id(body)]
        );
    }
    for (file, reason) in [
        ("bad/unknown_event.hl7", "unknown_event"),
        ("bad/missing_patient_id.hl7", "missing_patient_id"),
        ("bad/truncated.hl7", "truncated"),
        ("bad/not_hl7.txt", "unknown_format"),
    ] {
        let ack = send(&mut s, &read_fixture(file)).await.expect("an ACK");
        let msa = segment(&ack, "MSA");
        assert_eq!(msa[1], "AE", "{file}: {ack}");
        assert!(
            msa[3].starts_with(reason),
            "{file}: MSA-3 names {reason}: {ack}"
        );
        let err = segment(&ack, "ERR");
        assert_eq!(err[4], "E", "{ack}");
        assert!(err[8].starts_with(reason), "{ack}");
    }
    cem.wait_accepted(2, 20, "surveys").await;

    // A resend of everything: AA for the good ones, no second survey, no second dead letter.
    for body in [&a03, &a04] {
        let ack = send(&mut s, body).await.expect("an ACK");
        assert_eq!(segment(&ack, "MSA")[1], "AA", "a duplicate is acknowledged");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cem.accepted().len(), 2, "each survey once");
    let jobs = bridge.store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 2);
    let dead = bridge.store.recent_dead_letters(20).await.unwrap();
    let mut reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "missing_patient_id",
            "truncated",
            "unknown_event",
            "unknown_format"
        ]
    );
    assert!(dead.iter().all(|d| d.connector == "door"));
    bridge.shutdown().await;
}

/// Issue 16 §5: two connections at once; on one a frame split over three writes, on the other
/// two messages in one write. Each connection gets its ACKs in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_frames_packed_frames_and_two_connections_are_answered_in_order() {
    let cem = Recorder::start().await;
    let setup = door_setup("mllp-frames", &cem, "mllp", "127.0.0.1:0", "");
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;
    let bodies = registrations(3, "fr");

    let split = {
        let body = bodies[0].clone();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let f = framed(&body);
            let third = f.len() / 3;
            for part in [&f[..third], &f[third..2 * third], &f[2 * third..]] {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            read_ack(&mut s).await
        })
    };
    let mut packed = TcpStream::connect(addr).await.unwrap();
    let mut two = framed(&bodies[1]);
    two.extend(framed(&bodies[2]));
    packed.write_all(&two).await.unwrap();
    let first = read_ack(&mut packed).await.expect("first ACK");
    let second = read_ack(&mut packed).await.expect("second ACK");
    assert_eq!(segment(&first, "MSA")[2], control_id(&bodies[1]));
    assert_eq!(segment(&second, "MSA")[2], control_id(&bodies[2]));
    let split_ack = split.await.unwrap().expect("ACK of the split frame");
    assert_eq!(
        segment(&split_ack, "MSA")[1..3],
        ["AA".to_string(), control_id(&bodies[0])]
    );
    cem.wait_accepted(3, 20, "surveys").await;
    assert_eq!(bridge.store.inbox_count().await.unwrap(), 3);
    bridge.shutdown().await;
}

/// Issue 16 §1 limits: a frame over `max_message_bytes` gets `AE oversized` and nothing is
/// stored, and the connection goes on; an address outside `allow` is closed unanswered; past
/// `max_connections` a connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_oversized_frames_allow_list_and_connection_count() {
    let cem = Recorder::start().await;
    let setup = door_setup(
        "mllp-limits",
        &cem,
        "mllp",
        "127.0.0.1:0",
        "max_message_bytes = 4096\nmax_connections = 1\n",
    );
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut big = read_fixture(A04_SAMPLE);
    big.extend(std::iter::repeat_n(b'Z', 10_000));
    let ack = send(&mut s, &big).await.expect("an ACK");
    let msa = segment(&ack, "MSA");
    assert_eq!(msa[1], "AE");
    assert!(msa[3].starts_with("oversized"), "{ack}");
    assert_eq!(
        msa[2],
        control_id(&big),
        "the MSH of an oversized frame is still echoed"
    );
    let ok = send(&mut s, &read_fixture(A04_SAMPLE)).await.expect("ACK");
    assert_eq!(segment(&ok, "MSA")[1], "AA", "the connection goes on");

    // A second connection while the first is open: closed without an answer.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    extra
        .write_all(&framed(&registrations(1, "lim")[0]))
        .await
        .ok();
    assert_eq!(read_ack(&mut extra).await, None, "over max_connections");
    drop(s);
    assert_eq!(
        bridge.store.inbox_count().await.unwrap(),
        1,
        "only the accepted one"
    );
    assert!(
        bridge
            .store
            .recent_dead_letters(5)
            .await
            .unwrap()
            .is_empty()
    );
    bridge.shutdown().await;

    let setup = door_setup(
        "mllp-allow",
        &cem,
        "mllp",
        "127.0.0.1:0",
        "allow = [\"10.9.9.0/24\"]\n",
    );
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&framed(&read_fixture(A04_SAMPLE))).await.ok();
    assert_eq!(read_ack(&mut s).await, None, "127.0.0.1 is not allowed");
    assert_eq!(bridge.store.inbox_count().await.unwrap(), 0);
    bridge.shutdown().await;
}

/// Issue 16 §5: a connection dropped before its ACK leaves the message either durable (the
/// resend is a duplicate) or not (the resend stores it): one survey either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_before_the_ack_then_a_resend_gives_one_survey() {
    let cem = Recorder::start().await;
    let setup = door_setup("mllp-drop", &cem, "mllp", "127.0.0.1:0", "");
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;
    let body = registrations(1, "drop").remove(0);
    {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&framed(&body)).await.unwrap();
        // Gone before the answer.
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ack = send(&mut s, &body).await.expect("ACK");
    assert_eq!(segment(&ack, "MSA")[1], "AA");
    cem.wait_accepted(1, 20, "surveys").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cem.accepted().len(), 1, "one survey");
    assert_eq!(bridge.store.inbox_count().await.unwrap(), 1);
    bridge.shutdown().await;
}

/// Issue 16 §5: the bridge killed between the commit and the ACK (fault point
/// `after_commit`): the sender gets no ACK and resends to the restarted bridge, which answers
/// `AA` for the duplicate; one survey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_the_resend_is_a_duplicate_with_one_survey() {
    let cem = Recorder::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let setup = door_setup("mllp-kill", &cem, "mllp", &listen, "");
    let cfg = setup.write_config();
    let log = setup.dir.join("bridge.log");
    let body = registrations(1, "kill").remove(0);

    let mut child = spawn_bridge(&cfg, Some("after_commit:1"), &log);
    let mut s = wait_for(20, "the MLLP door of the child", || {
        let listen = listen.clone();
        async move { TcpStream::connect(&listen).await.ok() }
    })
    .await;
    s.write_all(&framed(&body)).await.unwrap();
    assert_eq!(
        read_ack(&mut s).await,
        None,
        "no ACK: the process died after the commit"
    );
    let status = wait_exit(&mut child, 30).await;
    assert_eq!(
        status.code(),
        Some(86),
        "exited at the fault point; log {}",
        log.display()
    );

    let mut child = spawn_bridge(&cfg, None, &log);
    let mut s = wait_for(20, "the MLLP door after the restart", || {
        let listen = listen.clone();
        async move { TcpStream::connect(&listen).await.ok() }
    })
    .await;
    let ack = send(&mut s, &body).await.expect("ACK after the restart");
    assert_eq!(segment(&ack, "MSA")[1], "AA");
    cem.wait_accepted(1, 30, "surveys").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    let keys: std::collections::BTreeSet<_> = cem
        .accepted()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 1, "one survey");
    let db = sqlite(&setup.db).await;
    let dups: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(dups, 1, "stored once");
}

/// Issue 16 §1: with `tls_cert` / `tls_key` the door speaks MLLP over TLS: a client trusting
/// the certificate gets its `AA`; a plain-TCP sender gets no answer and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls_answers_a_tls_client_and_refuses_plain_tcp() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let cem = Recorder::start().await;
    let dir = scratch_dir("mllp-tls-certs");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let setup = door_setup(
        "mllp-tls",
        &cem,
        "mllp",
        "127.0.0.1:0",
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;

    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(&framed(&read_fixture(A04_SAMPLE)))
        .await
        .ok();
    assert_eq!(read_ack(&mut plain).await, None, "no answer without TLS");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).expect("the certificate"))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake");
    let ack = send(&mut tls, &read_fixture(A04_SAMPLE))
        .await
        .expect("an ACK over TLS");
    assert_eq!(segment(&ack, "MSA")[1], "AA", "{ack}");
    assert_eq!(
        bridge.store.inbox_count().await.unwrap(),
        1,
        "only the TLS message"
    );
    bridge.shutdown().await;
}

/// Issue 16 §1: while the store cannot take the message (SQLite locked by another writer here),
/// the sender is answered `AR` within `answer_timeout_ms`; once the store is back, the resend
/// is `AA` and there is one survey — whether the held batch committed first or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unavailable_answers_ar_and_the_resend_gives_one_survey() {
    use sqlx::Connection;
    let cem = Recorder::start().await;
    let setup = door_setup(
        "mllp-ar",
        &cem,
        "mllp",
        "127.0.0.1:0",
        "answer_timeout_ms = 1000\n",
    );
    let bridge = setup.start().await;
    let addr = door_addr(&bridge).await;
    let body = registrations(1, "ar").remove(0);

    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", setup.db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ack = send(&mut s, &body).await.expect("an answer");
    let msa = segment(&ack, "MSA");
    assert_eq!(msa[1], "AR", "{ack}");
    assert_eq!(msa[2], control_id(&body));
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    let ack = send(&mut s, &body).await.expect("an answer");
    assert_eq!(segment(&ack, "MSA")[1], "AA", "{ack}");
    cem.wait_accepted(1, 20, "the survey").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cem.accepted().len(), 1, "one survey");
    assert_eq!(bridge.store.inbox_count().await.unwrap(), 1);
    bridge.shutdown().await;
}
