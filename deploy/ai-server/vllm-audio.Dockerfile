# vLLM's OpenAI server image plus the `audio` extra Voxtral needs. The extra is installed for
# the vLLM version already in the image, so nothing else changes.
ARG VLLM_TAG=v0.10.2
FROM vllm/vllm-openai:${VLLM_TAG}
RUN python3 -m pip install --no-cache-dir \
      "vllm[audio]==$(python3 -c 'import importlib.metadata as m; print(m.version("vllm"))')"
