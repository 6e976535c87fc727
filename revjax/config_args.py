"""Configs named on a command line: ``--config NAME`` (a path, or a name under ./configs or the package's configs)
plus ``key.sub=value`` overrides."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from revjax.config import Config, ConfigError, load_config

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config(name: str) -> Path:
    """A config path as given, or a name under ./configs or the package's configs folder (``.yaml`` optional)."""
    path = Path(name)
    if path.is_file():
        return path
    for root in (Path("configs"), PACKAGE_CONFIGS):
        for candidate in (root / name, root / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config '{name}' was found neither as a file nor under configs/; give a path to a YAML file")


def config_files(args: argparse.Namespace, default: Sequence[str] = ()) -> list[Path]:
    return [find_config(name) for name in (args.config or default)]


def config_from_args(args: argparse.Namespace, default: Sequence[str] = ()) -> Config:
    return load_config(config_files(args, default), args.overrides)
