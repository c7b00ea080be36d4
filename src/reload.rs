//! Reload notices: SIGHUP never ends the process; it tells every
//! subscriber to re-read what it can re-read (today the listener's TLS
//! certificate, [`crate::server::tls`]; the configuration reload can
//! subscribe the same way).
//!
//! A [`Reload`] is a `watch` channel of a counter: a subscriber sees the
//! latest notice, never a queue (two SIGHUPs in quick succession may be
//! one reload, which re-reads the same files). Subscribers hold a
//! [`tokio::sync::watch::Receiver`] and loop on `changed()`; it ends when
//! the [`Reload`] is dropped.

use tokio::sync::watch;

/// The sender of reload notices.
#[derive(Debug, Clone)]
pub struct Reload(watch::Sender<u64>);

impl Default for Reload {
    fn default() -> Self {
        Reload(watch::Sender::new(0))
    }
}

impl Reload {
    /// A channel nobody notifies yet (see [`Reload::on_sighup`]).
    pub fn new() -> Reload {
        Reload::default()
    }

    /// A receiver of every later notice.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// Notify every subscriber once.
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Handle SIGHUP from now on (its default action, ending the process,
    /// is replaced): each one is a notice and a log line. Must be called
    /// inside a tokio runtime; the listener task lives as long as the
    /// runtime.
    #[cfg(unix)]
    pub fn on_sighup(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let me = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                me.notify();
            }
        });
        Ok(())
    }

    /// No SIGHUP off Unix: notices come only from [`Reload::notify`].
    #[cfg(not(unix))]
    pub fn on_sighup(&self) -> std::io::Result<()> {
        Ok(())
    }
}
