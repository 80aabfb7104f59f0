"""The infra sidecar (``ai-service infra-sidecar``): runs on the AI server and reports GPUs,
inference containers and each local vLLM's live metrics as one JSON document, which the API's
``GET /api/v1/infra/status`` relays. Anything a host lacks (no NVML, no Docker socket) is
reported as unavailable with the reason, never as an error."""
