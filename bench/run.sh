#!/usr/bin/env bash
# Pass-through benchmark: the upstream directly vs nginx proxy_pass vs
# HAProxy vs twilio-repair-proxy, all on 127.0.0.1, side by side. See
# bench/README.md.
#
# One invocation runs the whole matrix: access logs off for both proxies and
# on for both, each at 32 and at 256 connections. For every target it prints
# req/s, latency percentiles and the CPU time spent per request (user+sys of
# the target's processes, read from /proc before and after the load, divided
# by the requests wrk saw answered), then the proxy/nginx and proxy/HAProxy
# ratios.
#
# Environment knobs (all optional):
#   DURATION=10s        wrk duration per measured run
#   WARMUP=2s           wrk warm-up per target before measuring (0 to skip)
#   CONNECTIONS="32 256" wrk connection counts (a list: one run set each)
#   LOGS="off on"       access-log modes (a list):
#                         off: nginx `access_log off`, proxy TRP_LOG_LEVEL=warn
#                         on:  nginx `access_log FILE` (combined), proxy with its
#                              shipped logging defaults (info, pretty) to a file
#   THREADS=2           wrk threads
#   ROUNDS=1            measured rounds; targets are interleaved per round and
#                       the round with the median req/s is reported per target
#   NGINX_WORKERS=auto  worker_processes of the nginx *proxy* under test
#   HAPROXY_THREADS=2   nbthread of the HAProxy under test
#   UPSTREAM_WORKERS=1  worker_processes of the nginx upstream
#   TRP_BIN=...         proxy binary (default: target/release/twilio-repair-proxy,
#                       built with `cargo build --release --locked` if missing)
#   BASE_PORT=18080     ports used: BASE+1 upstream, BASE+2 nginx, BASE+3 proxy,
#                       BASE+4 HAProxy, BASE+13 proxy admin
#   OUT_DIR=bench/out   where results.md (and raw wrk output) are written
#   STRICT=0            1: exit 1 when a target (req/s, p99, CPU, RSS) is missed
#   LINKS=off           the proxy's public_base_url: off (the default here: a
#                       pass-through like nginx's, body compared byte for
#                       byte) or request (the shipped default: the answer's
#                       `url` is rewritten to the proxy, so every answer is
#                       buffered and scanned; body compared with that link
#                       rewritten)
#   LISTEN_TLS=0        1: wrk speaks HTTPS (TLS 1.3, keep-alive) to every target:
#                       the proxy's own TLS listener (tls.cert_file/key_file),
#                       nginx `listen ssl`, HAProxy `bind ssl`, and direct to
#                       a TLS port of the upstream nginx; the proxies still
#                       reach the upstream in plain HTTP. Certificates from a
#                       test CA made per run; results in OUT_DIR/results-tls.md
#   FLOOR_BIN=...       a fifth target, "floor": bench/hyper-floor (the least a
#                       hyper proxy does), e.g. FLOOR_BIN=bench/hyper-floor/
#                       target/release/hyper-floor; its ratios in a table of
#                       its own. Plain HTTP only (not with LISTEN_TLS=1)
#   PERF=0              1: `perf record` the proxy and HAProxy during their last
#                       measured run of every configuration (skews that run a
#                       little); top symbols in OUT_DIR/perf-<proxy|haproxy>-
#                       logs<L>-c<C>.txt, the
#                       recording (for `perf report -g`) beside it as .data
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32 256}"
LOGS="${LOGS:-off on}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-1}"
NGINX_WORKERS="${NGINX_WORKERS:-auto}"
HAPROXY_THREADS="${HAPROXY_THREADS:-2}"
UPSTREAM_WORKERS="${UPSTREAM_WORKERS:-1}"
BASE_PORT="${BASE_PORT:-18080}"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
STRICT="${STRICT:-0}"
PERF="${PERF:-0}"
LINKS="${LINKS:-off}"
LISTEN_TLS="${LISTEN_TLS:-0}"
FLOOR_BIN="${FLOOR_BIN:-}"
case "$LISTEN_TLS" in 0 | 1) ;; *) echo "LISTEN_TLS is 0 or 1, not '$LISTEN_TLS'" >&2; exit 2 ;; esac
case "$LINKS" in off | request) ;; *) echo "LINKS is 'off' or 'request', not '$LINKS'" >&2; exit 2 ;; esac
TRP_BIN="${TRP_BIN:-$ROOT/target/release/twilio-repair-proxy}"

UP_PORT=$((BASE_PORT + 1))
NGX_PORT=$((BASE_PORT + 2))
TRP_PORT=$((BASE_PORT + 3))
HAP_PORT=$((BASE_PORT + 4))
UP_TLS_PORT=$((BASE_PORT + 5))
FLOOR_PORT=$((BASE_PORT + 6))
TRP_ADMIN_PORT=$((BASE_PORT + 13))

LOG_TAG=bench
# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

for l in $LOGS; do case "$l" in on | off) ;; *) die "LOGS entries are 'on' or 'off', not '$l'" ;; esac; done
for c in $CONNECTIONS; do case "$c" in '' | *[!0-9]*) die "CONNECTIONS entries are numbers, not '$c'" ;; esac; done

# ---------------------------------------------------------------- tools
need wrk:wrk nginx:nginx-light haproxy:haproxy curl:curl
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
[ "$LISTEN_TLS" = 1 ] && need openssl:openssl
if [ -n "$FLOOR_BIN" ]; then
  [ -x "$FLOOR_BIN" ] || die "FLOOR_BIN $FLOOR_BIN is not an executable (cargo build --release --manifest-path bench/hyper-floor/Cargo.toml)"
  [ "$LISTEN_TLS" = 0 ] || die "FLOOR_BIN is plain HTTP only, not with LISTEN_TLS=1"
fi

need_proxy_binary

# ---------------------------------------------------------------- setup
TMP="$(mktemp -d /tmp/trp-bench.XXXXXX)"
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
mkdir -p "$OUT_DIR"

# The scheme wrk and curl use towards the targets, and what the targets'
# listeners need for it.
SCHEME=http CURL_CA=() TLS_TAG="" DIRECT_PORT="$UP_PORT"
UP_TLS_LISTEN="" NGX_SSL="" NGX_CERT="" HAP_SSL="" TRP_TLS_ENV=()
if [ "$LISTEN_TLS" = 1 ]; then
  log "generating a test CA and a server certificate for the TLS listeners"
  make_test_certs "$TMP"
  SCHEME=https TLS_TAG="-tls" DIRECT_PORT="$UP_TLS_PORT"
  CURL_CA=(--cacert "$TMP/ca.pem")
  NGX_SSL=" ssl"
  NGX_CERT="ssl_certificate $TMP/server.pem; ssl_certificate_key $TMP/server.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:1m;"
  UP_TLS_LISTEN="listen 127.0.0.1:$UP_TLS_PORT ssl backlog=4096; $NGX_CERT"
  HAP_SSL=" ssl crt $TMP/server-combined.pem"
  TRP_TLS_ENV=(TRP_TLS_CERT_FILE="$TMP/server.pem" TRP_TLS_KEY_FILE="$TMP/server.key")
fi
RESULTS_FILE="$OUT_DIR/results$TLS_TAG.md"

for port in "$UP_PORT" "$UP_TLS_PORT" "$NGX_PORT" "$TRP_PORT" "$HAP_PORT" "$FLOOR_PORT" "$TRP_ADMIN_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is already in use (set BASE_PORT)"
  fi
done

# nginx escapes inside a single-quoted string: \ and ' must be escaped, and
# `$` would start a variable (the body has none).
grep -q '\$' "$BODY_FILE" && die "body must not contain \$"
BODY_NGX="$(sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g" "$BODY_FILE")"

nginx_user=""
[ "$(id -u)" -eq 0 ] && nginx_user="user root root;"

common_nginx() { # $1 = name, $2 = workers
  cat <<EOF
$nginx_user
worker_processes $2;
daemon off;
master_process on;
pid $TMP/$1.pid;
error_log $TMP/$1.error.log warn;
events { worker_connections 4096; multi_accept on; }
EOF
}
temp_paths() { # $1 = name
  cat <<EOF
  client_body_temp_path $TMP/$1-body;
  proxy_temp_path $TMP/$1-proxy;
  fastcgi_temp_path $TMP/$1-fastcgi;
  uwsgi_temp_path $TMP/$1-uwsgi;
  scgi_temp_path $TMP/$1-scgi;
EOF
}

# Upstream: nginx answering every request from memory with the ~1 KB
# participant and the headers Twilio sends with it.
{
  common_nginx upstream "$UPSTREAM_WORKERS"
  cat <<EOF
http {
  access_log off;
$(temp_paths upstream)
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server_tokens off;
  server {
    listen 127.0.0.1:$UP_PORT reuseport backlog=4096;
    $UP_TLS_LISTEN
    location / {
      default_type "application/json; charset=utf-8";
      add_header Twilio-Request-Id RQ0123456789abcdef0123456789abcdef always;
      add_header Twilio-Concurrent-Requests 1 always;
      add_header X-Home-Region us1 always;
      add_header X-API-Domain conversations.twilio.com always;
      add_header X-Shenanigans none always;
      add_header Strict-Transport-Security "max-age=31536000" always;
      return 200 '$BODY_NGX';
    }
  }
}
EOF
} >"$TMP/upstream.conf"

# The reference reverse proxy: nginx proxy_pass with a keep-alive pool.
# $1 = access log mode (on: the default "combined" format to a file).
nginx_conf() {
  local access="access_log off;"
  [ "$1" = on ] && access="access_log $TMP/nginx.access.log;"
  common_nginx nginx "$NGINX_WORKERS"
  cat <<EOF
http {
  $access
$(temp_paths nginx)
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server_tokens off;
  upstream twilio_upstream {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_PORT$NGX_SSL backlog=4096;
    $NGX_CERT
    location / {
      proxy_pass http://twilio_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$proxy_host;
      proxy_buffering on;
    }
  }
}
EOF
}

# The second reference: HAProxy, one process with $HAPROXY_THREADS threads (the
# proxy's two workers, nginx's two worker processes), server-side keep-alive
# connections shared between client connections (`http-reuse always`).
# $1 = access log mode (on: `option httplog` lines to stdout, a file).
haproxy_conf() {
  local glog="" dlog=""
  if [ "$1" = on ]; then
    glog="log stdout format raw local0 info"
    dlog=$'  log global\n  option httplog'
  fi
  cat <<EOF
global
  nbthread $HAPROXY_THREADS
  maxconn 4096
  $glog
defaults
  mode http
$dlog
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend bench
  bind 127.0.0.1:$HAP_PORT$HAP_SSL
  default_backend upstream
backend upstream
  server up 127.0.0.1:$UP_PORT
EOF
}

"$NGINX" -t -q -c "$TMP/upstream.conf" -p "$TMP" 2>"$TMP/upstream.t" || { cat "$TMP/upstream.t" >&2; die "upstream nginx config invalid"; }
for l in $LOGS; do
  nginx_conf "$l" >"$TMP/nginx-$l.conf"
  "$NGINX" -t -q -c "$TMP/nginx-$l.conf" -p "$TMP" 2>"$TMP/nginx.t" || { cat "$TMP/nginx.t" >&2; die "nginx proxy config invalid"; }
  haproxy_conf "$l" >"$TMP/haproxy-$l.cfg"
  "$HAPROXY" -c -q -f "$TMP/haproxy-$l.cfg" >"$TMP/haproxy.t" 2>&1 || { cat "$TMP/haproxy.t" >&2; die "HAProxy config invalid"; }
done

wait_http() { # url, tries
  local i
  for ((i = 0; i < ${2:-100}; i++)); do
    if curl -fsS "${CURL_CA[@]}" -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

log "starting upstream nginx on 127.0.0.1:$UP_PORT (worker_processes $UPSTREAM_WORKERS)"
"$NGINX" -c "$TMP/upstream.conf" -p "$TMP" &
UP_MASTER=$!
PIDS+=($UP_MASTER)
wait_http "http://127.0.0.1:$UP_PORT/" || die "upstream did not start"

# Start the nginx proxy, HAProxy and twilio-repair-proxy with access logs $1.
NGX_MASTER="" HAP_PID="" TRP_PID="" FLOOR_PID=""
start_proxies() {
  local mode="$1"
  : >"$TMP/nginx.access.log"
  log "starting nginx proxy on 127.0.0.1:$NGX_PORT (worker_processes $NGINX_WORKERS, access log $mode)"
  "$NGINX" -c "$TMP/nginx-$mode.conf" -p "$TMP" &
  NGX_MASTER=$!
  PIDS+=($NGX_MASTER)

  log "starting HAProxy on 127.0.0.1:$HAP_PORT (nbthread $HAPROXY_THREADS, access log $mode)"
  : >"$TMP/haproxy.access.log"
  # -db: stay in the foreground, one process; the access log is its stdout.
  "$HAPROXY" -db -f "$TMP/haproxy-$mode.cfg" >>"$TMP/haproxy.access.log" 2>>"$TMP/haproxy.error.log" &
  HAP_PID=$!
  PIDS+=($HAP_PID)

  if [ -n "$FLOOR_BIN" ]; then
    log "starting the hyper floor on 127.0.0.1:$FLOOR_PORT (2 threads, no logs)"
    "$FLOOR_BIN" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT" 2 >>"$TMP/floor.log" 2>&1 &
    FLOOR_PID=$!
    PIDS+=($FLOOR_PID)
  fi

  log "starting twilio-repair-proxy on 127.0.0.1:$TRP_PORT (admin $TRP_ADMIN_PORT, access log $mode)"
  rm -rf "$TMP/trp"
  mkdir -p "$TMP/trp"
  local level=()
  [ "$mode" = off ] && level=(TRP_LOG_LEVEL=warn)
  # Appending (O_APPEND), so the log can be truncated between runs.
  env -i PATH="$PATH" HOME="$TMP/trp" "${level[@]}" "${TRP_TLS_ENV[@]}" TRP_PUBLIC_BASE_URL="$LINKS" \
    "$TRP_BIN" serve \
    --listen "127.0.0.1:$TRP_PORT" \
    --admin-listen "127.0.0.1:$TRP_ADMIN_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" \
    --store "sqlite://$TMP/trp/journal.db" \
    >>"$TMP/trp/stdout.log" 2>>"$TMP/trp/stderr.log" &
  TRP_PID=$!
  PIDS+=($TRP_PID)

  wait_http "$SCHEME://127.0.0.1:$NGX_PORT/" || { cat "$TMP/nginx.error.log" >&2; die "nginx proxy did not start"; }
  wait_http "$SCHEME://127.0.0.1:$HAP_PORT/" || { cat "$TMP/haproxy.error.log" >&2; die "HAProxy did not start"; }
  if [ -n "$FLOOR_BIN" ]; then
    wait_http "http://127.0.0.1:$FLOOR_PORT/" || { cat "$TMP/floor.log" >&2; die "the hyper floor did not start"; }
  fi
  wait_http "http://127.0.0.1:$TRP_ADMIN_PORT/readyz" 300 || { cat "$TMP/trp/stderr.log" "$TMP/trp/stdout.log" >&2; die "proxy not ready"; }

  # Every target must return the exact participant body.
  local target name port code checks=("direct:$DIRECT_PORT" "nginx:$NGX_PORT" "haproxy:$HAP_PORT" "proxy:$TRP_PORT")
  [ -n "$FLOOR_BIN" ] && checks+=("floor:$FLOOR_PORT")
  for target in "${checks[@]}"; do
    name="${target%%:*}"; port="${target##*:}"
    code="$(curl -sS "${CURL_CA[@]}" -o "$TMP/check-$name.json" -w '%{http_code}' \
      -H "Authorization: $AUTH" -H 'Accept: application/json' \
      "$SCHEME://127.0.0.1:$port$REQ_PATH")"
    [ "$code" = 200 ] || die "$name answered $code"
    local expected="$BODY_FILE"
    if [ "$name" = proxy ] && [ "$LINKS" = request ]; then
      expected="$TMP/expected-proxy.json"
      sed -e "s#\"url\": \"https://conversations.twilio.com/#\"url\": \"$SCHEME://127.0.0.1:$TRP_PORT/#" "$BODY_FILE" >"$expected"
      ! cmp -s "$BODY_FILE" "$expected" || die "the bench body has no link to rewrite"
    fi
    cmp -s "$expected" "$TMP/check-$name.json" || die "$name returned a different body"
  done
  if [ "$mode" = on ]; then
    grep -q "$REQ_PATH" "$TMP/nginx.access.log" || die "nginx wrote no access log line"
    grep -q "$REQ_PATH" "$TMP/haproxy.access.log" || die "HAProxy wrote no access log line"
    # The proxy writes its log in batches, up to 10 ms late.
    local i
    for ((i = 0; i < 50; i++)); do grep -q 'request' "$TMP/trp/stderr.log" && break; sleep 0.1; done
    grep -q 'request' "$TMP/trp/stderr.log" || die "the proxy wrote no access log line"
  fi
}
stop_proxies() {
  stop_pid "$NGX_MASTER"
  stop_pid "$HAP_PID"
  [ -z "$FLOOR_PID" ] || stop_pid "$FLOOR_PID"
  stop_pid "$TRP_PID"
  if [ -s "$TMP/trp/stderr.log" ] && grep -qE 'WARN|ERROR|"level":"(WARN|ERROR)"' "$TMP/trp/stderr.log"; then
    log "proxy warnings/errors (last lines):"
    grep -E 'WARN|ERROR' "$TMP/trp/stderr.log" | tail -n 5 >&2 || true
  fi
}

# ---------------------------------------------------------------- measuring
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
CLK_TCK="$(getconf CLK_TCK)"

# CPU clock ticks (user + system) of processes: each process's own line in
# /proc/PID/stat, which is the sum over /proc/PID/task/*/stat plus every
# thread that already exited (so a short-lived thread is not missed).
cpu_ticks() {
  local p total=0 t
  for p in "$@"; do
    t="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)"
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
# The processes that serve a target: nginx's master and workers (the
# master only waits), HAProxy's and the proxy's single process.
target_pids() {
  case "$1" in
    direct) echo "$UP_MASTER $(pgrep -P "$UP_MASTER" | tr '\n' ' ')" ;;
    nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')" ;;
    haproxy) echo "$HAP_PID" ;;
    floor) echo "$FLOOR_PID" ;;
    proxy) echo "$TRP_PID" ;;
  esac
}

# wrk latency to milliseconds: 812.00us / 1.23ms / 1.01s / 2.00m
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'
}

run_wrk() { # port duration connections outfile
  wrk -t"$THREADS" -c"$3" -d"$2" --latency --timeout 5s \
    -H "Authorization: $AUTH" -H 'Accept: application/json' \
    -H 'User-Agent: twilio-python/9.0.0 (Linux x86_64) Python/3.11' \
    "$SCHEME://127.0.0.1:$1$REQ_PATH" >"$4" 2>&1
}

# One wrk output + CPU ticks into "rps p50 p75 p90 p99 errors non2xx requests cpu_us_per_request"
parse_wrk() {
  local f="$1" ticks="$2" rps p50 p75 p90 p99 err non2xx reqs cpu
  rps="$(awk '/^Requests\/sec:/ { print $2 }' "$f")"
  p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")")"
  p75="$(to_ms "$(awk '$1 == "75%" { print $2 }' "$f")")"
  p90="$(to_ms "$(awk '$1 == "90%" { print $2 }' "$f")")"
  p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")")"
  err="$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$f")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$f")"
  reqs="$(awk '/ requests in / { print $1 }' "$f")"
  cpu="$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="${reqs:-0}" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print 0 }')"
  echo "${rps:-0} ${p50:-0} ${p75:-0} ${p90:-0} ${p99:-0} ${err:-0} ${non2xx:-0} ${reqs:-0} $cpu"
}

# Where the proxy's CPU went: share per binary (kernel, the proxy, libc),
# then the top symbols, without perf's padding.
perf_top() {
  local strip='/^#/d; /^$/d; s/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//; s/  +/  /g'
  echo "# by binary"
  perf report -i "$1" --no-children --stdio -g none --sort dso 2>/dev/null | sed -E "$strip" | head -n 8 || true
  echo "# top symbols"
  perf report -i "$1" --no-children --stdio -g none --sort dso,symbol 2>/dev/null | sed -E "$strip" | head -n 30 || true
}

busy_compilers() { pgrep -c -x 'rustc|cc1|cc1plus|ld|ld.lld|cargo|clang' 2>/dev/null || true; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

declare -A RESULTS PICK LOAD_AT BUSY_AT HWM_AT NGX_HWM_AT
TARGETS=(direct nginx haproxy proxy)
declare -A PORT=([direct]=$DIRECT_PORT [nginx]=$NGX_PORT [haproxy]=$HAP_PORT [proxy]=$TRP_PORT [floor]=$FLOOR_PORT)
[ -n "$FLOOR_BIN" ] && TARGETS+=(floor)
LOAD_START="$(loadavg)"
BUSY_START="$(busy_compilers)"
PERF_FILES=()

for mode in $LOGS; do
  start_proxies "$mode"
  for conns in $CONNECTIONS; do
    key="$mode,$conns"
    load_before="$(loadavg)"
    busy=0
    if [ "$WARMUP" != 0 ]; then
      for t in "${TARGETS[@]}"; do
        log "logs $mode, $conns connections: warm-up $t ($WARMUP)"
        run_wrk "${PORT[$t]}" "$WARMUP" "$conns" "$TMP/warmup-$t.txt"
      done
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
      for t in "${TARGETS[@]}"; do
        log "logs $mode, $conns connections, round $r/$ROUNDS: $t ($DURATION, $THREADS threads)"
        # Keep the log files small between runs (both are opened O_APPEND).
        : >"$TMP/nginx.access.log"
        : >"$TMP/haproxy.access.log"
        : >"$TMP/trp/stderr.log"
        perf_pid=""
        if [ "$PERF" = 1 ] && [ "$t" != direct ] && [ "$t" != nginx ] && [ "$r" = "$ROUNDS" ] && command -v perf >/dev/null; then
          perf record -q -F 499 --call-graph "${PERF_CALL_GRAPH:-fp}" -p "$(target_pids "$t")" -o "$TMP/$t.perf.data" >/dev/null 2>&1 &
          perf_pid=$!
        fi
        pids="$(target_pids "$t")"
        # shellcheck disable=SC2086
        before="$(cpu_ticks $pids)"
        out="$OUT_DIR/wrk$TLS_TAG-logs$mode-c$conns-$t-$r.txt"
        run_wrk "${PORT[$t]}" "$DURATION" "$conns" "$out"
        # shellcheck disable=SC2086
        after="$(cpu_ticks $pids)"
        if [ -n "$perf_pid" ]; then
          kill -INT "$perf_pid" 2>/dev/null || true
          wait "$perf_pid" 2>/dev/null || true
          pf="$OUT_DIR/perf-$t$TLS_TAG-logs$mode-c$conns.txt"
          perf_top "$TMP/$t.perf.data" >"$pf" || true
          cp "$TMP/$t.perf.data" "$OUT_DIR/perf-$t$TLS_TAG-logs$mode-c$conns.data" 2>/dev/null || true
          PERF_FILES+=("$pf")
        fi
        RESULTS[$key,$t,$r]="$(parse_wrk "$out" $((after - before)))"
        b="$(busy_compilers)"; [ "${b:-0}" -gt "$busy" ] && busy="$b"
      done
    done
    LOAD_AT[$key]="$load_before → $(loadavg)"
    BUSY_AT[$key]="$busy"
    HWM_AT[$key]="$(status_kib "$TRP_PID" VmHWM)"
    ngx=0
    for p in $(target_pids nginx); do ngx=$((ngx + $(status_kib "$p" VmHWM))); done
    NGX_HWM_AT[$key]="$ngx"
    kill -0 "$TRP_PID" 2>/dev/null || die "the proxy died during the run (see its log)"
    # Median round (by req/s) per target.
    for t in "${TARGETS[@]}"; do
      PICK[$key,$t]="$(for ((r = 1; r <= ROUNDS; r++)); do echo "${RESULTS[$key,$t,$r]}"; done |
        sort -n -k1,1 | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')"
    done
  done
  stop_proxies
done
LOAD_END="$(loadavg)"

# ---------------------------------------------------------------- report
field() { echo "${PICK[$1,$2]}" | awk -v i="$3" '{ print $i }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { [ "$1" = 1 ] && echo PASS || echo FAIL; }
FAILED=0
cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
mem_total="$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"

{
  echo "# twilio-repair-proxy pass-through benchmark"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- machine: $(nproc) CPUs (${cpu_model:-unknown}), $mem_total, Linux $(uname -r)"
  echo "- proxy: \`$TRP_BIN\` ($("$TRP_BIN" --version 2>/dev/null || echo unknown version)), binary built $(date -u -r "$TRP_BIN" +%Y-%m-%dT%H:%M:%SZ); work tree now at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes')"
  echo "- $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1 | sed 's/.*: //')"
  if [ "$LISTEN_TLS" = 1 ]; then
    echo "- **TLS on the listeners** (LISTEN_TLS=1): wrk speaks HTTPS to every target over keep-alive connections (one handshake per connection; ECDSA P-256 test certificate, TLS 1.3 negotiated by wrk's OpenSSL): the proxy's TLS listener (tls.cert_file/key_file, rustls), nginx \`listen ssl\`, HAProxy \`bind ssl crt\`, direct = a \`listen ssl\` port of the upstream nginx; both proxies reach the upstream in plain HTTP as without TLS"
  fi
  echo "- load: wrk -t$THREADS -c{$CONNECTIONS} -d$DURATION --latency, warm-up $WARMUP per target, $ROUNDS round(s) (median by req/s reported)"
  echo "- request: GET participant (Authorization: Basic ...), response 200 with a $(wc -c <"$BODY_FILE")-byte JSON body + Twilio-like headers"
  echo "- upstream (direct): nginx \`return 200\` from memory, worker_processes $UPSTREAM_WORKERS, access_log off"
  echo "- nginx: proxy_pass, upstream keepalive 64, HTTP/1.1, worker_processes $NGINX_WORKERS; logs off: \`access_log off\`, logs on: \`access_log FILE\` (combined)"
  echo "- HAProxy: $("$HAPROXY" -v 2>/dev/null | head -1 | cut -d' ' -f1-3), one process, nbthread $HAPROXY_THREADS, http-reuse always, option http-keep-alive; logs off: no \`log\` line, logs on: \`option httplog\` to stdout (a file)"
  echo "- proxy: --upstream http://127.0.0.1:$UP_PORT, --store sqlite://TMP/journal.db, public_base_url $LINKS; logs off: TRP_LOG_LEVEL=warn, logs on: the shipped defaults (level info, format pretty) to a file"
  echo "- CPU/req: user+sys ticks (CLK_TCK $CLK_TCK) of the target's processes during the measured run ÷ requests answered; direct = the upstream nginx itself, nginx = its master + workers, HAProxy, proxy and floor = their one process (all threads)"
  echo "- machine load: loadavg at start $LOAD_START, at end $LOAD_END; compiler processes (rustc, cc1, ld, cargo) at start: ${BUSY_START:-0}"
  for mode in $LOGS; do
    for conns in $CONNECTIONS; do
      key="$mode,$conns"
      echo
      echo "## access logs $mode, $conns connections"
      echo
      echo "loadavg ${LOAD_AT[$key]}; compiler processes seen: up to ${BUSY_AT[$key]}"
      echo
      echo "| target | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req | socket errors | non-2xx |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|"
      for t in "${TARGETS[@]}"; do
        read -r rps p50 _p75 p90 p99 err non _reqs cpu <<<"${PICK[$key,$t]}"
        printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$t" "$rps" "$p50" "$p90" "$p99" "$cpu" "$err" "$non"
      done
      echo
      echo "proxy peak RSS (VmHWM) $(mib "${HWM_AT[$key]}") MiB; nginx master + workers $(mib "${NGX_HWM_AT[$key]}") MiB"
    done
  done
  echo
  echo "## proxy / nginx and proxy / HAProxy"
  echo
  echo "| logs | conns | req/s vs nginx | p99 vs nginx | CPU/req vs nginx | req/s vs HAProxy | p99 vs HAProxy | CPU/req vs HAProxy | proxy CPU µs/req | nginx CPU µs/req | HAProxy CPU µs/req | proxy peak RSS MiB | loadavg during |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for mode in $LOGS; do
    for conns in $CONNECTIONS; do
      key="$mode,$conns"
      echo "| $mode | $conns | $(ratio "$(field "$key" proxy 1)" "$(field "$key" nginx 1)") | $(ratio "$(field "$key" proxy 5)" "$(field "$key" nginx 5)") | $(ratio "$(field "$key" proxy 9)" "$(field "$key" nginx 9)") | $(ratio "$(field "$key" proxy 1)" "$(field "$key" haproxy 1)") | $(ratio "$(field "$key" proxy 5)" "$(field "$key" haproxy 5)") | $(ratio "$(field "$key" proxy 9)" "$(field "$key" haproxy 9)") | $(field "$key" proxy 9) | $(field "$key" nginx 9) | $(field "$key" haproxy 9) | $(mib "${HWM_AT[$key]}") | ${LOAD_AT[$key]} |"
    done
  done
  if [ -n "$FLOOR_BIN" ]; then
    echo
    echo "## the hyper floor (bench/hyper-floor: hyper server + one hyper client connection per client connection, nothing else)"
    echo
    echo "| logs | conns | floor req/s | floor CPU µs/req | floor/HAProxy req/s | floor/HAProxy CPU/req | proxy/floor req/s | proxy/floor CPU/req |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for mode in $LOGS; do
      for conns in $CONNECTIONS; do
        key="$mode,$conns"
        echo "| $mode | $conns | $(printf '%.0f' "$(field "$key" floor 1)") | $(field "$key" floor 9) | $(ratio "$(field "$key" floor 1)" "$(field "$key" haproxy 1)") | $(ratio "$(field "$key" floor 9)" "$(field "$key" haproxy 9)") | $(ratio "$(field "$key" proxy 1)" "$(field "$key" floor 1)") | $(ratio "$(field "$key" proxy 9)" "$(field "$key" floor 9)") |"
      done
    done
  fi
  echo
  echo "## targets"
  echo
  echo "| logs | conns | goal | result |"
  echo "|---|---:|---|---|"
  for mode in $LOGS; do
    for conns in $CONNECTIONS; do
      key="$mode,$conns"
      p_rps="$(field "$key" proxy 1)"; n_rps="$(field "$key" nginx 1)"
      p_p99="$(field "$key" proxy 5)"; n_p99="$(field "$key" nginx 5)"
      p_cpu="$(field "$key" proxy 9)"; n_cpu="$(field "$key" nginx 9)"
      ok_rps="$(awk -v a="$p_rps" -v b="$n_rps" 'BEGIN { print (a >= b) ? 1 : 0 }')"
      ok_p99="$(awk -v a="$p_p99" -v b="$n_p99" 'BEGIN { print (a <= b) ? 1 : 0 }')"
      ok_cpu="$(awk -v a="$p_cpu" -v b="$n_cpu" 'BEGIN { print (a <= b) ? 1 : 0 }')"
      echo "| $mode | $conns | CPU/req <= nginx | $(verdict "$ok_cpu") ($p_cpu vs $n_cpu µs, $(ratio "$p_cpu" "$n_cpu")x) |"
      echo "| $mode | $conns | req/s >= nginx | $(verdict "$ok_rps") ($(ratio "$p_rps" "$n_rps")x) |"
      echo "| $mode | $conns | p99 <= nginx | $(verdict "$ok_p99") ($p_p99 vs $n_p99 ms) |"
      [ "$ok_rps$ok_p99$ok_cpu" = 111 ] || FAILED=1
      if [ "$conns" -le 32 ]; then
        ok_rss="$(awk -v k="${HWM_AT[$key]}" 'BEGIN { print (k < 30 * 1024) ? 1 : 0 }')"
        echo "| $mode | $conns | peak RSS < 30 MiB | $(verdict "$ok_rss") ($(mib "${HWM_AT[$key]}") MiB) |"
        [ "$ok_rss" = 1 ] || FAILED=1
      fi
    done
  done
  if [ "${#PERF_FILES[@]}" -gt 0 ]; then
    echo
    echo "perf profiles of the proxy and HAProxy (top symbols): ${PERF_FILES[*]}"
  fi
} >"$RESULTS_FILE"

cat "$RESULTS_FILE"
log "results written to $RESULTS_FILE"

if [ "$STRICT" = 1 ] && [ "$FAILED" = 1 ]; then exit 1; fi
