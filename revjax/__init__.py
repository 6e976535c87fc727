"""revjax: forward, backward and bidirectional GPT language models in JAX/Flax."""

__version__ = "0.1.0"
