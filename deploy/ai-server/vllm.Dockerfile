# vLLM's OpenAI server image, plus what it may lack for this deployment; nothing else changes.
#
# - The OpenTelemetry packages `--otlp-traces-endpoint` needs: vLLM refuses to start with that
#   flag when they are missing ("OpenTelemetry is not available"), and some vllm-openai
#   releases ship without them. Installed only when absent, at the versions vLLM's own
#   OpenTelemetry example names.
# - VLLM_EXTRAS (e.g. `audio`, which Voxtral needs: librosa, soundfile, mistral_common[audio]),
#   installed for the vLLM version already in the image.
#
# Not built in this repository's CI (no Docker engine there); `docker compose build` on the
# AI server builds it on first start.
# v0.11.0 (v0.10.2 before): advisories GHSA-3f6c-7fw2-ppm4 and GHSA-wr9h-g72x-mwhm are
# reported fixed there. Not run here: this repository's machines have no GPU.
ARG VLLM_TAG=v0.11.0
FROM vllm/vllm-openai:${VLLM_TAG}
ARG VLLM_EXTRAS=""
RUN python3 -c "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.grpc.trace_exporter" \
      2>/dev/null \
    || python3 -m pip install --no-cache-dir \
      "opentelemetry-sdk>=1.26.0,<1.27.0" "opentelemetry-api>=1.26.0,<1.27.0" \
      "opentelemetry-exporter-otlp>=1.26.0,<1.27.0" \
      "opentelemetry-semantic-conventions-ai>=0.4.1,<0.5.0"
RUN if [ -n "$VLLM_EXTRAS" ]; then \
      python3 -m pip install --no-cache-dir \
        "vllm[$VLLM_EXTRAS]==$(python3 -c 'import importlib.metadata as m; print(m.version("vllm"))')"; \
    fi
