"""The infra sidecar (``ai-service infra-sidecar``): runs on the AI server and reports GPUs,
inference containers and each local vLLM's live metrics as one JSON document, which the API's
``GET /api/v1/infra/status`` relays. Anything a host lacks (no NVML, no Docker socket) is
reported as unavailable with the reason, never as an error."""

# How long one source (a vLLM page, the Docker listing, NVML) may take: all of them run at
# once, and the API waits 5 s for the whole status.
SOURCE_DEADLINE_S = 2.0
