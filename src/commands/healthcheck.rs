//! `healthcheck`: exit 0 if the admin listener's `/healthz` answers 200
//! (for container `HEALTHCHECK`s, which have no curl).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use super::CommandError;
use crate::cli::{HealthcheckArgs, ServeArgs};

pub async fn run(args: HealthcheckArgs) -> Result<ExitCode, CommandError> {
    let addr = match args.admin {
        Some(a) => a,
        None => ServeArgs::default().load()?.admin_listen,
    };
    Ok(if healthy(addr, Duration::from_secs(args.timeout)).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `GET /healthz` over a plain TCP connection; true on a 200.
pub async fn healthy(addr: SocketAddr, timeout: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
}
