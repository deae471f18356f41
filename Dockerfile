# Multi-stage build; the runtime image runs as a non-root user and reads its
# config from /etc/tenantgate/tenantgate.toml (mount a directory there).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked && strip target/release/tenantgate
# The shipped example binds loopback; inside a container the listeners must
# bind all interfaces to be reachable. Relative state paths would land under
# /etc/tenantgate, which the runtime user cannot write: the image's example
# points them at /var/lib/tenantgate (its writable home). Mount your own
# config over this one, with state_dir and quota_file set the same way.
RUN sed -E -e 's/"127\.0\.0\.1:(8080|8443|9090)"/"0.0.0.0:\1"/' \
      -e 's|state_dir = "state"|state_dir = "/var/lib/tenantgate/state"|' \
      -e 's|quota_file = "state/quotas.json"|quota_file = "/var/lib/tenantgate/state/quotas.json"|' \
      config/example.toml > /tmp/tenantgate.toml

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tenantgate --create-home tenantgate
COPY --from=build /src/target/release/tenantgate /usr/local/bin/tenantgate
COPY --from=build /tmp/tenantgate.toml /etc/tenantgate/tenantgate.toml
USER tenantgate
WORKDIR /var/lib/tenantgate
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/tenantgate"]
CMD ["serve", "--config", "/etc/tenantgate/tenantgate.toml"]
