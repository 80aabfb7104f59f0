"""URLs shown in logs, errors and status pages carry no credentials, in any part."""

from __future__ import annotations

import pytest

from service.config import ConfigError, Settings
from service.providers.urls import redact_url


def test_user_password_and_query_values_are_hidden() -> None:
    assert redact_url("http://gpu:8000/v1") == "http://gpu:8000/v1"
    assert redact_url("http://u:pw@gpu:8000/v1") == "http://gpu:8000/v1"
    shown = redact_url("http://sidecar:9400/infra/status?token=INFRASECRET&x=1#frag")
    assert shown == "http://sidecar:9400/infra/status?token=***&x=***"
    assert redact_url("http://u:pw@[::1]:9/x?k=v") == "http://[::1]:9/x?k=***"
    assert redact_url("http://h/status?sk-secret123&a=1") == "http://h/status?***&a=***"


def test_an_inference_base_url_with_a_query_is_refused() -> None:
    # /v1/... is appended: "http://gpu/v1?api_key=K" became ".../v1?api_key=K/v1/models"
    for name in ("LLM_BASE_URL", "VOXTRAL_BASE_URL"):
        with pytest.raises(ConfigError) as err:
            Settings.from_env({name: "http://gpu:8000/v1?api_key=QUERYSECRET"})
        assert f"{name}=" in str(err.value) and "without a query" in str(err.value)
    ok = Settings.from_env({"INFRA_STATUS_URL": "http://sidecar:9400/infra/status?x=1"})
    assert ok.infra_status_url is not None  # a full URL of its own: a query is allowed
