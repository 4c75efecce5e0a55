# walflow's image: one binary with every subcommand (migrate, ingest, fake-api, doctor, ...).
# The schema in sql/schema is compiled into the binary; sql/ is copied for the pipelines.
FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka-sys: it needs a C toolchain, cmake and zlib;
# TLS links the system's OpenSSL (libssl-dev, found by pkg-config).
RUN apt-get update && apt-get install -y --no-install-recommends cmake zlib1g-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin walflow \
    && cp target/release/walflow /usr/local/bin/walflow

FROM debian:bookworm-slim
# curl for health checks; psql for `walflow bench ingest`'s COPY baseline.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /opt/walflow walflow
COPY --from=build /usr/local/bin/walflow /usr/local/bin/walflow
COPY sql /opt/walflow/sql
WORKDIR /opt/walflow
USER walflow
ENTRYPOINT ["walflow"]
CMD ["--help"]
