#!/usr/bin/env bash
# Instructions per request: the proxy run under valgrind's callgrind, its
# instruction count (Ir) over a fixed load divided by the requests answered.
# Unlike CPU time, this count hardly depends on what else the machine runs,
# so it settles a before/after question (did this change add work to the
# pass-through path?) on a busy or noisy machine, where `bench/run.sh`'s
# CPU ratios move by ±0.2 from one run to the next. It is not a speed: a
# cache miss or a lock wait costs nothing here. See bench/README.md.
#
#   BINS="before=/path/a after=/path/b"   binaries to compare (label=path;
#                                         default: this tree's release build)
#   MODES="json-off json-request xml"     what is measured, each a proxy start:
#       json-off      the bench's ~1 KB participant, public_base_url = off
#                     (nothing in the answer is read: the pure pass-through)
#       json-request  the same, public_base_url = request (the shipped
#                     default: the answer is buffered and its links rewritten)
#       xml           a non-JSON answer (a 2010-04-01 `.xml` resource) with
#                     each binary's shipped default: never buffered, never
#                     scanned
#   CONNECTIONS=32  DURATION=10s  REPEAT=1  BASE_PORT=18180  OUT_DIR=bench/out
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TRP_BIN="${TRP_BIN:-$ROOT/target/release/twilio-repair-proxy}"
BINS="${BINS:-this=$TRP_BIN}"
MODES="${MODES:-json-off json-request xml}"
CONNECTIONS="${CONNECTIONS:-32}"
DURATION="${DURATION:-10s}"
REPEAT="${REPEAT:-1}"
BASE_PORT="${BASE_PORT:-18180}"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
UP_PORT=$((BASE_PORT + 1))
TRP_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 13))
LOG_TAG=instructions
# shellcheck source=bench/common.sh
. "$BENCH_DIR/common.sh"

need wrk:wrk nginx:nginx-light curl:curl valgrind:valgrind
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for pair in $BINS; do
  [ -x "${pair#*=}" ] || { [ "${pair#*=}" = "$TRP_BIN" ] && need_proxy_binary; }
  [ -x "${pair#*=}" ] || die "no binary at ${pair#*=}"
done
for m in $MODES; do case "$m" in json-off | json-request | xml) ;; *) die "unknown mode '$m'" ;; esac; done

TMP="$(mktemp -d /tmp/trp-instr.XXXXXX)"
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

grep -q '\$' "$BODY_FILE" && die "body must not contain \$"
BODY_NGX="$(sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g" "$BODY_FILE")"
XML_PATH="/2010-04-01/Accounts/ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Messages/SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.xml"
user=""
[ "$(id -u)" -eq 0 ] && user="user root root;"
cat >"$TMP/upstream.conf" <<EOF
$user
worker_processes 1;
daemon off;
pid $TMP/upstream.pid;
error_log $TMP/upstream.error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/b; proxy_temp_path $TMP/p; fastcgi_temp_path $TMP/f;
  uwsgi_temp_path $TMP/u; scgi_temp_path $TMP/s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP_PORT;
    location ~ \.xml\$ {
      default_type "application/xml";
      add_header Twilio-Request-Id RQ0123456789abcdef0123456789abcdef always;
      return 200 '<?xml version="1.0" encoding="UTF-8"?><TwilioResponse><Message><Sid>SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa</Sid><Body>$(printf 'x%.0s' $(seq 1 900))</Body></Message></TwilioResponse>';
    }
    location / {
      default_type "application/json; charset=utf-8";
      add_header Twilio-Request-Id RQ0123456789abcdef0123456789abcdef always;
      add_header X-Shenanigans none always;
      return 200 '$BODY_NGX';
    }
  }
}
EOF
"$NGINX" -c "$TMP/upstream.conf" -p "$TMP" &
PIDS+=($!)
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$UP_PORT/" 2>/dev/null && break; sleep 0.1; done

# One measurement: $1 binary, $2 mode, $3 out file. Prints "Ir requests".
measure() {
  local bin="$1" mode="$2" out="$3" links=off path="$REQ_PATH"
  [ "$mode" = json-request ] && links=request
  [ "$mode" = xml ] && path="$XML_PATH" && links=default
  rm -rf "$TMP/trp" && mkdir -p "$TMP/trp"
  # A binary from before public_base_url = "off"/"request" existed had
  # links off by default and refuses the word: leave the setting out.
  local links_env=(TRP_PUBLIC_BASE_URL="$links")
  if [ "$links" = default ]; then
    links_env=()
  elif ! env -i PATH="$PATH" TRP_PUBLIC_BASE_URL="$links" "$bin" check-config >/dev/null 2>&1; then
    [ "$links" = off ] || die "$bin does not take public_base_url = $links"
    links_env=()
  fi
  env -i PATH="$PATH" HOME="$TMP/trp" TRP_LOG_LEVEL=warn "${links_env[@]}" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" serve --listen "127.0.0.1:$TRP_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" --store "sqlite://$TMP/trp/journal.db" \
    >"$TMP/trp/out.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  local i
  for ((i = 0; i < 600; i++)); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" || { tail "$TMP/trp/out.log" >&2; die "proxy not ready"; }
  local code
  code="$(curl -sS -o "$TMP/check" -w '%{http_code}' -H "Authorization: $AUTH" "http://127.0.0.1:$TRP_PORT$path")"
  [ "$code" = 200 ] || die "$mode answered $code"
  # Warm up (pool, allocator, lazy statics), then count only the load.
  wrk -t1 -c"$CONNECTIONS" -d2s -H "Authorization: $AUTH" -H 'Accept: application/json' \
    "http://127.0.0.1:$TRP_PORT$path" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: $AUTH" -H 'Accept: application/json' \
    -H 'User-Agent: twilio-python/9.0.0 (Linux x86_64) Python/3.11' \
    "http://127.0.0.1:$TRP_PORT$path" >"$TMP/wrk.txt"
  callgrind_control -i off "$pid" >/dev/null
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  local reqs non2xx ir
  reqs="$(awk '/ requests in / { print $1 }' "$TMP/wrk.txt")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$TMP/wrk.txt")"
  [ -z "$non2xx" ] || die "$mode: $non2xx answers were not 2xx"
  ir="$(awk '/^totals:/ { print $2; exit }' "$out")"
  echo "${ir:-0} ${reqs:-0}"
}

RESULTS="$OUT_DIR/instructions.md"
{
  echo "# Instructions per request (callgrind), $CONNECTIONS connections, $DURATION"
  echo
  echo "| binary | mode | round | requests | Ir per request |"
  echo "|---|---|---:|---:|---:|"
} >"$RESULTS"
for r in $(seq "$REPEAT"); do
  for mode in $MODES; do
    for pair in $BINS; do
      label="${pair%%=*}"
      read -r ir reqs < <(measure "${pair#*=}" "$mode" "$TMP/cg.$label.$mode.$r")
      per="$(awk -v i="$ir" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.0f", i / n; else print "-" }')"
      log "$label $mode round $r: $reqs requests, $per Ir/request"
      echo "| $label | $mode | $r | $reqs | $per |" >>"$RESULTS"
      cp "$TMP/cg.$label.$mode.$r" "$OUT_DIR/callgrind.$label.$mode.$r.out"
    done
  done
done
cat "$RESULTS"
