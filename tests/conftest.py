import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["hf_fingerprint.testing.pytest_plugin"]



@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session."""
    from hf_fingerprint import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture()
def tiny_llama():
    from hf_fingerprint import tiny_model

    return tiny_model("llama")
