# zdmap serve in a container: `docker build -t zdmap .` (docs/deploying.md).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin zdmap && strip target/release/zdmap

FROM debian:bookworm-slim
# CA certificates for https://SUBDOMAIN.zendesk.com; no shell tools are needed at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/zdmap --shell /usr/sbin/nologin zdmap \
 && mkdir -p /var/lib/zdmap /etc/zdmap \
 && chown zdmap:zdmap /var/lib/zdmap
COPY --from=build /src/target/release/zdmap /usr/local/bin/zdmap
COPY mappings /etc/zdmap/mappings
COPY deploy/zdmap.yaml /etc/zdmap/zdmap.yaml
USER 10001:10001
WORKDIR /var/lib/zdmap
VOLUME /var/lib/zdmap
EXPOSE 8088
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["zdmap", "healthcheck", "--url", "http://127.0.0.1:8088/healthz"]
ENTRYPOINT ["zdmap"]
CMD ["serve", "--config", "/etc/zdmap/zdmap.yaml"]
