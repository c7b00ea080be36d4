//! The hyper floor: a minimal HTTP/1 pass-through proxy on hyper 1.x, built
//! the way the proxy is (one current-thread tokio runtime per worker thread,
//! hyper's HTTP/1 server in front, hyper's HTTP/1 client connection behind,
//! `writev(false)` on both sides) with nothing else: no routing, no pool
//! (one dedicated upstream connection per client connection, opened when the
//! client connects), no header rewriting, no metrics, no logging, no
//! watchdog. Whatever CPU per request it spends is hyper's, tokio's and the
//! kernel's, i.e. the floor under any proxy made of these parts.
//!
//! Usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]   (THREADS: 2)
//! Each thread listens on LISTEN_ADDR with SO_REUSEPORT and accepts for
//! itself. Bench-only: no limits, no timeouts; 127.0.0.1 only.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

type Sender = Rc<RefCell<Option<client::SendRequest<Incoming>>>>;

async fn forward(sender: Sender, req: Request<Incoming>) -> hyper::Result<Response<Incoming>> {
    // HTTP/1: one request at a time per connection, so the sender is free.
    let mut s = sender.borrow_mut().take().expect("one request at a time");
    let res = async {
        s.ready().await?;
        s.send_request(req).await
    }
    .await;
    *sender.borrow_mut() = Some(s);
    res
}

async fn serve(stream: TcpStream, upstream: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = client::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(up))
        .await
    else {
        return;
    };
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let sender: Sender = Rc::new(RefCell::new(Some(sender)));
    let svc = service_fn(move |req| forward(sender.clone(), req));
    let _ = server::Builder::new()
        .writev(false)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

fn worker(listen: SocketAddr, upstream: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(listen).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::task::spawn_local(serve(stream, upstream));
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM_ADDR");
    let threads: usize = args.get(3).map_or(2, |t| t.parse().expect("THREADS"));
    let handles: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || worker(listen, upstream)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
