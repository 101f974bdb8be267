# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, ship only the binary on a slim base.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY conf ./conf
COPY bench ./bench
RUN cargo build --release --locked --bin cloudmap-dns

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cloudmap-dns --create-home cloudmap-dns
COPY --from=build /src/target/release/cloudmap-dns /usr/local/bin/cloudmap-dns
COPY conf/cloudmap-dns.toml /etc/cloudmap-dns/cloudmap-dns.toml
USER cloudmap-dns
WORKDIR /var/lib/cloudmap-dns
VOLUME ["/var/lib/cloudmap-dns"]
# The registry API listens on loopback only (it takes no credentials): reach it from inside the
# container (docker exec), or run the container in the host's network namespace.
ENTRYPOINT ["/usr/local/bin/cloudmap-dns"]
CMD ["serve", "--config", "/etc/cloudmap-dns/cloudmap-dns.toml", "--data-dir", "/var/lib/cloudmap-dns/data"]
