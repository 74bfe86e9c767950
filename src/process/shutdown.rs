//! The shutdown signal every task holds (in the style of mini-redis' `Shutdown`).

use tokio::sync::watch;

/// Cloneable handle: `wait()` resolves once shutdown was requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The trigger side, kept by whoever decides to stop (signal handler, test).
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }

    /// Sleep for `d`, returning early (with `true`) on shutdown.
    pub async fn sleep(&mut self, d: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.wait() => true,
        }
    }
}
