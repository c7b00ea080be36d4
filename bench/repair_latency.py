#!/usr/bin/env python3
"""Added latency and upstream call counts of the check-and-repair workflow.

Starts the release binary's emulator and a proxy in front of it (127.0.0.1
only), then, N times per scenario, measures one Participant create:

  direct      emulator only, no fault (the baseline)
  passthrough through the proxy, no fault (interception point, no 20404)
  genuine     through the proxy, missing conversation (404/20404, nothing to fix)
  existing    through the proxy, ghost fault (404/20404 but created)
  repaired    through the proxy, block fault (User deleted, recreated, replayed)

and prints median and p95 latency per scenario, the difference to `direct`,
and the upstream calls each outcome cost (read from the emulator's request
log). Usage: bench/repair_latency.py [N]   (default 50; needs
target/release/twilio-repair-proxy: cargo build --release)
"""

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "twilio-repair-proxy")
ACCOUNT = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
TOKEN = "emulatortoken0000000000000000000"
AUTH = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(method, url, form=None, auth=True, body_json=None):
    data = None
    headers = {}
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if body_json is not None:
        data = json.dumps(body_json).encode()
        headers["Content-Type"] = "application/json"
    if auth:
        headers["Authorization"] = AUTH
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, dict(r.headers), raw
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait(url):
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{url} never came up")


def main():
    import urllib.parse  # noqa: F401  (used by call)

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    emu_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    emu = f"http://127.0.0.1:{emu_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    tmp = tempfile.mkdtemp(prefix="trp-bench-")
    env = dict(os.environ, TRP_LOG_LEVEL="warn")
    procs = [
        subprocess.Popen([BIN, "emulator", "--listen", f"127.0.0.1:{emu_port}", "--public-url", emu],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env),
        subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{proxy_port}",
                          "--admin-listen", f"127.0.0.1:{admin_port}", "--upstream", emu,
                          "--store", f"sqlite://{tmp}/journal.db"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(env, TRP_REPAIR_MAX_REPAIRS_PER_WINDOW="100000")),
    ]
    try:
        wait(f"{emu}/__emulator/health")
        wait(f"http://127.0.0.1:{admin_port}/readyz")
        _, _, body = call("POST", f"{emu}/v1/Services", {"FriendlyName": "bench"})
        svc = json.loads(body)["sid"]
        base = f"/v1/Services/{svc}"

        def conversation():
            _, _, b = call("POST", f"{emu}{base}/Conversations", {"FriendlyName": "c"})
            return json.loads(b)["sid"]

        def arm(identity, mode, ch):
            call("PUT", f"{emu}/__emulator/fault", auth=False,
                 body_json={"mode": mode, "identities": [identity]})
            _, _, b = call("POST", f"{emu}{base}/Conversations/{ch}/Participants", {"Identity": identity})
            mb = json.loads(b)["sid"]
            call("DELETE", f"{emu}{base}/Conversations/{ch}/Participants/{mb}")

        def log_len():
            _, _, b = call("GET", f"{emu}/__emulator/requests", auth=False)
            return len(json.loads(b)["requests"])

        results = {}
        calls = {}
        for scenario in ["direct", "passthrough", "genuine", "existing", "repaired"]:
            times = []
            for i in range(n):
                ch = conversation()
                identity = f"{scenario}-{i}"
                origin = proxy
                target_ch = ch
                if scenario == "direct":
                    origin = emu
                elif scenario == "genuine":
                    target_ch = "CH" + "0" * 32
                elif scenario == "existing":
                    arm(identity, "ghost", ch)
                elif scenario == "repaired":
                    arm(identity, "block", ch)
                before = log_len()
                t0 = time.perf_counter()
                status, headers, _ = call("POST", f"{origin}{base}/Conversations/{target_ch}/Participants",
                                          {"Identity": identity})
                times.append((time.perf_counter() - t0) * 1000)
                upstream_calls = log_len() - before
                expect = {"direct": 201, "passthrough": 201, "genuine": 404, "existing": 201, "repaired": 201}
                if status != expect[scenario]:
                    sys.exit(f"{scenario}: unexpected status {status}")
                outcome = headers.get("X-Repair-Outcome") or headers.get("x-repair-outcome")
                if scenario in ("genuine", "existing", "repaired") and outcome != scenario:
                    sys.exit(f"{scenario}: outcome {outcome}")
                calls[scenario] = upstream_calls
            results[scenario] = times
        base_med = statistics.median(results["direct"])
        print(f"{'scenario':<12} {'median ms':>10} {'p95 ms':>8} {'+ms vs direct':>14} {'upstream calls':>15}")
        lines = []
        for s, t in results.items():
            t = sorted(t)
            med = statistics.median(t)
            p95 = t[max(0, int(len(t) * 0.95) - 1)]
            line = f"{s:<12} {med:>10.2f} {p95:>8.2f} {med - base_med:>14.2f} {calls[s]:>15}"
            print(line)
            lines.append(line)
        os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "out", "repair_latency.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
