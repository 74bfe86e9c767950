//! The plumbing shared by doors whose sender waits on the line for an answer (MLLP, SOAP):
//! connection tasks [`Inbox::submit`] a delivery and wait; the ingest loop takes it through
//! [`AnsweringSource::recv`] like any other delivery and, once its effects are durable, settles
//! it — which is what wakes the waiting connection and becomes its ACK.
//!
//! What the sender is told:
//! - [`Answer::Done`] with [`Settle::Ack`] / [`Settle::DeadLetter`] — stored (or a counted
//!   duplicate), or dead-lettered and stored as such;
//! - [`Answer::Unavailable`] — not taken: the store is down, the bridge is stopping, or no answer
//!   came within the door's answer timeout. The sender sends again; if the message did become
//!   durable meanwhile, the resend is a counted duplicate with no second effect.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::source::{Delivery, Settle, Settled, Source, SourceError};

/// What a waiting sender is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Settled after the commit: `Ack` or `DeadLetter` (a `Retry` becomes `Unavailable`).
    Done(Settle),
    /// Not taken; send it again later.
    Unavailable,
}

struct Pending {
    delivery: Delivery,
    reply: oneshot::Sender<Settle>,
}

/// The connection side: hand a delivery to the ingest loop and wait for its answer.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Pending>,
    answer_timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl Inbox {
    /// Submit one delivery (its `id` is assigned by the source) and wait for the answer.
    pub async fn submit(&self, delivery: Delivery) -> Answer {
        if *self.stop.borrow() {
            return Answer::Unavailable;
        }
        let (reply, answer) = oneshot::channel();
        let wait = async {
            self.tx
                .send(Pending { delivery, reply })
                .await
                .map_err(|_| ())?;
            answer.await.map_err(|_| ())
        };
        match tokio::time::timeout(self.answer_timeout, wait).await {
            Ok(Ok(Settle::Retry)) | Ok(Err(())) | Err(_) => Answer::Unavailable,
            Ok(Ok(s)) => Answer::Done(s),
        }
    }

    /// Whether the door is stopping (connections finish their message and close).
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the door is told to stop.
    pub async fn stopped(&mut self) {
        while !*self.stop.borrow_and_update() {
            if self.stop.changed().await.is_err() {
                return;
            }
        }
    }
}

/// How long a stopping door waits for its connections to write their last answers.
const DRAIN: Duration = Duration::from_secs(5);

/// The ingest side of an answering door: a [`Source`] over what the connections submit.
pub struct AnsweringSource {
    rx: mpsc::Receiver<Pending>,
    waiting: HashMap<u64, oneshot::Sender<Settle>>,
    next_id: u64,
    stop: watch::Sender<bool>,
    /// The listener task (it owns the connection tasks; dropping it aborts them).
    listener: Option<JoinHandle<()>>,
    door: String,
    local: Option<SocketAddr>,
}

/// Make the two halves. `queue` bounds the deliveries submitted but not yet taken (each one is
/// a sender waiting on the line, so this is not a memory risk beyond `queue × frame size`).
pub fn channel(
    door: &str,
    queue: usize,
    answer_timeout: Duration,
) -> (
    Inbox,
    impl FnOnce(JoinHandle<()>, Option<SocketAddr>) -> AnsweringSource,
) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let inbox = Inbox {
        tx,
        answer_timeout,
        stop: stop_rx,
    };
    let door = door.to_string();
    let make = move |listener: JoinHandle<()>, local: Option<SocketAddr>| AnsweringSource {
        rx,
        local,
        waiting: HashMap::new(),
        next_id: 1,
        stop: stop_tx,
        listener: Some(listener),
        door,
    };
    (inbox, make)
}

impl AnsweringSource {
    /// Answer every submitted-but-untaken delivery `Unavailable` (their replies are dropped).
    fn refuse_queued(&mut self) {
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

impl Source for AnsweringSource {
    async fn recv(&mut self) -> Result<Option<Delivery>, SourceError> {
        match self.rx.recv().await {
            Some(Pending {
                mut delivery,
                reply,
            }) => {
                delivery.id = self.next_id;
                self.next_id += 1;
                self.waiting.insert(delivery.id, reply);
                Ok(Some(delivery))
            }
            // Every sender is gone: the listener task ended (it logged why).
            None => Err(SourceError::Ended {
                door: self.door.clone(),
            }),
        }
    }

    fn settle(
        &mut self,
        _connector: &str,
        batch: &[(&Delivery, Settle)],
    ) -> impl Future<Output = Result<Settled, SourceError>> + Send {
        let mut settled = Settled::default();
        for (d, s) in batch {
            if matches!(s, Settle::Retry) {
                settled.retried += 1;
            } else {
                settled.acked += 1;
            }
            // The sender may have given up (answer timeout); its resend will be a duplicate.
            if let Some(reply) = self.waiting.remove(&d.id) {
                let _ = reply.send(s.clone());
            }
        }
        async move { Ok(settled) }
    }

    /// Stop accepting; answer what is queued `Unavailable`; let connections write their last
    /// answers (up to a few seconds).
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        let _ = self.stop.send(true);
        self.refuse_queued();
        self.waiting.clear();
        let listener = self.listener.take();
        async move {
            if let Some(mut h) = listener
                && tokio::time::timeout(DRAIN, &mut h).await.is_err()
            {
                h.abort();
            }
        }
    }

    async fn close(mut self) {
        self.stop().await;
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    fn batch_wait(&self, _configured: Duration) -> Duration {
        // Each sender waits for its answer, so a batch cannot grow by waiting: take what is
        // queued now; the deliveries that arrive during a commit make the next batch.
        Duration::ZERO
    }
}

impl Drop for AnsweringSource {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.listener.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &str) -> Delivery {
        Delivery {
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_settled_delivery_answers_its_sender() {
        let (inbox, make) = channel("t", 4, Duration::from_secs(5));
        let mut src = make(tokio::spawn(async {}), None);
        let sender = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("a")).await }
        });
        let d = src.recv().await.unwrap().unwrap();
        assert_eq!(d.body, b"a");
        let dl = Settle::DeadLetter {
            reason: "unknown_event".into(),
            detail: "x".into(),
        };
        let s = src.settle("t", &[(&d, dl.clone())]).await.unwrap();
        assert_eq!(s.acked, 1);
        assert_eq!(sender.await.unwrap(), Answer::Done(dl));
    }

    #[tokio::test]
    async fn retry_stop_and_timeout_answer_unavailable() {
        let (inbox, make) = channel("t", 4, Duration::from_millis(200));
        let mut src = make(tokio::spawn(async {}), None);
        // Retry.
        let s1 = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("r")).await }
        });
        let d = src.recv().await.unwrap().unwrap();
        src.settle("t", &[(&d, Settle::Retry)]).await.unwrap();
        assert_eq!(s1.await.unwrap(), Answer::Unavailable);
        // Taken but never settled within the answer timeout.
        let s2 = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("t")).await }
        });
        let _taken = src.recv().await.unwrap().unwrap();
        assert_eq!(s2.await.unwrap(), Answer::Unavailable);
        // Queued when the door stops.
        let s3 = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("q")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        src.stop().await;
        assert_eq!(s3.await.unwrap(), Answer::Unavailable);
        assert_eq!(inbox.submit(delivery("late")).await, Answer::Unavailable);
    }
}
