#!/usr/bin/env bash
# What the proxy costs a real Twilio call: a TLS upstream on 127.0.0.1 with
# a test CA and a fixed think time per answer (Twilio answers in tens to
# hundreds of ms), reached by curl straight over TLS or through the proxy
# (plain HTTP to the proxy, the proxy's pooled TLS connection upstream,
# trusting the test CA through `upstream_ca_file`). See bench/README.md.
#
#   (a) keep-alive client: one curl process, N requests on one connection
#   (b) new connection per request: one curl process per request (as PHP,
#       shell and serverless apps do), so a direct client pays the TCP and
#       TLS handshake every time
#
# nginx in the same place (plain HTTP in, `proxy_pass https://` with a
# keep-alive upstream pool and the test CA as trusted certificate) is run
# the same way, as the reference for what any proxy adds on this machine.
#
# curl's own `time_total` of every request is the sample (the process start
# is not in it). Prints p50/p90/p99 and what the proxy and nginx add.
#
# Environment knobs (all optional):
#   N_KEEPALIVE=400   requests per keep-alive run
#   N_NEWCONN=150     requests per new-connection run
#   ROUNDS=2          runs per target and mode, interleaved (direct, proxy, ...)
#   THINK_MS=20       the upstream's think time per answer
#   PROXY_LOG=on      on: the proxy's shipped logging defaults (info) to a
#                     file; off: TRP_LOG_LEVEL=warn
#   TRP_BIN=...       proxy binary (default target/release/twilio-repair-proxy)
#   BASE_PORT=18280   BASE+1 TLS upstream, BASE+2 nginx, BASE+3 proxy,
#                     BASE+13 proxy admin
#   OUT_DIR=bench/out results in OUT_DIR/tls.md
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
N_KEEPALIVE="${N_KEEPALIVE:-400}"
N_NEWCONN="${N_NEWCONN:-150}"
ROUNDS="${ROUNDS:-2}"
THINK_MS="${THINK_MS:-20}"
PROXY_LOG="${PROXY_LOG:-on}"
BASE_PORT="${BASE_PORT:-18280}"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
TRP_BIN="${TRP_BIN:-$ROOT/target/release/twilio-repair-proxy}"
UP_PORT=$((BASE_PORT + 1))
TRP_PORT=$((BASE_PORT + 3))
TRP_ADMIN_PORT=$((BASE_PORT + 13))
NGX_PORT=$((BASE_PORT + 2))

LOG_TAG=tls-bench
# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

need curl:curl openssl:openssl python3:python3 nginx:nginx-light
need_proxy_binary

TMP="$(mktemp -d /tmp/trp-tls-bench.XXXXXX)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
mkdir -p "$OUT_DIR"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for port in "$UP_PORT" "$NGX_PORT" "$TRP_PORT" "$TRP_ADMIN_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use (set BASE_PORT)"; fi
done

# ---------------------------------------------------------------- test CA
log "generating a test CA and a server certificate for 127.0.0.1"
make_test_certs "$TMP"

# ---------------------------------------------------------------- processes
wait_ready() { # url tries [curl args]
  local i url="$1" tries="$2"; shift 2
  for ((i = 0; i < tries; i++)); do
    curl -fsS -o /dev/null "$@" "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

log "starting the TLS upstream on 127.0.0.1:$UP_PORT (think time $THINK_MS ms)"
python3 "$BENCH_DIR/tls_upstream.py" "$UP_PORT" "$BODY_FILE" \
  --cert "$TMP/server.pem" --key "$TMP/server.key" --think-ms "$THINK_MS" \
  >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_ready "https://127.0.0.1:$UP_PORT/" 100 --cacert "$TMP/ca.pem" || { cat "$TMP/upstream.log" >&2; die "TLS upstream did not start"; }

level=()
[ "$PROXY_LOG" = off ] && level=(TRP_LOG_LEVEL=warn)
log "starting the proxy on 127.0.0.1:$TRP_PORT (upstream https://127.0.0.1:$UP_PORT, upstream_ca_file = the test CA, logs $PROXY_LOG)"
mkdir -p "$TMP/trp"
env -i PATH="$PATH" HOME="$TMP/trp" "${level[@]}" TRP_UPSTREAM_CA_FILE="$TMP/ca.pem" TRP_PUBLIC_BASE_URL=off \
  "$TRP_BIN" serve \
  --listen "127.0.0.1:$TRP_PORT" --admin-listen "127.0.0.1:$TRP_ADMIN_PORT" \
  --upstream "https://127.0.0.1:$UP_PORT" --store "sqlite://$TMP/trp/journal.db" \
  >"$TMP/trp/stdout.log" 2>"$TMP/trp/stderr.log" &
TRP_PID=$!
PIDS+=($TRP_PID)
wait_ready "http://127.0.0.1:$TRP_ADMIN_PORT/readyz" 300 || { cat "$TMP/trp/stderr.log" >&2; die "proxy not ready"; }

ngx_log="access_log off;"
[ "$PROXY_LOG" = off ] || ngx_log="access_log $TMP/nginx/access.log;"
log "starting nginx on 127.0.0.1:$NGX_PORT (proxy_pass https, keep-alive upstream, test CA trusted, $ngx_log)"
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<NGX
worker_processes auto;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
  $ngx_log
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  upstream tls_up { server 127.0.0.1:$UP_PORT; keepalive 16; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass https://tls_up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_trusted_certificate $TMP/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
NGX
"$NGINX" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" >"$TMP/nginx/stdout.log" 2>&1 &
PIDS+=($!)

DIRECT_URL="https://127.0.0.1:$UP_PORT$REQ_PATH"
PROXY_URL="http://127.0.0.1:$TRP_PORT$REQ_PATH"
NGINX_URL="http://127.0.0.1:$NGX_PORT$REQ_PATH"
wait_ready "$NGINX_URL" 100 -H "Authorization: $AUTH" || { cat "$TMP/nginx/error.log" >&2; die "nginx did not start"; }
for url in "$DIRECT_URL" "$PROXY_URL" "$NGINX_URL"; do
  curl -fsS --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" -o "$TMP/check.json" "$url" ||
    { tail -5 "$TMP/trp/stderr.log" >&2; die "$url failed"; }
  cmp -s "$BODY_FILE" "$TMP/check.json" || die "$url returned a different body"
done
log "all three paths return the participant body"

# ---------------------------------------------------------------- runs
busy_compilers() { pgrep -c -x 'rustc|cc1|cc1plus|ld|ld.lld|cargo|clang' 2>/dev/null || true; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_MAX="$(busy_compilers)"

# (a) N requests on one keep-alive connection; the first 5 (connection
# set-up, the proxy's first upstream handshake) are dropped.
keepalive_run() { # url out
  local cfg="$TMP/keepalive.cfg" i
  : >"$cfg"
  for ((i = 0; i < N_KEEPALIVE + 5; i++)); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$1" >>"$cfg"
  done
  curl -sS --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" -H 'Accept: application/json' \
    -w '%{time_total}\n' --config "$cfg" | tail -n +6 >>"$2"
}
# (b) one curl process (so one TCP connection, and one TLS handshake when
# direct) per request.
newconn_run() { # url out
  local i
  for ((i = 0; i < N_NEWCONN; i++)); do
    curl -sS --cacert "$TMP/ca.pem" -H "Authorization: $AUTH" -H 'Accept: application/json' \
      -o /dev/null -w '%{time_total}\n' "$1" >>"$2"
  done
}

for ((r = 1; r <= ROUNDS; r++)); do
  for target in direct proxy nginx; do
    case "$target" in
      direct) url="$DIRECT_URL" ;;
      proxy) url="$PROXY_URL" ;;
      nginx) url="$NGINX_URL" ;;
    esac
    log "round $r/$ROUNDS: keep-alive $target ($N_KEEPALIVE requests)"
    keepalive_run "$url" "$TMP/keepalive-$target.txt"
    log "round $r/$ROUNDS: new connection per request $target ($N_NEWCONN requests)"
    newconn_run "$url" "$TMP/newconn-$target.txt"
    b="$(busy_compilers)"; [ "${b:-0}" -gt "${BUSY_MAX:-0}" ] && BUSY_MAX="$b"
  done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
kill -0 "$TRP_PID" 2>/dev/null || die "the proxy died during the run"

# ---------------------------------------------------------------- report
stats() { # file -> "n p50 p90 p99 mean" in ms
  python3 - "$1" <<'EOF'
import sys
v = sorted(float(x) * 1000 for x in open(sys.argv[1]) if x.strip())
def pct(p):
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]
print(len(v), *("%.3f" % pct(p) for p in (50, 90, 99)), "%.3f" % (sum(v) / len(v)))
EOF
}
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }

{
  echo "# twilio-repair-proxy: what the proxy costs a TLS call"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r)"
  echo "- proxy: \`$TRP_BIN\` ($("$TRP_BIN" --version 2>/dev/null || echo '?')), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), logs $PROXY_LOG"
  echo "- upstream: bench/tls_upstream.py (Python asyncio + ssl, TLS 1.3, ALPN http/1.1) on 127.0.0.1, certificate from a test CA, $THINK_MS ms think time per answer"
  echo "- client: $(curl --version | head -1 | cut -d' ' -f1-2 ), time_total per request; direct = HTTPS to the upstream (test CA via --cacert), proxy = HTTP to the proxy, whose pooled TLS connection (upstream_ca_file = the test CA) goes upstream, nginx = HTTP to nginx, whose keep-alive TLS upstream connection (proxy_ssl_trusted_certificate = the test CA, verified) goes upstream"
  echo "- (a) keep-alive: $ROUNDS x $N_KEEPALIVE requests on one connection per target; (b) new connection per request: $ROUNDS x $N_NEWCONN curl processes per target"
  echo "- machine load: loadavg before $LOAD_BEFORE, after $LOAD_AFTER; compiler processes seen: up to ${BUSY_MAX:-0}"
  echo
  echo "| client | path | n | p50 ms | p90 ms | p99 ms | mean ms |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for mode in keepalive newconn; do
    for target in direct proxy nginx; do
      read -r n p50 p90 p99 mean <<<"$(stats "$TMP/$mode-$target.txt")"
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$mode" "$target" "$n" "$p50" "$p90" "$p99" "$mean"
      eval "${mode}_${target}=\"\$p50 \$p99 \$mean\""
    done
  done
  echo
  echo "| client | added by | at p50 | at p99 | mean |"
  echo "|---|---|---:|---:|---:|"
  for mode in keepalive newconn; do
    eval "read -r dp50 dp99 dmean <<<\"\$${mode}_direct\""
    for target in proxy nginx; do
      eval "read -r pp50 pp99 pmean <<<\"\$${mode}_${target}\""
      echo "| $mode | $target | $(diff_ms "$pp50" "$dp50") ms | $(diff_ms "$pp99" "$dp99") ms | $(diff_ms "$pmean" "$dmean") ms |"
    done
  done
  echo
  echo "(negative: that path is faster than direct, e.g. no TLS handshake per request)"
} >"$OUT_DIR/tls.md"
cat "$OUT_DIR/tls.md"
log "results written to $OUT_DIR/tls.md"
