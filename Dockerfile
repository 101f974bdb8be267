# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, ship only the binary on a slim base.
FROM rust:1-slim-bookworm AS build
# make builds jemalloc (the global allocator); the slim image has gcc but not make.
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY conf ./conf
COPY bench ./bench
RUN cargo build --release --locked --bin cloudmap-dns

FROM debian:bookworm-slim
COPY --from=build /src/target/release/cloudmap-dns /usr/local/bin/cloudmap-dns
# Port 53 without root: the binary carries CAP_NET_BIND_SERVICE as a file capability (granted
# unless the runtime sets no-new-privileges), and the process runs as an unprivileged user.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
    && setcap cap_net_bind_service=+ep /usr/local/bin/cloudmap-dns \
    && apt-get purge -y libcap2-bin \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/cloudmap-dns --create-home cloudmap-dns
COPY conf/cloudmap-dns.toml /etc/cloudmap-dns/cloudmap-dns.toml
USER 10001:10001
WORKDIR /var/lib/cloudmap-dns
VOLUME ["/var/lib/cloudmap-dns"]
EXPOSE 53/udp 53/tcp 9153/tcp
# DNS and metrics on every address of the container. Mount a config of your own over
# /etc/cloudmap-dns/cloudmap-dns.toml: its allow_query / allow_recursion must list your clients'
# networks (the default is loopback only). The registry API listens on loopback only (it takes
# no credentials): reach it from inside the container, or use the host's network namespace.
# Run with: docker run --cap-drop ALL --cap-add NET_BIND_SERVICE -p 53:53/udp -p 53:53/tcp ...
ENTRYPOINT ["/usr/local/bin/cloudmap-dns"]
CMD ["serve", "--config", "/etc/cloudmap-dns/cloudmap-dns.toml", "--data-dir", "/var/lib/cloudmap-dns/data", "--dns-listen", "0.0.0.0:53", "--metrics-listen", "0.0.0.0:9153"]
