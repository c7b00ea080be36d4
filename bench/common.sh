# Shared by bench/run.sh and bench/tls.sh (sourced, not run): the request
# both send, logging, and the tools and binary they need. The sourcing
# script sets BENCH_DIR, ROOT, TRP_BIN and LOG_TAG first.

# The request: a participant fetch, as a helper library sends it.
REQ_PATH="/v1/Services/ISaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Conversations/CHaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Participants/MBaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
AUTH="Basic $(printf '%s' 'ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:not-a-real-auth-token' | base64 -w0)"
BODY_FILE="$BENCH_DIR/participant.json"

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# need COMMAND:PACKAGE ...: install with apt-get the packages whose command
# is missing (nginx also counts when only /usr/sbin/nginx exists).
need() {
  local pair cmd pkgs=()
  for pair in "$@"; do
    cmd="${pair%%:*}"
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || pkgs+=("${pair#*:}")
  done
  [ "${#pkgs[@]}" -eq 0 ] && return 0
  log "installing ${pkgs[*]}"
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null
}

# Build the proxy binary when it is missing.
need_proxy_binary() {
  if [ ! -x "$TRP_BIN" ]; then
    log "building $TRP_BIN (cargo build --release --locked)"
    (cd "$ROOT" && cargo build --release --locked)
  fi
  [ -x "$TRP_BIN" ] || die "proxy binary $TRP_BIN not found"
}
