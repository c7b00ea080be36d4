#!/usr/bin/env bash
# Verify the Dockerfile as far as a machine without a container engine allows.
#
#   1. Build stage: replay its WORKDIR/COPY/ENV/RUN steps as a plain script in
#      a scratch directory laid out like the stage's filesystem, on a build
#      context filtered through .dockerignore. RUN steps run with /bin/sh -c,
#      exactly as written (same `cargo build --release --locked`).
#   2. Runtime stage (if podman is installed): generate a variant Dockerfile
#      from the real runtime stage, with `FROM` replaced by a local base image
#      (default localhost/bookworm-min, imported from debootstrap, see
#      deploy/README.md) and `COPY --from=build` replaced by COPYs of the files
#      step 1 produced; build it with podman (COPY-only: no RUN needed) and
#      check the image configuration (user, env, ports, volume, healthcheck,
#      entrypoint, cmd).
#   3. Export the built image's filesystem and, if chroot is permitted, run
#      the binary inside it as the image's user with the image's environment:
#      `serve` on loopback, wait for /readyz, run the HEALTHCHECK command,
#      SIGTERM, expect exit 0.
#
# Environment:
#   BASE_IMAGE=localhost/bookworm-min  local stand-in for the runtime base
#   IMPORT_BASE=0     1: debootstrap + podman import BASE_IMAGE if missing
#   FRESH=0           1: build in an empty target dir (a real docker build);
#                     default reuses target/dockerfile-verify between runs
#   KEEP=0            1: keep the scratch directory
#   SKIP_PODMAN=0     1: stop after step 1
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/Dockerfile"
BASE_IMAGE="${BASE_IMAGE:-localhost/bookworm-min}"
IMPORT_BASE="${IMPORT_BASE:-0}"
FRESH="${FRESH:-0}"
KEEP="${KEEP:-0}"
SKIP_PODMAN="${SKIP_PODMAN:-0}"
TAG="localhost/twilio-repair-proxy:verify"

log() { printf '[verify] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
RESULTS=()
ok() { RESULTS+=("PASS  $*"); log "PASS: $*"; }
skip() { RESULTS+=("SKIP  $*"); log "SKIP: $*"; }

WORK="$(mktemp -d /tmp/trp-dockerfile-verify.XXXXXX)"
SERVE_PID=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

command -v python3 >/dev/null || die "python3 is needed to parse the Dockerfile"

# ---------------------------------------------------------------- parse
# Emits one line per instruction: STAGE<TAB>INSTR<TAB>JSON-args
python3 - "$DOCKERFILE" >"$WORK/plan.tsv" <<'PY'
import json, re, shlex, sys
text = open(sys.argv[1]).read()
lines, buf = [], ""
for raw in text.splitlines():
    s = raw.rstrip()
    if not buf and (not s.strip() or s.lstrip().startswith("#")):
        continue
    if buf and s.lstrip().startswith("#"):
        continue  # comment lines inside a continuation are dropped
    if s.endswith("\\"):
        buf += s[:-1] + " "
        continue
    lines.append((buf + s).strip())
    buf = ""
stage = None
for l in lines:
    instr, _, rest = l.partition(" ")
    instr = instr.upper()
    rest = rest.strip()
    if instr == "FROM":
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
        stage = m.group(2) or m.group(1)
        print(f"{stage}\tFROM\t{json.dumps(m.group(1))}")
        continue
    print(f"{stage}\t{instr}\t{json.dumps(rest)}")
PY

BUILD_STAGE="$(awk -F'\t' '$2 == "FROM" { print $1; exit }' "$WORK/plan.tsv")"
BUILD_IMAGE="$(awk -F'\t' '$2 == "FROM" { print $3; exit }' "$WORK/plan.tsv" | tr -d '"')"
RUNTIME_STAGE="$(awk -F'\t' '$2 == "FROM" { s = $1 } END { print s }' "$WORK/plan.tsv")"
log "stages: build '$BUILD_STAGE' ($BUILD_IMAGE), runtime '$RUNTIME_STAGE'"

# The pinned toolchain must be the one used here.
want_rust="$(sed -n 's/^rust:\([0-9][0-9.]*\).*/\1/p' <<<"$BUILD_IMAGE")"
have_rust="$(rustc --version | awk '{ print $2 }')"
case "$have_rust" in
  "$want_rust" | "$want_rust".*) ok "local toolchain rustc $have_rust matches the pinned $BUILD_IMAGE" ;;
  *) log "warning: local rustc $have_rust, the Dockerfile pins $BUILD_IMAGE" ;;
esac
if grep -q bookworm <<<"$BUILD_IMAGE" && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  ok "host is Debian 12 (bookworm) like the build image: same glibc"
fi

# ---------------------------------------------------------------- context
# The build context as the engine would send it: .dockerignore applied
# (Docker semantics: patterns in order, the last match wins, `!` re-includes,
# a match on a directory covers everything below it).
CTX="$WORK/context"
mkdir -p "$CTX"
python3 - "$ROOT" "$CTX" <<'PY'
import fnmatch, os, shutil, sys
root, ctx = sys.argv[1], sys.argv[2]
pats = []
ign = os.path.join(root, ".dockerignore")
if os.path.exists(ign):
    for l in open(ign):
        l = l.strip()
        if not l or l.startswith("#"):
            continue
        neg = l.startswith("!")
        p = l[1:] if neg else l
        p = p.strip("/")
        pats.append((neg, os.path.normpath(p)))
def matches(pat, rel):
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if fnmatch.fnmatchcase("/".join(parts[:i]), pat):
            return True
    return False
def excluded(rel):
    ex = False
    for neg, p in pats:
        if matches(p, rel):
            ex = not neg
    return ex
n = 0
for d, dirs, files in os.walk(root):
    reld = os.path.relpath(d, root)
    reld = "" if reld == "." else reld
    # .git and target are never needed; do not walk them (both are excluded
    # by the allow-list anyway).
    dirs[:] = [x for x in dirs if not (reld == "" and x in (".git", "target"))]
    for f in files:
        rel = os.path.join(reld, f) if reld else f
        if excluded(rel):
            continue
        dst = os.path.join(ctx, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), dst)
        n += 1
PY
log "build context: $(find "$CTX" -type f | wc -l) files, $(du -sh "$CTX" | cut -f1) ($(cd "$CTX" && ls -A | tr '\n' ' '))"
[ -f "$CTX/Cargo.lock" ] && [ -d "$CTX/src" ] && [ -f "$CTX/config/default.toml" ] \
  && [ -d "$CTX/migrations/sqlite" ] && [ -d "$CTX/migrations/postgres" ] \
  && [ -f "$CTX/crates/twilio-emulator/src/lib.rs" ] && [ -f "$CTX/crates/twilio-wire/Cargo.toml" ] \
  || die ".dockerignore leaves out something the build needs"
[ ! -e "$CTX/target" ] && [ ! -e "$CTX/.git" ] && [ ! -e "$CTX/tests" ] \
  && [ ! -e "$CTX/crates/twilio-emulator/tests" ] \
  || die ".dockerignore lets target/, .git or tests/ into the context"
ok ".dockerignore: context has Cargo.toml, Cargo.lock, src/, crates/*/{Cargo.toml,src}, config/, migrations/ and nothing heavy"

# ---------------------------------------------------------------- step 1
# Replay the build stage. The stage's filesystem root is $FS; WORKDIR maps
# below it. RUN steps must use relative paths (the Dockerfile promises it).
FS="$WORK/fs"
mkdir -p "$FS"
WORKDIR_IN="/"
declare -a STAGE_ENV=()
while IFS=$'\t' read -r stage instr args; do
  [ "$stage" = "$BUILD_STAGE" ] || continue
  arg="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]))' "$args")"
  case "$instr" in
    FROM) ;;
    WORKDIR)
      WORKDIR_IN="$arg"; mkdir -p "$FS$WORKDIR_IN"
      if [ "$FRESH" != 1 ] && [ ! -e "$FS$WORKDIR_IN/target" ]; then
        # Reuse compiled artifacts between verification runs.
        mkdir -p "$ROOT/target/dockerfile-verify"
        ln -s "$ROOT/target/dockerfile-verify" "$FS$WORKDIR_IN/target"
        log "WORKDIR $WORKDIR_IN (target/ -> target/dockerfile-verify, FRESH=1 for an empty one)"
      else
        log "WORKDIR $WORKDIR_IN"
      fi
      ;;
    ENV | ARG) STAGE_ENV+=("$arg"); log "$instr $arg" ;;
    COPY)
      read -r -a words <<<"$arg"
      [[ "${words[0]}" == --* ]] && die "build stage COPY flags are not replayed: $arg"
      dst="${words[-1]}"
      [[ "$dst" == /* ]] || dst="$WORKDIR_IN/$dst"
      for src in "${words[@]:0:${#words[@]}-1}"; do
        if [ -d "$CTX/$src" ]; then
          mkdir -p "$FS$dst"; cp -a "$CTX/$src/." "$FS$dst/"
        else
          mkdir -p "$FS$dst"; cp -a "$CTX/$src" "$FS$dst/"
        fi
      done
      log "COPY $arg"
      ;;
    RUN)
      if grep -Eq '(^|[[:space:]])/[a-z]' <<<"$arg"; then
        die "build-stage RUN uses an absolute path, cannot replay it safely: $arg"
      fi
      log "RUN $arg"
      start=$(date +%s)
      (cd "$FS$WORKDIR_IN" && env "${STAGE_ENV[@]+"${STAGE_ENV[@]}"}" /bin/sh -c "$arg") \
        || die "build-stage RUN failed: $arg"
      log "  ... done in $(( $(date +%s) - start )) s"
      ;;
    *) log "build stage: ignoring $instr $arg" ;;
  esac
done <"$WORK/plan.tsv"
ok "build stage replayed: every RUN step (incl. cargo build --release --locked) succeeded"

BIN="$FS/src/out/usr/local/bin/twilio-repair-proxy"
[ -x "$BIN" ] || die "the build stage did not produce $BIN"
"$BIN" --version
ok "build stage produced the real binary ($("$BIN" --version), $(du -h "$BIN" | cut -f1))"
log "dynamic dependencies: $(ldd "$BIN" | awk '{ print $1 }' | tr '\n' ' ')"

# ---------------------------------------------------------------- step 2
if [ "$SKIP_PODMAN" = 1 ]; then skip "podman runtime-stage build (SKIP_PODMAN=1)"; fi
if [ "$SKIP_PODMAN" != 1 ] && ! command -v podman >/dev/null; then
  skip "podman runtime-stage build (podman not installed: apt-get install -y podman)"
  SKIP_PODMAN=1
fi
if [ "$SKIP_PODMAN" != 1 ] && ! podman image exists "$BASE_IMAGE"; then
  if [ "$IMPORT_BASE" = 1 ] && command -v debootstrap >/dev/null; then
    log "importing $BASE_IMAGE from debootstrap (bookworm minbase)"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
      || { tail "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
  else
    skip "podman runtime-stage build (no image $BASE_IMAGE; IMPORT_BASE=1 creates it)"
    SKIP_PODMAN=1
  fi
fi

if [ "$SKIP_PODMAN" != 1 ]; then
  RCTX="$WORK/runtime-context"
  mkdir -p "$RCTX/from-build"
  {
    echo "# Generated by deploy/verify-dockerfile.sh from the Dockerfile's runtime stage."
    while IFS=$'\t' read -r stage instr args; do
      [ "$stage" = "$RUNTIME_STAGE" ] || continue
      arg="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]))' "$args")"
      case "$instr" in
        FROM) echo "FROM $BASE_IMAGE" ;;
        COPY)
          if [[ "$arg" == *--from=$BUILD_STAGE* ]]; then
            read -r -a words <<<"$arg"
            flags=(); paths=()
            for w in "${words[@]}"; do
              case "$w" in --from=*) ;; --*) flags+=("$w") ;; *) paths+=("$w") ;; esac
            done
            dst="${paths[-1]}"; out=()
            for src in "${paths[@]:0:${#paths[@]}-1}"; do
              mkdir -p "$RCTX/from-build$(dirname "$src")"
              cp -a "$FS$src" "$RCTX/from-build$src"
              out+=("from-build$src")
            done
            echo "COPY ${flags[*]} ${out[*]} $dst"
          else
            echo "COPY $arg"
          fi
          ;;
        *) echo "$instr $arg" ;;
      esac
    done <"$WORK/plan.tsv"
  } >"$RCTX/Dockerfile"
  log "variant Dockerfile:"; sed 's/^/    /' "$RCTX/Dockerfile" >&2
  podman build --format docker -q -t "$TAG" -f "$RCTX/Dockerfile" "$RCTX" >"$WORK/podman-build.log" 2>&1 \
    || { cat "$WORK/podman-build.log" >&2; die "podman build of the runtime stage failed"; }
  ok "podman built the runtime stage on $BASE_IMAGE ($TAG)"

  # Image configuration.
  podman image inspect "$TAG" --format json >"$WORK/inspect.json"
  python3 - "$WORK/inspect.json" "$DOCKERFILE" <<'PY' || die "image configuration does not match the Dockerfile"
import json, sys
img = json.load(open(sys.argv[1]))[0]
cfg = img.get("Config") or {}
env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
want_env = {
    "TRP_LISTEN": "0.0.0.0:8080",
    "TRP_ADMIN_LISTEN": "0.0.0.0:9090",
    "TRP_STORE": "sqlite:///var/lib/twilio-repair-proxy/journal.db",
    "TRP_LOG_FORMAT": "json",
}
errors = []
for k, v in want_env.items():
    if env.get(k) != v:
        errors.append(f"Env {k}={env.get(k)!r}, want {v!r}")
if cfg.get("User") != "65532:65532":
    errors.append(f"User {cfg.get('User')!r}")
if sorted((cfg.get("ExposedPorts") or {}).keys()) != ["8080/tcp", "9090/tcp"]:
    errors.append(f"ExposedPorts {cfg.get('ExposedPorts')}")
if list((cfg.get("Volumes") or {}).keys()) != ["/var/lib/twilio-repair-proxy"]:
    errors.append(f"Volumes {cfg.get('Volumes')}")
if cfg.get("Entrypoint") != ["/usr/local/bin/twilio-repair-proxy"]:
    errors.append(f"Entrypoint {cfg.get('Entrypoint')}")
if cfg.get("Cmd") != ["serve"]:
    errors.append(f"Cmd {cfg.get('Cmd')}")
# podman keeps the docker-format healthcheck beside Config
hc = (cfg.get("Healthcheck") or img.get("Healthcheck") or {}).get("Test")
if hc != ["CMD", "/usr/local/bin/twilio-repair-proxy", "healthcheck", "--admin", "127.0.0.1:9090"]:
    errors.append(f"Healthcheck {hc} (want exec form)")
if (cfg.get("StopSignal") or img.get("StopSignal")) not in ("SIGTERM", "15", None):
    errors.append(f"StopSignal {cfg.get('StopSignal')}")
for e in errors:
    print("  mismatch:", e, file=sys.stderr)
shown = {k: cfg.get(k) for k in ("User", "Env", "ExposedPorts", "Volumes", "Entrypoint", "Cmd")}
shown["Healthcheck"] = hc
print(json.dumps(shown), file=sys.stderr)
sys.exit(1 if errors else 0)
PY
  ok "image config: User 65532:65532, TRP_* env, EXPOSE 8080 9090, VOLUME, exec-form HEALTHCHECK, ENTRYPOINT/CMD"

  # ---------------------------------------------------------------- step 3
  CID="$(podman create "$TAG" 2>/dev/null)"
  mkdir -p "$WORK/image-fs"
  podman export "$CID" | tar -C "$WORK/image-fs" -x --no-same-owner --same-permissions 2>/dev/null || true
  podman export "$CID" | tar -t -v 2>/dev/null | grep -E ' (\./)?(usr/local/bin/twilio-repair-proxy|var/lib/twilio-repair-proxy/?)$' >"$WORK/owners.txt" || true
  podman rm "$CID" >/dev/null 2>&1
  # Ownership as stored in the image layer.
  grep -q '65532/65532 .*var/lib/twilio-repair-proxy' "$WORK/owners.txt" \
    || { cat "$WORK/owners.txt" >&2; die "/var/lib/twilio-repair-proxy is not owned by 65532:65532 in the image"; }
  grep -q 'rwxr-xr-x .*usr/local/bin/twilio-repair-proxy' "$WORK/owners.txt" \
    || { cat "$WORK/owners.txt" >&2; die "the binary is not 0755 in the image"; }
  ok "image filesystem: binary 0755 at /usr/local/bin, journal dir owned by 65532:65532"

  # Run the image's entrypoint in its own filesystem, as its user, with its env.
  IFS_ROOT="$WORK/image-fs"
  CHROOT="$(command -v chroot || echo /usr/sbin/chroot)"  # env -i clears PATH
  chown 65532:65532 "$IFS_ROOT/var/lib/twilio-repair-proxy" 2>/dev/null || true
  mkdir -p "$IFS_ROOT/proc" "$IFS_ROOT/dev"
  if "$CHROOT" --userspec=65532:65532 "$IFS_ROOT" /usr/local/bin/twilio-repair-proxy --version >/dev/null 2>"$WORK/chroot.err"; then
    # Loopback ports instead of 0.0.0.0 (this machine's rule), otherwise the image env.
    mapfile -t IMG_ENV < <(python3 -c '
import json,sys
for e in json.load(open(sys.argv[1]))[0]["Config"]["Env"]:
    print(e)' "$WORK/inspect.json")
    env -i "${IMG_ENV[@]}" TRP_LISTEN=127.0.0.1:28180 TRP_ADMIN_LISTEN=127.0.0.1:9090 \
      "$CHROOT" --userspec=65532:65532 "$IFS_ROOT" /usr/local/bin/twilio-repair-proxy serve \
      >"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    ready=0
    for _ in $(seq 1 100); do
      if env -i "$CHROOT" --userspec=65532:65532 "$IFS_ROOT" \
        /usr/local/bin/twilio-repair-proxy healthcheck --admin 127.0.0.1:9090 >/dev/null 2>&1; then
        ready=1; break
      fi
      sleep 0.1
    done
    [ "$ready" = 1 ] || { cat "$WORK/serve.log" >&2; die "the image's HEALTHCHECK command never succeeded"; }
    ok "in the image filesystem as uid 65532: 'serve' with the image env started, HEALTHCHECK command exit 0"
    [ -f "$IFS_ROOT/var/lib/twilio-repair-proxy/journal.db" ] \
      && ok "journal created at /var/lib/twilio-repair-proxy/journal.db by the non-root user"
    head -n 1 "$WORK/serve.log" | grep -q '^{' && ok "logs are JSON (TRP_LOG_FORMAT=json)"
    kill -TERM "$SERVE_PID"
    t0=$(date +%s%N)
    if wait "$SERVE_PID"; then
      ok "SIGTERM: clean exit 0 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    else
      die "serve exited non-zero on SIGTERM"
    fi
    SERVE_PID=""
  else
    skip "running the binary in the image filesystem (chroot not permitted: $(head -c 200 "$WORK/chroot.err"))"
  fi
fi

echo
echo "Dockerfile verification summary:"
printf '  %s\n' "${RESULTS[@]}"
echo "Not verified here (no container engine can run RUN steps or containers):"
echo "  - pulling rust:1.95-slim-bookworm and gcr.io/distroless/cc-debian12:nonroot"
echo "  - the build stage inside the real image (replayed on the host's identical toolchain instead)"
echo "  - the engine running HEALTHCHECK, volume initialisation and port publishing"
