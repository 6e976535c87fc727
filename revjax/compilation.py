"""jax's persistent compilation cache for revjax's commands: compiled programs kept under ``<base dir>/jax_cache``.

Training, ``revjax eval`` and ``revjax compare`` switch it on, so a second run or evaluation of a model of the same
size and shapes skips compiling (the train step, the evaluation step, the scorer's row shapes). jax's own
``JAX_COMPILATION_CACHE_DIR`` takes precedence; ``JAX_ENABLE_COMPILATION_CACHE=false`` switches the cache off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from revjax.config import Config

MIN_COMPILE_SECONDS = 1.0  # programs that compile faster are not worth a file


def use_compilation_cache(base_dir: str | os.PathLike[str] | None = None) -> None:
    """Keep compiled programs in ``<base_dir>/jax_cache`` (default: the base dir of the environment) unless jax
    already has a cache folder."""
    if jax.config.jax_compilation_cache_dir:
        return
    if base_dir is None:
        base_dir = Config().base_path()
    jax.config.update("jax_compilation_cache_dir", str(Path(base_dir) / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
