# dwcpd container image.
#
# Node 24 runs the TypeScript sources directly (native type stripping), so
# there is no build step: the image holds src/, the production dependencies
# and nothing else. The base image's Node replaces the `node` devDependency.
#
#   docker build -t dwcp .
#   docker run -d --name dwcpd -v dwcp-data:/var/lib/dwcp \
#     -v ./dwcpd.yaml:/etc/dwcp/dwcpd.yaml:ro -e DWCP_CONFIG=/etc/dwcp/dwcpd.yaml \
#     -p 4777:4777 -p 127.0.0.1:9477:9477 dwcp
#
# Without DWCP_CONFIG the daemon runs as a lone node of the federation "local".
# `docker exec dwcpd node src/daemon/main.ts id` prints the node's peer ID.

ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Exactly the locked production tree. No install scripts: none of the
# production dependencies needs one (protobufjs' only prints a version
# warning), and skipping them keeps the build from running registry code.
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
# A fixed UID/GID, so a data volume keeps a valid owner for the node key
# across image rebuilds (the key is the node's identity; see node.key).
RUN groupadd --system --gid 10001 dwcp \
 && useradd --system --uid 10001 --gid dwcp --home-dir /var/lib/dwcp --no-create-home --shell /usr/sbin/nologin dwcp \
 && install -d -o dwcp -g dwcp -m 0700 /var/lib/dwcp \
 && install -d -o dwcp -g dwcp -m 0750 /run/dwcp
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src

# After the directory is created with its owner and mode: a new named volume
# is initialised from the image's directory, ownership included.
VOLUME /var/lib/dwcp
# 4777: libp2p (members connect here); 9477: /metrics, /healthz, /readyz.
EXPOSE 4777 9477
ENV DWCP_DATA_DIR=/var/lib/dwcp \
    DWCP_ADMIN_SOCKET=/run/dwcp/admin.sock \
    DWCP_METRICS_LISTEN=0.0.0.0:9477

USER dwcp
# The slim image has no curl; Node's fetch does the probe, against the address
# DWCP_METRICS_LISTEN binds (a wildcard bind is probed on loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "const l = process.env.DWCP_METRICS_LISTEN || '0.0.0.0:9477'; const i = l.lastIndexOf(':'); const h = { '0.0.0.0': '127.0.0.1', '[::]': '[::1]' }[l.slice(0, i)] ?? l.slice(0, i); fetch(`http://${h}:${l.slice(i + 1)}/healthz`, { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# dwcpd stops gracefully on SIGTERM within 10 s, which is exactly Docker's
# default grace period; give `docker run --stop-timeout 15` for a margin.
STOPSIGNAL SIGTERM
# --max-semi-space-size, --expose-gc: the V8 flags of src/daemon/node-flags.ts, which says why.
ENTRYPOINT ["node", "--max-semi-space-size=8", "--expose-gc", "src/daemon/main.ts"]
