# parley API server.
#   docker build -t parley .
#   docker run -p 8000:8000 -e DATABASE_URL=postgres://user:pass@db:5432/parley \
#     -e ALLOWED_ORIGINS=https://app.example.com parley
FROM denoland/deno:2.9.6

WORKDIR /app

# Dependencies first, so this layer is rebuilt only when deno.json or deno.lock change.
# Files are owned by root and only made readable: the app cannot modify itself. The npm
# cache in $DENO_DIR (/deno-dir, owned by `deno` in the base image) is filled as `deno`,
# so the server can still write its own cache entries there at run time.
COPY deno.json deno.lock ./
RUN chmod a+r deno.json deno.lock
USER deno
RUN deno install --frozen

USER root
COPY main.ts ./
COPY server/ ./server/
COPY db/ ./db/
# client/ (types for front ends; the server never imports it) is left out of the image.
RUN chmod -R a+rX /app
USER deno
RUN deno cache --frozen main.ts

ENV PORT=8000
EXPOSE 8000

# Probes GET /health (200 only when Postgres answers). `deno run` with network access to
# 127.0.0.1 and env access to PORT only (`deno eval` would ignore permission flags);
# assumes HOST is unset or 0.0.0.0/127.0.0.1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["deno", "run", "--no-config", "--allow-net=127.0.0.1", "--allow-env=PORT", "data:text/javascript,const res = await fetch(`http://127.0.0.1:${Deno.env.get(\"PORT\") || 8000}/health`); Deno.exit(res.ok ? 0 : 1);"]

# The base image's entrypoint (tini, then `deno` for subcommands such as `run`) receives
# these arguments: together exactly deno.json's `tasks.start` (tests/startup_test.ts checks).
CMD ["run", "--allow-net", "--allow-env", "--allow-read=.", "main.ts"]
