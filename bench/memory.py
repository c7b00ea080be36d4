#!/usr/bin/env python3
"""Memory of the proxy (and of nginx proxy_pass, for comparison) with many
idle keep-alive client connections, and while 100 MB bodies stream through.

Usage: python3 bench/memory.py        (or: bash bench/memory.sh)

1. Idle connections: IDLE_CONNECTIONS (default 10,000) clients connect,
   each sends one GET (answered by the upstream through the proxy) and then
   stays connected, idle, in keep-alive. RSS of the proxy process (of nginx's
   master + workers) before and with them all open; bytes per idle
   connection = the difference / IDLE_CONNECTIONS.
2. Streaming: a STREAM_MB (default 100) MB upload (POST, Content-Length,
   curl -T) and download (GET of a static file) through the proxy, the
   download read by a client limited to STREAM_RATE (default 50M) bytes/s
   so the proxy must hold the upstream back instead of buffering. The
   proxy's RSS is sampled every 10 ms during each transfer: flat memory
   means the peak stays within a few MiB of the RSS before.

Everything runs on 127.0.0.1 (ports BASE_PORT+1..+13, default 18480): an
nginx upstream, an nginx proxy_pass and twilio-repair-proxy with its shipped
defaults, except limits.max_connections raised to hold the idle clients.
Needs nginx (nginx-light), curl and target/release/twilio-repair-proxy
(built if missing); raises its own open-file limit to the hard limit.
"""

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = int(os.environ.get("BASE_PORT", "18480"))
UP, NGX, TRP, TRP_ADMIN = BASE + 1, BASE + 2, BASE + 3, BASE + 13
IDLE = int(os.environ.get("IDLE_CONNECTIONS", "10000"))
STREAM_MB = int(os.environ.get("STREAM_MB", "100"))
STREAM_RATE = os.environ.get("STREAM_RATE", "50M")
TRP_BIN = os.environ.get("TRP_BIN", os.path.join(ROOT, "target/release/twilio-repair-proxy"))
OUT_DIR = os.environ.get("OUT_DIR", os.path.join(ROOT, "bench/out"))
PATH = "/v1/Services/ISaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Conversations/CHaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Participants/MBaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


def log(msg):
    print(f"[memory] {msg}", file=sys.stderr, flush=True)


def kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def rss_kib(pids):
    return sum(kib(p, "VmRSS") for p in pids)


def wait_port(port, tries=300):
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def http_get_ok(port, path="/"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.startswith(b"HTTP/1.1 200")


def ensure_tools():
    missing = [p for c, p in (("nginx", "nginx-light"), ("curl", "curl")) if not shutil.which(c) and not os.path.exists("/usr/sbin/" + c)]
    if missing:
        log("installing " + " ".join(missing))
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(sudo + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q"] + missing, check=True, stdout=subprocess.DEVNULL)
    if not os.access(TRP_BIN, os.X_OK):
        log(f"building {TRP_BIN}")
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)


def nginx_conf(tmp, name, body):
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes {'1' if name == 'upstream' else 'auto'};
worker_rlimit_nofile 40000;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 30000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_max_body_size 0;
  server_tokens off;
{body}
}}
"""


def open_idle(port, n):
    """n connections, each after one answered GET, left open and idle."""
    socks = []
    req = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()
    batch = 200
    for start in range(0, n, batch):
        group = []
        for _ in range(min(batch, n - start)):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(req)
            group.append(s)
        for s in group:
            # The answer ends with the body; read the head and the
            # Content-Length worth of body.
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("connection closed before an answer")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit("unexpected answer: " + head.split(b"\r\n")[0].decode())
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(rest) < length:
                rest += s.recv(65536)
        socks.extend(group)
    return socks


def idle_figure(name, port, pids_fn):
    before = rss_kib(pids_fn())
    t0 = time.time()
    socks = open_idle(port, IDLE)
    # The proxy parks an idle HTTP/1 connection (drops its buffers) between
    # one and two limits.idle_park_ms (1 s) after its answer: measure after.
    time.sleep(3)
    during = rss_kib(pids_fn())
    took = time.time() - t0
    for s in socks:
        s.close()
    time.sleep(1)
    per_conn = (during - before) * 1024 / IDLE
    log(f"{name}: {IDLE} idle connections opened in {took:.1f} s; RSS {before} KiB -> {during} KiB")
    return before, during, per_conn


def sample_rss(pid, stop, out):
    peak = 0
    while not stop.is_set():
        peak = max(peak, kib(pid, "VmRSS"))
        time.sleep(0.01)
    out.append(peak)


def transfer(pid, args):
    """Run curl args while sampling pid's RSS: (seconds, rss before, peak)."""
    before = kib(pid, "VmRSS")
    stop, out = threading.Event(), []
    t = threading.Thread(target=sample_rss, args=(pid, stop, out))
    t.start()
    t0 = time.time()
    r = subprocess.run(["curl", "-sS", "-f"] + args, capture_output=True, text=True)
    took = time.time() - t0
    stop.set()
    t.join()
    if r.returncode != 0:
        raise SystemExit(f"curl {' '.join(args)} failed: {r.stderr}")
    return took, before, out[0], r.stdout.strip()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < IDLE + 1000:
        raise SystemExit(f"the open-file hard limit ({hard}) is below {IDLE + 1000}")
    ensure_tools()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = tempfile.mkdtemp(prefix="trp-memory.")
    os.chmod(tmp, 0o755)
    procs = []
    try:
        big = os.path.join(tmp, "www", "big.bin")
        os.makedirs(os.path.dirname(big))
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(STREAM_MB):
                f.write(chunk)
        body = open(os.path.join(ROOT, "bench/participant.json")).read().replace("\\", "\\\\").replace("'", "\\'")
        up = nginx_conf(tmp, "upstream", f"""
  server {{
    listen 127.0.0.1:{UP} backlog=4096;
    location = /big.bin {{ root {tmp}/www; }}
    location /upload {{ return 200 'uploaded\\n'; }}
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}""")
        ngx = nginx_conf(tmp, "nginx", f"""
  upstream u {{ server 127.0.0.1:{UP}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{NGX} backlog=4096;
    location / {{
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""")
        for name, text in (("upstream", up), ("nginx", ngx)):
            path = os.path.join(tmp, name + ".conf")
            open(path, "w").write(text)
            procs.append(subprocess.Popen([nginx, "-c", path, "-p", tmp]))
        ngx_master = procs[-1].pid
        os.makedirs(os.path.join(tmp, "trp"))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.path.join(tmp, "trp"),
            "TRP_LIMITS_MAX_CONNECTIONS": str(IDLE + 1000),
            "TRP_LOG_LEVEL": "warn",
        }
        trp = subprocess.Popen(
            [TRP_BIN, "serve", "--listen", f"127.0.0.1:{TRP}", "--admin-listen", f"127.0.0.1:{TRP_ADMIN}",
             "--upstream", f"http://127.0.0.1:{UP}", "--store", f"sqlite://{tmp}/trp/journal.db"],
            env=env, stdout=open(os.path.join(tmp, "trp/stdout.log"), "w"),
            stderr=open(os.path.join(tmp, "trp/stderr.log"), "w"))
        procs.append(trp)
        for port in (UP, NGX, TRP, TRP_ADMIN):
            wait_port(port)
        for port in (UP, NGX, TRP):
            assert http_get_ok(port, PATH), f"port {port} did not answer 200"

        load_before = open("/proc/loadavg").read().split()[:3]
        # Warm both up a little so that one-time allocations are not counted
        # per connection.
        for port in (TRP, NGX):
            for s in open_idle(port, 200):
                s.close()
        time.sleep(1)
        trp_idle = idle_figure("proxy", TRP, lambda: [trp.pid])
        ngx_idle = idle_figure("nginx", NGX, lambda: [ngx_master] + children(ngx_master))
        trp_hwm_idle = kib(trp.pid, "VmHWM")

        log(f"streaming {STREAM_MB} MB through the proxy")
        up_file = big
        upload = transfer(trp.pid, ["-o", "/dev/null", "-w", "%{size_upload}", "-T", up_file,
                                    "-X", "POST", "-H", "Content-Type: application/octet-stream",
                                    f"http://127.0.0.1:{TRP}/upload"])
        download = transfer(trp.pid, ["-o", "/dev/null", "-w", "%{size_download}", "--limit-rate", STREAM_RATE,
                                      f"http://127.0.0.1:{TRP}/big.bin"])
        download_fast = transfer(trp.pid, ["-o", "/dev/null", "-w", "%{size_download}",
                                           f"http://127.0.0.1:{TRP}/big.bin"])
        load_after = open("/proc/loadavg").read().split()[:3]

        mib = lambda k: f"{k / 1024:.1f}"
        lines = [
            "# twilio-repair-proxy memory",
            "",
            f"- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; machine: {os.cpu_count()} CPUs, Linux {os.uname().release}",
            f"- proxy: {TRP_BIN}, shipped defaults + limits.max_connections={IDLE + 1000}, TRP_LOG_LEVEL=warn; nginx proxy_pass worker_processes auto, access_log off",
            f"- loadavg before {' '.join(load_before)}, after {' '.join(load_after)}",
            "",
            f"## {IDLE} idle keep-alive client connections (each after one answered GET)",
            "",
            "| | RSS before KiB | RSS with them open KiB | bytes per idle connection |",
            "|---|---:|---:|---:|",
            f"| proxy | {trp_idle[0]} | {trp_idle[1]} ({mib(trp_idle[1])} MiB) | {trp_idle[2]:.0f} |",
            f"| nginx (master + workers) | {ngx_idle[0]} | {ngx_idle[1]} ({mib(ngx_idle[1])} MiB) | {ngx_idle[2]:.0f} |",
            "",
            f"proxy peak RSS (VmHWM) so far: {trp_hwm_idle} KiB ({mib(trp_hwm_idle)} MiB); target: under 100 MiB with {IDLE} idle connections",
            "",
            f"## {STREAM_MB} MB bodies streamed through the proxy (RSS sampled every 10 ms)",
            "",
            "| transfer | seconds | bytes | proxy RSS before KiB | peak RSS during KiB | growth KiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, (took, before, peak, size) in (
            (f"upload (POST, curl -T), full speed", upload),
            (f"download, client limited to {STREAM_RATE}B/s", download),
            ("download, full speed", download_fast),
        ):
            lines.append(f"| {name} | {took:.2f} | {size} | {before} | {peak} | {peak - before} |")
        text = "\n".join(lines) + "\n"
        os.makedirs(OUT_DIR, exist_ok=True)
        open(os.path.join(OUT_DIR, "memory.md"), "w").write(text)
        print(text)
        log(f"results written to {OUT_DIR}/memory.md")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
