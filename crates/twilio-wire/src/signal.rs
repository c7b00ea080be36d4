//! The signal a server stops on: Ctrl-C (SIGINT) or SIGTERM (what container
//! engines and orchestrators send).

/// Completes on SIGINT or SIGTERM. A signal that cannot be watched (no
/// handler could be installed) never completes, rather than stopping the
/// server at once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
