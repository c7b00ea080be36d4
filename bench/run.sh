#!/usr/bin/env bash
# Pass-through benchmark: the upstream directly vs nginx proxy_pass vs
# twilio-repair-proxy, all on 127.0.0.1, in one run. See bench/README.md.
#
# Environment knobs (all optional):
#   DURATION=10s       wrk duration per measured run
#   WARMUP=2s          wrk warm-up per target before measuring (0 to skip)
#   CONNECTIONS=32     wrk connections
#   THREADS=2          wrk threads
#   ROUNDS=1           measured rounds; targets are interleaved per round and
#                      the round with the median req/s is reported per target
#   NGINX_WORKERS=auto worker_processes of the nginx *proxy* under test
#   UPSTREAM_WORKERS=1 worker_processes of the nginx upstream
#   TRP_BIN=...        proxy binary (default: target/release/twilio-repair-proxy,
#                      built with `cargo build --release --locked` if missing)
#   BASE_PORT=18080    ports used: BASE+1 upstream, BASE+2 nginx, BASE+3 proxy,
#                      BASE+13 proxy admin
#   OUT_DIR=bench/out  where results.md (and raw wrk output) are written
#   STRICT=0           1: exit 1 when a target (req/s, p99, RSS) is missed
#   PERF=0             1: `perf record` the proxy during its last measured
#                      run (skews that run a little); report in OUT_DIR/proxy.perf.txt
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-1}"
NGINX_WORKERS="${NGINX_WORKERS:-auto}"
UPSTREAM_WORKERS="${UPSTREAM_WORKERS:-1}"
BASE_PORT="${BASE_PORT:-18080}"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
STRICT="${STRICT:-0}"
PERF="${PERF:-0}"
TRP_BIN="${TRP_BIN:-$ROOT/target/release/twilio-repair-proxy}"

UP_PORT=$((BASE_PORT + 1))
NGX_PORT=$((BASE_PORT + 2))
TRP_PORT=$((BASE_PORT + 3))
TRP_ADMIN_PORT=$((BASE_PORT + 13))

# The request: a participant fetch, as a helper library sends it.
REQ_PATH="/v1/Services/ISaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Conversations/CHaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Participants/MBaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
AUTH="Basic $(printf '%s' 'ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:not-a-real-auth-token' | base64 -w0)"
BODY_FILE="$BENCH_DIR/participant.json"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [ ! -x "$TRP_BIN" ]; then
  log "building $TRP_BIN (cargo build --release --locked)"
  (cd "$ROOT" && cargo build --release --locked)
fi
[ -x "$TRP_BIN" ] || die "proxy binary $TRP_BIN not found"

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

for port in "$UP_PORT" "$NGX_PORT" "$TRP_PORT" "$TRP_ADMIN_PORT"; do
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
{
  common_nginx nginx "$NGINX_WORKERS"
  cat <<EOF
http {
  access_log off;
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
    listen 127.0.0.1:$NGX_PORT backlog=4096;
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
} >"$TMP/nginx.conf"

"$NGINX" -t -q -c "$TMP/upstream.conf" -p "$TMP" 2>"$TMP/upstream.t" || { cat "$TMP/upstream.t" >&2; die "upstream nginx config invalid"; }
"$NGINX" -t -q -c "$TMP/nginx.conf" -p "$TMP" 2>"$TMP/nginx.t" || { cat "$TMP/nginx.t" >&2; die "nginx proxy config invalid"; }

wait_http() { # url, tries
  local i
  for ((i = 0; i < ${2:-100}; i++)); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

log "starting upstream nginx on 127.0.0.1:$UP_PORT (worker_processes $UPSTREAM_WORKERS)"
"$NGINX" -c "$TMP/upstream.conf" -p "$TMP" &
PIDS+=($!)
log "starting nginx proxy on 127.0.0.1:$NGX_PORT (worker_processes $NGINX_WORKERS)"
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP" &
NGX_MASTER=$!
PIDS+=($NGX_MASTER)

log "starting twilio-repair-proxy on 127.0.0.1:$TRP_PORT (admin $TRP_ADMIN_PORT)"
mkdir -p "$TMP/trp"
env -i PATH="$PATH" HOME="$TMP/trp" \
  TRP_LOG_LEVEL="${PROXY_LOG_LEVEL:-warn}" TRP_LOG_FORMAT=json \
  "$TRP_BIN" serve \
  --listen "127.0.0.1:$TRP_PORT" \
  --admin-listen "127.0.0.1:$TRP_ADMIN_PORT" \
  --upstream "http://127.0.0.1:$UP_PORT" \
  --store "sqlite://$TMP/trp/journal.db" \
  >"$TMP/trp/stdout.log" 2>"$TMP/trp/stderr.log" &
TRP_PID=$!
PIDS+=($TRP_PID)

wait_http "http://127.0.0.1:$UP_PORT/" || die "upstream did not start"
wait_http "http://127.0.0.1:$NGX_PORT/" || { cat "$TMP/nginx.error.log" >&2; die "nginx proxy did not start"; }
wait_http "http://127.0.0.1:$TRP_ADMIN_PORT/readyz" 300 || { cat "$TMP/trp/stderr.log" "$TMP/trp/stdout.log" >&2; die "proxy not ready"; }

# ---------------------------------------------------------------- sanity
# Every target must return the exact participant body.
for target in "direct:$UP_PORT" "nginx:$NGX_PORT" "proxy:$TRP_PORT"; do
  name="${target%%:*}"; port="${target##*:}"
  code="$(curl -sS -o "$TMP/check-$name.json" -w '%{http_code}' \
    -H "Authorization: $AUTH" -H 'Accept: application/json' \
    "http://127.0.0.1:$port$REQ_PATH")"
  [ "$code" = 200 ] || die "$name answered $code"
  cmp -s "$BODY_FILE" "$TMP/check-$name.json" || die "$name returned a different body"
done
log "all targets return the $(wc -c <"$BODY_FILE")-byte participant body"

# ---------------------------------------------------------------- runs
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
TRP_RSS_IDLE_KIB="$(status_kib "$TRP_PID" VmRSS)"

# wrk latency to milliseconds: 812.00us / 1.23ms / 1.01s / 2.00m
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'
}

run_wrk() { # name port duration outfile
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" --latency --timeout 5s \
    -H "Authorization: $AUTH" -H 'Accept: application/json' \
    -H 'User-Agent: twilio-python/9.0.0 (Linux x86_64) Python/3.11' \
    "http://127.0.0.1:$2$REQ_PATH" >"$4" 2>&1
}

# Parse one wrk output into "rps p50 p75 p90 p99 errors non2xx"
parse_wrk() {
  local f="$1" rps p50 p75 p90 p99 err non2xx
  rps="$(awk '/^Requests\/sec:/ { print $2 }' "$f")"
  p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")")"
  p75="$(to_ms "$(awk '$1 == "75%" { print $2 }' "$f")")"
  p90="$(to_ms "$(awk '$1 == "90%" { print $2 }' "$f")")"
  p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")")"
  err="$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$f")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$f")"
  echo "${rps:-0} ${p50:-0} ${p75:-0} ${p90:-0} ${p99:-0} ${err:-0} ${non2xx:-0}"
}

busy_compilers() { pgrep -c -x 'rustc|cc1|cc1plus|ld|cargo' 2>/dev/null || true; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_BEFORE="$(busy_compilers)"
declare -A RESULTS
TARGETS=(direct nginx proxy)
declare -A PORT=([direct]=$UP_PORT [nginx]=$NGX_PORT [proxy]=$TRP_PORT)

if [ "$WARMUP" != 0 ]; then
  for t in "${TARGETS[@]}"; do
    log "warm-up $t ($WARMUP)"
    run_wrk "$t" "${PORT[$t]}" "$WARMUP" "$TMP/warmup-$t.txt"
  done
fi

BUSY_DURING=0
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do
    log "round $r/$ROUNDS: $t ($DURATION, $CONNECTIONS connections, $THREADS threads)"
    perf_pid=""
    if [ "$PERF" = 1 ] && [ "$t" = proxy ] && [ "$r" = "$ROUNDS" ] && command -v perf >/dev/null; then
      perf record -q -F 499 -g -p "$TRP_PID" -o "$OUT_DIR/proxy.perf.data" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    run_wrk "$t" "${PORT[$t]}" "$DURATION" "$OUT_DIR/wrk-$t-$r.txt"
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid" 2>/dev/null || true
      wait "$perf_pid" 2>/dev/null || true
      perf report -i "$OUT_DIR/proxy.perf.data" --no-children --percent-limit 0.5 --stdio \
        -g none --sort dso,symbol >"$OUT_DIR/proxy.perf.txt" 2>/dev/null || true
      log "perf profile of the proxy: $OUT_DIR/proxy.perf.txt"
    fi
    RESULTS[$t,$r]="$(parse_wrk "$OUT_DIR/wrk-$t-$r.txt")"
    b="$(busy_compilers)"; [ "${b:-0}" -gt "$BUSY_DURING" ] && BUSY_DURING="$b"
  done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

TRP_HWM_KIB="$(status_kib "$TRP_PID" VmHWM)"
TRP_RSS_AFTER_KIB="$(status_kib "$TRP_PID" VmRSS)"
NGX_HWM_KIB=0
for p in "$NGX_MASTER" $(pgrep -P "$NGX_MASTER" 2>/dev/null); do
  NGX_HWM_KIB=$((NGX_HWM_KIB + $(status_kib "$p" VmHWM)))
done
kill -0 "$TRP_PID" 2>/dev/null || die "the proxy died during the run (see its log)"

# Median round (by req/s) per target.
declare -A PICK
for t in "${TARGETS[@]}"; do
  PICK[$t]="$(for ((r = 1; r <= ROUNDS; r++)); do echo "${RESULTS[$t,$r]}"; done |
    sort -n -k1,1 | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')"
done

field() { echo "${PICK[$1]}" | awk -v i="$2" '{ print $i }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

p_rps="$(field proxy 1)"; n_rps="$(field nginx 1)"; d_rps="$(field direct 1)"
p_p99="$(field proxy 5)"; n_p99="$(field nginx 5)"; d_p99="$(field direct 5)"
p_p50="$(field proxy 2)"; n_p50="$(field nginx 2)"; d_p50="$(field direct 2)"

verdict() { [ "$1" = 1 ] && echo PASS || echo FAIL; }
ok_rps="$(awk -v a="$p_rps" -v b="$n_rps" 'BEGIN { print (a >= b) ? 1 : 0 }')"
ok_p99="$(awk -v a="$p_p99" -v b="$n_p99" 'BEGIN { print (a <= b) ? 1 : 0 }')"
ok_rss="$(awk -v k="$TRP_HWM_KIB" 'BEGIN { print (k < 30 * 1024) ? 1 : 0 }')"

{
  echo "# twilio-repair-proxy pass-through benchmark"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host: $(nproc) CPUs, $(uname -r)"
  echo "- proxy: \`$TRP_BIN\` ($("$TRP_BIN" --version 2>/dev/null || echo unknown version)), binary built $(date -u -r "$TRP_BIN" +%Y-%m-%dT%H:%M:%SZ); work tree now at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes')"
  echo "- $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1 | sed 's/.*: //')"
  echo "- load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP per target, $ROUNDS round(s) (median by req/s reported)"
  echo "- request: GET participant (Authorization: Basic ...), response 200 with a $(wc -c <"$BODY_FILE")-byte JSON body + Twilio-like headers"
  echo "- upstream: nginx \`return 200\` from memory, worker_processes $UPSTREAM_WORKERS, access_log off"
  echo "- nginx: proxy_pass, upstream keepalive 64, HTTP/1.1, worker_processes $NGINX_WORKERS, access_log off"
  echo "- proxy: --upstream http://127.0.0.1:$UP_PORT, --store sqlite://TMP/journal.db, TRP_LOG_LEVEL=${PROXY_LOG_LEVEL:-warn}"
  echo "- machine load: loadavg before $LOAD_BEFORE, after $LOAD_AFTER; compiler processes seen: ${BUSY_BEFORE:-0} before, up to $BUSY_DURING during"
  echo
  echo "| target | req/s | p50 ms | p75 ms | p90 ms | p99 ms | socket errors | non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    read -r rps p50 p75 p90 p99 err non <<<"${PICK[$t]}"
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$t" "$rps" "$p50" "$p75" "$p90" "$p99" "$err" "$non"
  done
  echo
  echo "| ratio | req/s | p50 | p99 |"
  echo "|---|---:|---:|---:|"
  echo "| proxy / direct | $(ratio "$p_rps" "$d_rps") | $(ratio "$p_p50" "$d_p50") | $(ratio "$p_p99" "$d_p99") |"
  echo "| proxy / nginx | $(ratio "$p_rps" "$n_rps") | $(ratio "$p_p50" "$n_p50") | $(ratio "$p_p99" "$n_p99") |"
  echo
  echo "| memory | KiB | MiB |"
  echo "|---|---:|---:|"
  echo "| proxy VmRSS idle (before load) | $TRP_RSS_IDLE_KIB | $(mib "$TRP_RSS_IDLE_KIB") |"
  echo "| proxy VmHWM (peak, after load) | $TRP_HWM_KIB | $(mib "$TRP_HWM_KIB") |"
  echo "| proxy VmRSS after load | $TRP_RSS_AFTER_KIB | $(mib "$TRP_RSS_AFTER_KIB") |"
  echo "| nginx proxy VmHWM, master + workers | $NGX_HWM_KIB | $(mib "$NGX_HWM_KIB") |"
  echo
  echo "| target | goal | result |"
  echo "|---|---|---|"
  echo "| throughput | proxy req/s >= nginx req/s | $(verdict "$ok_rps") ($(ratio "$p_rps" "$n_rps")x) |"
  echo "| tail latency | proxy p99 <= nginx p99 | $(verdict "$ok_p99") ($p_p99 ms vs $n_p99 ms) |"
  echo "| memory | proxy peak RSS < 30 MiB at $CONNECTIONS connections | $(verdict "$ok_rss") ($(mib "$TRP_HWM_KIB") MiB) |"
} >"$OUT_DIR/results.md"

cat "$OUT_DIR/results.md"
if [ -s "$TMP/trp/stderr.log" ] || [ -s "$TMP/trp/stdout.log" ]; then
  log "proxy log (warn and above), last lines:"
  tail -n 5 "$TMP/trp/stdout.log" "$TMP/trp/stderr.log" >&2 || true
fi
log "results written to $OUT_DIR/results.md"

if [ "$STRICT" = 1 ] && [ "$ok_rps$ok_p99$ok_rss" != 111 ]; then exit 1; fi
