import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["hf_fingerprint.testing.pytest_plugin"]

# Modules point HF_FINGERPRINT_CACHE at private folders; the embedded model always goes to the session's own cache.
_SESSION_CACHE = os.environ.get("HF_FINGERPRINT_CACHE")


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session from the session's cache."""
    from hf_fingerprint import load_model

    with pytest.MonkeyPatch.context() as patch:
        if _SESSION_CACHE is None:
            patch.delenv("HF_FINGERPRINT_CACHE", raising=False)
        else:
            patch.setenv("HF_FINGERPRINT_CACHE", _SESSION_CACHE)
        return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module: tiny models run faster so, and the test machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_llama():
    from hf_fingerprint import tiny_model

    return tiny_model("llama")
