# parley API server.
#   docker build -t parley .
#   docker run -p 8000:8000 -e DATABASE_URL=postgres://user:pass@db:5432/parley \
#     -e ALLOWED_ORIGINS=https://app.example.com parley
FROM denoland/deno:2.9.6

WORKDIR /app

# Dependencies first, so this layer is rebuilt only when deno.json or deno.lock change.
# deno.json sets nodeModulesDir: npm packages land in /app/node_modules, inside the one
# folder the server may read (--allow-read=.).
COPY deno.json deno.lock ./
RUN deno install --frozen

COPY main.ts ./
COPY server/ ./server/
COPY db/ ./db/
RUN deno cache --frozen main.ts \
  # Files are owned by root and only readable by the server: it cannot modify itself.
  # ./data is the only place it may write (the embedded database, when DATABASE_URL is unset).
  && chmod -R a+rX /app \
  && mkdir -p /app/data && chown deno:deno /app/data

USER deno
ENV PORT=8000
EXPOSE 8000

# Probes GET /health (200 only when Postgres answers). `deno run` with network access to
# 127.0.0.1 and env access to PORT only (`deno eval` would ignore permission flags);
# assumes HOST is unset or 0.0.0.0/127.0.0.1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["deno", "run", "--no-config", "--allow-net=127.0.0.1", "--allow-env=PORT", "data:text/javascript,const res = await fetch(`http://127.0.0.1:${Deno.env.get(\"PORT\") || 8000}/health`); Deno.exit(res.ok ? 0 : 1);"]

# The base image's entrypoint (tini, then `deno` for subcommands such as `run`) receives
# these arguments: together exactly deno.json's `tasks.start` (tests/startup_test.ts checks).
CMD ["run", "--allow-net", "--allow-env", "--allow-read=.", "--allow-write=./data", "main.ts"]
