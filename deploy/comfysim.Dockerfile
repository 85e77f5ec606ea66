# The ComfyUI simulator as a container, for the agent's docker runtime
# without a GPU (tests, demos). Build context: a folder with the static
# binaries (CGO_ENABLED=0 go build -tags nodynamic -o ctx/bin/... ./comfysim
# ./agent; without nodynamic the webp package links them dynamically):
#   docker build -f deploy/comfysim.Dockerfile ctx
FROM scratch
COPY bin/atelier-comfysim /atelier-comfysim
# The agent binary doubles as the health check (no curl in a scratch image):
#   /atelier-healthcheck healthcheck --url http://127.0.0.1:8188/system_stats
COPY bin/atelier-agent /atelier-healthcheck
EXPOSE 8188
ENTRYPOINT ["/atelier-comfysim"]
