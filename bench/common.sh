# Shared by bench/run.sh, bench/tls.sh and bench/latency.sh (sourced, not
# run): the request they send, logging, test certificates, and the tools
# and binary they need. The sourcing script sets BENCH_DIR, ROOT, TRP_BIN
# and LOG_TAG first.

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

# make_test_certs DIR: a test CA (DIR/ca.pem, DIR/ca.key) and a server
# certificate it signed for 127.0.0.1 and localhost (DIR/server.pem,
# DIR/server.key, and both in DIR/server-combined.pem for HAProxy), ECDSA
# P-256, valid two days, made with the openssl CLI. Never trusted outside
# the benchmark that made them.
make_test_certs() {
  (
    cd "$1"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -subj "/CN=trp bench test CA" -days 2 \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out server.key 2>/dev/null
    openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -days 2 -extfile server.ext -out server.pem 2>/dev/null
    cat server.pem server.key >server-combined.pem
  ) || die "openssl could not make the test certificates"
}
