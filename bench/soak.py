#!/usr/bin/env python3
"""Soak: mixed pass-through and intercepted traffic against the emulator,
through a release proxy, sampling the proxy's RSS, open fds and threads.

    python3 bench/soak.py [SECONDS] [SAMPLE_EVERY]     # default 1800 10

Everything runs on 127.0.0.1 (ports from BASE_PORT, default 18181). Not
part of the test suite: a leak shows as a drift between the first and the
last samples, printed at the end as start -> end. Bounded in time; stops
everything it started.
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TRP_BIN", os.path.join(ROOT, "target/release/twilio-repair-proxy"))
BASE = int(os.environ.get("BASE_PORT", "18181"))
ACCOUNT = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
TOKEN = "emulatortoken0000000000000000000"
AUTH = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
EMU = f"http://127.0.0.1:{BASE}"
PROXY = f"http://127.0.0.1:{BASE + 1}"
ADMIN = f"http://127.0.0.1:{BASE + 2}"


def call(base, method, path, form=None, timeout=30):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", AUTH)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("x-repair-outcome"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-repair-outcome"), e.read()


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    rss_kib = int(st["VmRSS"].split()[0])
    threads = int(st["Threads"].strip())
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib, fds, threads


def wait_up(url):
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} never came up")


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 1800
    every = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="trp-soak.")
    env = dict(os.environ, TRP_LOG_LEVEL="warn", NO_PROXY="127.0.0.1,localhost")
    emu = subprocess.Popen([BIN, "emulator", "--listen", f"127.0.0.1:{BASE}",
                            "--public-url", EMU], env=env, stdout=subprocess.DEVNULL)
    proxy = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{BASE + 1}",
                              "--admin-listen", f"127.0.0.1:{BASE + 2}", "--upstream", EMU,
                              "--store", f"sqlite://{work}/journal.db"],
                             env=env, stdout=subprocess.DEVNULL, stderr=open(f"{work}/proxy.log", "w"))
    try:
        wait_up(EMU + "/__emulator/health")
        wait_up(ADMIN + "/healthz")
        _, _, svc = call(EMU, "POST", "/v1/Services", {"FriendlyName": "soak"})
        svc = json.loads(svc)["sid"]
        base = f"/v1/Services/{svc}"
        fault = json.dumps({"mode": "block", "identity_pattern": "^stale-"}).encode()
        urllib.request.urlopen(urllib.request.Request(EMU + "/__emulator/fault", data=fault, method="PUT",
                                                      headers={"Content-Type": "application/json"}))
        stop = time.monotonic() + seconds
        counts = {"pass": 0, "repaired": 0, "other": 0, "errors": 0}
        lock = threading.Lock()

        def passthrough():
            while time.monotonic() < stop:
                s, _, _ = call(PROXY, "GET", f"{base}/Conversations?PageSize=5")
                with lock:
                    counts["pass" if s == 200 else "errors"] += 1

        def intercepted():
            n = 0
            while time.monotonic() < stop:
                n += 1
                ident = f"stale-{n}"
                _, _, ch = call(EMU, "POST", f"{base}/Conversations", {"FriendlyName": "c"})
                ch = json.loads(ch)["sid"]
                call(EMU, "POST", f"{base}/Users", {"Identity": ident, "FriendlyName": "S", "Attributes": "{\"n\":1}"})
                call(EMU, "POST", f"{base}/Conversations/{ch}/Participants", {"Identity": ident})
                call(EMU, "DELETE", f"{base}/Conversations/{ch}/Participants/{ident}")
                s, outcome, _ = call(PROXY, "POST", f"{base}/Conversations/{ch}/Participants", {"Identity": ident})
                with lock:
                    key = "repaired" if (s == 201 and outcome == "repaired") else ("errors" if s >= 500 else "other")
                    counts[key] += 1
                # Keep the emulator's state bounded.
                call(EMU, "DELETE", f"{base}/Conversations/{ch}")
                call(EMU, "DELETE", f"{base}/Users/{ident}")

        threads = [threading.Thread(target=passthrough) for _ in range(4)] + [threading.Thread(target=intercepted)]
        for t in threads:
            t.start()
        samples = []
        t0 = time.monotonic()
        while time.monotonic() < stop:
            rss, fds, thr = sample(proxy.pid)
            samples.append((time.monotonic() - t0, rss, fds, thr))
            with lock:
                c = dict(counts)
            print(f"t={samples[-1][0]:7.0f}s rss={rss / 1024:6.1f} MiB fds={fds:4d} threads={thr:3d} {c}", flush=True)
            time.sleep(every)
        for t in threads:
            t.join()
        rss, fds, thr = sample(proxy.pid)
        samples.append((time.monotonic() - t0, rss, fds, thr))
        first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
        print(f"\nsoak {seconds} s: rss {first[1] / 1024:.1f} -> {last[1] / 1024:.1f} MiB, "
              f"fds {first[2]} -> {last[2]}, threads {first[3]} -> {last[3]}; "
              f"peak rss {max(s[1] for s in samples) / 1024:.1f} MiB; {counts}")
    finally:
        proxy.terminate()
        emu.terminate()
        proxy.wait(10)
        emu.wait(10)


if __name__ == "__main__":
    main()
