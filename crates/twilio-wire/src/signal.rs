//! The signal a server stops on: Ctrl-C (SIGINT), SIGTERM (what container
//! engines and orchestrators send) or SIGQUIT (nginx's graceful stop, the
//! `STOPSIGNAL` of its images: without a handler it would end the process
//! at once, with no drain). All three drain the same way.

/// Completes on SIGINT, SIGTERM or SIGQUIT. A signal that cannot be watched
/// (no handler could be installed) never completes, rather than stopping
/// the server at once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = unix_signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let quit = unix_signal(tokio::signal::unix::SignalKind::quit());
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    #[cfg(not(unix))]
    let quit = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
        () = quit => {},
    }
}

/// The first `kind` signal (never, if its handler cannot be installed).
#[cfg(unix)]
async fn unix_signal(kind: tokio::signal::unix::SignalKind) {
    match tokio::signal::unix::signal(kind) {
        Ok(mut sig) => {
            sig.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
