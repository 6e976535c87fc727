"""Shared test set-up: 8 emulated CPU devices, golden-data paths, shared fixtures."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
# One persistent compilation cache for the session, shared with the training subprocesses the tests start: the
# same tiny shapes are compiled once instead of once per run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="revjax-test-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("REVJAX_GOLDEN_DIR", REPO_ROOT / "tests" / "golden"))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        raise FileNotFoundError(
            f"golden data not found at {GOLDEN_DIR}; set REVJAX_GOLDEN_DIR to a copy of onanchat's golden outputs"
        )
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def tok(golden_dir):
    """onanchat's tiny golden tokenizer (a test module may define its own ``tok``)."""
    from revjax.tokenizer import Tokenizer

    return Tokenizer.load(golden_dir / "tokenizer")


@pytest.fixture(scope="session")
def specials(tok):
    from revjax.direction import Specials

    return Specials.from_tokenizer(tok)
