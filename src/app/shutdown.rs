//! One shutdown, observed by every component: fired by a signal, by the caller, or by a
//! component that failed; it remembers when, so each component stops within what is left of
//! the grace period.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::info;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received: shutting down"),
        () = terminate => info!("SIGTERM received: shutting down"),
    }
}

/// One shutdown event observed by many tasks.
#[derive(Clone)]
pub struct Shutdown {
    fire: Arc<watch::Sender<bool>>,
    fired: watch::Receiver<bool>,
    fired_at: Arc<OnceLock<Instant>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown that fires when [`Shutdown::fire`] is called.
    pub fn new() -> Shutdown {
        let (fire, fired) = watch::channel(false);
        Shutdown {
            fire: Arc::new(fire),
            fired,
            fired_at: Arc::new(OnceLock::new()),
        }
    }

    /// A shutdown that also fires when `trigger` resolves.
    pub fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let shutdown = Shutdown::new();
        let fire = shutdown.clone();
        tokio::spawn(async move {
            trigger.await;
            fire.fire();
        });
        shutdown
    }

    /// Fires the shutdown (again is a no-op).
    pub fn fire(&self) {
        let _ = self.fired_at.set(Instant::now());
        self.fire.send_replace(true);
    }

    pub fn is_fired(&self) -> bool {
        *self.fired.borrow()
    }

    /// Resolves once the shutdown has fired; an owned future, for tasks that outlive `self`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut fired = self.fired.clone();
        async move {
            let _ = fired.wait_for(|stopped| *stopped).await;
        }
    }

    /// What is left of `grace` since the shutdown fired (all of it if it has not).
    pub fn remaining(&self, grace: Duration) -> Duration {
        self.fired_at
            .get()
            .map_or(grace, |at| grace.saturating_sub(at.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_fires_every_observer_and_starts_the_grace_clock() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::on(async {
            let _ = rx.await;
        });
        let observer = shutdown.clone();
        assert!(!observer.is_fired());
        assert_eq!(
            observer.remaining(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), observer.wait())
            .await
            .expect("fired");
        assert!(shutdown.remaining(Duration::from_secs(5)) <= Duration::from_secs(5));
        // A late observer sees it at once.
        tokio::time::timeout(Duration::from_millis(100), shutdown.clone().wait())
            .await
            .expect("already fired");
    }
}
