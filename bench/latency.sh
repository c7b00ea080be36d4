#!/usr/bin/env bash
# Latency of a real-call shape: a TLS upstream (bench/tls_upstream.py, a
# stand-in for Twilio) behind bench/delay_relay.py, which adds a network
# round-trip time (20 ms and 80 ms by default) in user space, reached
#
#   direct: curl -> relay (RTT) -> TLS upstream, HTTPS end to end;
#   proxy:  curl -> plain HTTP on loopback -> the proxy -> its pooled TLS
#           connection -> relay (RTT) -> TLS upstream (the proxy trusts the
#           bench's test CA through upstream_ca_file);
#
# by two kinds of client:
#
#   (a) new connection per call: one curl process per request (PHP-FPM,
#       serverless functions, cron scripts, a `Client` per request): direct,
#       each call pays a TCP handshake and a TLS handshake across the RTT;
#   (b) keep-alive: one curl process sending every request on one
#       connection (the first 5, connection set-up, are dropped).
#
# curl's own `time_total` of every request is the sample. Prints p50/p90/p99
# and mean per RTT, client and path, and what the proxy adds (negative:
# faster than direct). See bench/README.md.
#
# Environment knobs (all optional):
#   RTTS="20 80"      round-trip times (ms) the relay adds, a list
#   N_NEWCONN=100     requests per new-connection run
#   N_KEEPALIVE=150   requests per keep-alive run
#   ROUNDS=2          runs per case, direct and proxy interleaved
#   THINK_MS=0        the upstream's think time per answer (Twilio's own
#                     processing; the same on both paths)
#   LINKS=request     the proxy's public_base_url: request (the shipped
#                     default: the answer's `url` names the proxy, so the
#                     answer is buffered and scanned) or off (pass-through)
#   PROXY_LOG=on      on: the proxy's shipped logging defaults (info) to a
#                     file; off: TRP_LOG_LEVEL=warn
#   TRP_BIN=...       proxy binary (default target/release/twilio-repair-proxy)
#   BASE_PORT=18380   BASE+1 TLS upstream, BASE+2 relay, BASE+3 proxy,
#                     BASE+13 proxy admin
#   OUT_DIR=bench/out results in OUT_DIR/latency.md
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
RTTS="${RTTS:-20 80}"
N_NEWCONN="${N_NEWCONN:-100}"
N_KEEPALIVE="${N_KEEPALIVE:-150}"
ROUNDS="${ROUNDS:-2}"
THINK_MS="${THINK_MS:-0}"
PROXY_LOG="${PROXY_LOG:-on}"
LINKS="${LINKS:-request}"
BASE_PORT="${BASE_PORT:-18380}"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
TRP_BIN="${TRP_BIN:-$ROOT/target/release/twilio-repair-proxy}"
UP_PORT=$((BASE_PORT + 1))
RELAY_PORT=$((BASE_PORT + 2))
TRP_PORT=$((BASE_PORT + 3))
TRP_ADMIN_PORT=$((BASE_PORT + 13))

LOG_TAG=latency-bench
# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

for r in $RTTS; do case "$r" in '' | *[!0-9]*) die "RTTS entries are whole milliseconds, not '$r'" ;; esac; done
case "$PROXY_LOG" in on | off) ;; *) die "PROXY_LOG is 'on' or 'off', not '$PROXY_LOG'" ;; esac
case "$LINKS" in request | off) ;; *) die "LINKS is 'request' or 'off', not '$LINKS'" ;; esac

need curl:curl openssl:openssl python3:python3
need_proxy_binary

TMP="$(mktemp -d /tmp/trp-latency-bench.XXXXXX)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
mkdir -p "$OUT_DIR"
for port in "$UP_PORT" "$RELAY_PORT" "$TRP_PORT" "$TRP_ADMIN_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use (set BASE_PORT)"; fi
done

log "generating a test CA and a server certificate for 127.0.0.1"
make_test_certs "$TMP"

wait_ready() { # url tries [curl args]
  local i url="$1" tries="$2"; shift 2
  for ((i = 0; i < tries; i++)); do
    curl -fsS -o /dev/null "$@" "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

log "starting the TLS upstream on 127.0.0.1:$UP_PORT (think time $THINK_MS ms)"
python3 "$BENCH_DIR/tls_upstream.py" "$UP_PORT" "$BODY_FILE" \
  --cert "$TMP/server.pem" --key "$TMP/server.key" --think-ms "$THINK_MS" \
  >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_ready "https://127.0.0.1:$UP_PORT/" 100 --cacert "$TMP/ca.pem" || { cat "$TMP/upstream.log" >&2; die "TLS upstream did not start"; }

DIRECT_URL="https://127.0.0.1:$RELAY_PORT$REQ_PATH"
PROXY_URL="http://127.0.0.1:$TRP_PORT$REQ_PATH"
RELAY_PID="" TRP_PID=""

# The relay with RTT $1, and a fresh proxy behind it (its pool starts empty:
# its first request opens the warm connection every later one reuses).
start_path() {
  log "starting the relay on 127.0.0.1:$RELAY_PORT (RTT $1 ms) and the proxy on 127.0.0.1:$TRP_PORT (upstream https://127.0.0.1:$RELAY_PORT, logs $PROXY_LOG)"
  python3 "$BENCH_DIR/delay_relay.py" "$RELAY_PORT" "$UP_PORT" --rtt-ms "$1" >"$TMP/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=($RELAY_PID)
  local level=()
  [ "$PROXY_LOG" = off ] && level=(TRP_LOG_LEVEL=warn)
  rm -rf "$TMP/trp"
  mkdir -p "$TMP/trp"
  env -i PATH="$PATH" HOME="$TMP/trp" "${level[@]}" TRP_UPSTREAM_CA_FILE="$TMP/ca.pem" TRP_PUBLIC_BASE_URL="$LINKS" \
    "$TRP_BIN" serve \
    --listen "127.0.0.1:$TRP_PORT" --admin-listen "127.0.0.1:$TRP_ADMIN_PORT" \
    --upstream "https://127.0.0.1:$RELAY_PORT" --store "sqlite://$TMP/trp/journal.db" \
    >"$TMP/trp/stdout.log" 2>"$TMP/trp/stderr.log" &
  TRP_PID=$!
  PIDS+=($TRP_PID)
  wait_ready "http://127.0.0.1:$TRP_ADMIN_PORT/readyz" 300 || { cat "$TMP/trp/stderr.log" >&2; die "proxy not ready"; }
  # The proxy's answer: the participant, its link rewritten when LINKS=request.
  sed -e "s#\"url\": \"https://conversations.twilio.com/#\"url\": \"http://127.0.0.1:$TRP_PORT/#" "$BODY_FILE" >"$TMP/expected-proxy.json"
  [ "$LINKS" = off ] && cp "$BODY_FILE" "$TMP/expected-proxy.json"
  local url expected
  for url in "$DIRECT_URL" "$PROXY_URL"; do
    expected="$BODY_FILE"
    [ "$url" = "$PROXY_URL" ] && expected="$TMP/expected-proxy.json"
    wait_ready "$url" 100 --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" || { tail -5 "$TMP/trp/stderr.log" "$TMP/relay.log" >&2; die "$url failed"; }
    curl -fsS --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" -o "$TMP/check.json" "$url"
    cmp -s "$expected" "$TMP/check.json" || die "$url returned a different body"
  done
}
stop_path() {
  kill -0 "$TRP_PID" 2>/dev/null || die "the proxy died during the run"
  stop_pid "$TRP_PID"
  stop_pid "$RELAY_PID"
}

# (a) one curl process per request: a new TCP connection each time (and,
# direct, a new TLS handshake; curl keeps no session cache between runs).
newconn_run() { # url out
  local i
  for ((i = 0; i < N_NEWCONN; i++)); do
    curl -sS --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" -H 'Accept: application/json' \
      -o /dev/null -w '%{time_total}\n' "$1" >>"$2"
  done
}
# (b) N requests on one keep-alive connection; the first 5 are dropped.
keepalive_run() { # url out
  local cfg="$TMP/keepalive.cfg" i
  : >"$cfg"
  for ((i = 0; i < N_KEEPALIVE + 5; i++)); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$1" >>"$cfg"
  done
  curl -sS --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" -H 'Accept: application/json' \
    -w '%{time_total}\n' --config "$cfg" | tail -n +6 >>"$2"
}

busy_compilers() { pgrep -c -x 'rustc|cc1|cc1plus|ld|ld.lld|cargo|clang' 2>/dev/null || true; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_MAX="$(busy_compilers)"

for rtt in $RTTS; do
  start_path "$rtt"
  for ((r = 1; r <= ROUNDS; r++)); do
    for client in newconn keepalive; do
      for path in direct proxy; do
        url="$DIRECT_URL"
        [ "$path" = proxy ] && url="$PROXY_URL"
        log "RTT $rtt ms, round $r/$ROUNDS: $client $path"
        "${client}_run" "$url" "$TMP/$rtt-$client-$path.txt"
      done
    done
    b="$(busy_compilers)"; [ "${b:-0}" -gt "${BUSY_MAX:-0}" ] && BUSY_MAX="$b"
  done
  stop_path
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- report
stats() { # file -> "n p50 p90 p99 mean" in ms
  python3 - "$1" <<'EOF'
import sys
v = sorted(float(x) * 1000 for x in open(sys.argv[1]) if x.strip())
def pct(p):
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]
print(len(v), *("%.2f" % pct(p) for p in (50, 90, 99)), "%.2f" % (sum(v) / len(v)))
EOF
}
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'; }
declare -A ST

{
  echo "# twilio-repair-proxy: latency of a Twilio-like call, direct vs through the proxy"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r)"
  echo "- proxy: \`$TRP_BIN\` ($("$TRP_BIN" --version 2>/dev/null || echo '?')), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), logs $PROXY_LOG, public_base_url $LINKS"
  echo "- upstream: bench/tls_upstream.py (Python asyncio + ssl, TLS 1.3, ALPN http/1.1, ECDSA P-256 test certificate), $THINK_MS ms think time, behind bench/delay_relay.py adding the RTT (RTT/2 each way; a new connection's first bytes held one RTT for the TCP handshake)"
  echo "- direct: curl HTTPS through the relay (test CA via --cacert); proxy: curl plain HTTP to the proxy on loopback, the proxy's pooled TLS connection through the relay (upstream_ca_file = the test CA)"
  echo "- client: $(curl --version | head -1 | cut -d' ' -f1-2), time_total per request; new connection: $ROUNDS x $N_NEWCONN curl processes per path; keep-alive: $ROUNDS x $N_KEEPALIVE requests on one connection per path"
  echo "- machine load: loadavg before $LOAD_BEFORE, after $LOAD_AFTER; compiler processes seen: up to ${BUSY_MAX:-0}"
  echo
  echo "| RTT | client | path | n | p50 ms | p90 ms | p99 ms | mean ms |"
  echo "|---:|---|---|---:|---:|---:|---:|---:|"
  for rtt in $RTTS; do
    for client in newconn keepalive; do
      for path in direct proxy; do
        ST[$rtt,$client,$path]="$(stats "$TMP/$rtt-$client-$path.txt")"
        read -r n p50 p90 p99 mean <<<"${ST[$rtt,$client,$path]}"
        label="new connection per call"
        [ "$client" = keepalive ] && label="keep-alive"
        echo "| $rtt ms | $label | $path | $n | $p50 | $p90 | $p99 | $mean |"
      done
    done
  done
  echo
  echo "| RTT | client | proxy − direct at p50 | at p99 | mean |"
  echo "|---:|---|---:|---:|---:|"
  for rtt in $RTTS; do
    for client in newconn keepalive; do
      read -r _ dp50 _ dp99 dmean <<<"${ST[$rtt,$client,direct]}"
      read -r _ pp50 _ pp99 pmean <<<"${ST[$rtt,$client,proxy]}"
      label="new connection per call"
      [ "$client" = keepalive ] && label="keep-alive"
      echo "| $rtt ms | $label | $(diff_ms "$pp50" "$dp50") ms | $(diff_ms "$pp99" "$dp99") ms | $(diff_ms "$pmean" "$dmean") ms |"
    done
  done
  echo
  echo "(negative: the call through the proxy is faster than direct)"
} >"$OUT_DIR/latency.md"
cat "$OUT_DIR/latency.md"
log "results written to $OUT_DIR/latency.md"
