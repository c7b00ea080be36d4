# twilio-repair-proxy container image.
#
#   docker build -t twilio-repair-proxy \
#     --build-arg TWILIO_REPAIR_PROXY_COMMIT="$(git rev-parse --short=12 HEAD)" .
#   export TRP_ADMIN_TOKEN="$(openssl rand -hex 32)"   # the admin plane's bearer token
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 -e TRP_ADMIN_TOKEN \
#     -v trp-data:/var/lib/twilio-repair-proxy twilio-repair-proxy
#
# The admin plane listens on all of the container's interfaces (so that the
# engine can publish it and an orchestrator can probe it); /metrics,
# /incidents and /repairs then need TRP_ADMIN_TOKEN (a bearer token; the
# probes /healthz and /readyz stay open). Without a token the proxy logs a
# warning at start-up: publish 9090 on loopback only, or set the token.
#
# Configured only through TRP_* environment variables (see
# config/default.toml, which is compiled into the binary). The same image
# runs the emulator: `docker run ... twilio-repair-proxy emulator ...`.
#
# Build-stage RUN steps use paths relative to WORKDIR only, so that
# deploy/verify-dockerfile.sh can replay them outside a container engine.

# ---------------------------------------------------------------- build
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when a
# manifest or Cargo.lock changes. The workspace's crates (the proxy at the
# root, crates/twilio-emulator, crates/twilio-wire) are placeholders here,
# removed again.
COPY Cargo.toml Cargo.lock ./
COPY crates/twilio-emulator/Cargo.toml crates/twilio-emulator/
COPY crates/twilio-wire/Cargo.toml crates/twilio-wire/
RUN mkdir -p src config crates/twilio-emulator/src crates/twilio-wire/src \
 && printf 'fn main() {}\n' > src/main.rs \
 && : > src/lib.rs \
 && : > crates/twilio-emulator/src/lib.rs \
 && : > crates/twilio-wire/src/lib.rs \
 && : > config/default.toml \
 && cargo build --release --locked \
 && rm -rf src config crates/twilio-emulator/src crates/twilio-wire/src

# The commit trp_build_info{commit} names: .git is not in the build
# context, so build.rs takes it from here ("unknown" when not given).
ARG TWILIO_REPAIR_PROXY_COMMIT=
COPY config ./config
COPY migrations ./migrations
COPY crates ./crates
COPY src ./src
# touch: the real sources may be older than the placeholder build's
# fingerprints; without it cargo could keep the placeholder binary (which
# prints nothing for --version, hence the grep).
RUN touch src/main.rs src/lib.rs crates/twilio-emulator/src/lib.rs crates/twilio-wire/src/lib.rs \
 && cargo build --release --locked \
 && mkdir -p out/usr/local/bin out/var/lib/twilio-repair-proxy \
 && cp target/release/twilio-repair-proxy out/usr/local/bin/ \
 && ./out/usr/local/bin/twilio-repair-proxy --version | grep '^twilio-repair-proxy '

# ---------------------------------------------------------------- runtime
# glibc + libgcc + CA certificates, no shell, no package manager.
# The binary links only libc, libm and libgcc_s (the build stage is also
# Debian 12, so the glibc versions match).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

COPY --from=build /src/out/usr/local/bin/twilio-repair-proxy /usr/local/bin/twilio-repair-proxy
# The journal directory, owned by the runtime user (a new named volume
# inherits this ownership).
COPY --from=build --chown=65532:65532 /src/out/var/lib/twilio-repair-proxy /var/lib/twilio-repair-proxy

ENV TRP_LISTEN=0.0.0.0:8080 \
    TRP_ADMIN_LISTEN=0.0.0.0:9090 \
    TRP_STORE=sqlite:///var/lib/twilio-repair-proxy/journal.db \
    TRP_LOG_FORMAT=json

EXPOSE 8080 9090
VOLUME /var/lib/twilio-repair-proxy

# Numeric (distroless "nonroot"), so that Kubernetes runAsNonRoot can check it.
USER 65532:65532

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/twilio-repair-proxy", "healthcheck", "--admin", "127.0.0.1:9090"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/twilio-repair-proxy"]
CMD ["serve"]
