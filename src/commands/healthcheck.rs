//! `healthcheck`: exit 0 if the admin listener's `/healthz` answers 200
//! (for container `HEALTHCHECK`s, which have no curl); otherwise exit 1
//! with one line on stderr saying why.

use std::process::ExitCode;
use std::time::Duration;

use super::CommandError;
use crate::cli::{HealthcheckArgs, ServeArgs};

pub async fn run(args: HealthcheckArgs) -> Result<ExitCode, CommandError> {
    let addr = match args.admin {
        Some(a) => a,
        None => ServeArgs::default().load()?.admin_listen.to_string(),
    };
    Ok(
        match healthy(&addr, Duration::from_secs(args.timeout)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("healthcheck: {addr}: {why}");
                ExitCode::FAILURE
            }
        },
    )
}

/// `GET /healthz` on `addr` (`host:port`, a name or an IP) over a plain
/// TCP connection; `Err` says why it is not healthy.
pub async fn healthy(addr: &str, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(|e| format!("cannot send the probe: {e}"))?;
        let mut buf = [0u8; 32];
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let head = String::from_utf8_lossy(&buf[..n]);
        let status = head.lines().next().unwrap_or("").trim().to_string();
        if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
            Ok(())
        } else if status.is_empty() {
            Err("the connection closed without an answer".to_string())
        } else {
            Err(format!("/healthz answered {status:?}"))
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}
