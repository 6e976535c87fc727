"""The one loader for the YAML files users write: config files, sweep files, and run folders' ``config.yaml``.

It is PyYAML's safe loader with two refusals PyYAML lacks:

* a key given twice in one mapping (PyYAML alone keeps the last one without a word);
* aliases that expand to more than :data:`MAX_NODES` values, or that refer to themselves. PyYAML shares an aliased
  node rather than copying it, so a nine-line "billion laughs" file loads at once — and then explodes in whatever
  walks the data (merging, JSON dumps, hashing). The expanded size is counted on the composed node graph, each node
  once, before anything is constructed, so such a file is refused in milliseconds with little memory.

Every refusal is raised as the caller's error class with one sentence that starts with the name the caller gives
(``config file /path/x.yaml``, ``sweep file ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from revjax.errors import RevjaxError

MAX_NODES = 100_000  # values of one document with every alias expanded; a real config has a few hundred


class YamlError(RevjaxError):
    """A YAML file that is refused: invalid, a key given twice, or aliases that expand too far."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int | None:
    """How many values ``root`` holds with every alias expanded (capped just above ``limit``), or None when an
    alias refers to a node that contains it. Each node is visited once, so the cost is that of the file's text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # nodes whose children are being counted: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        key = id(node)
        if counted:
            open_nodes.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(child)] for child in _children(node)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return None
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


class _Loader(yaml.SafeLoader):
    name: str
    error: type[Exception]

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        size = expanded_size(node)
        if size is None:
            raise self.error(f"{self.name} holds an alias that refers to a value containing it (a recursive "
                             "structure); write the value out instead")
        if size > MAX_NODES:
            raise self.error(f"{self.name} expands to more than {MAX_NODES:,} values through its aliases (the *name "
                             "references to &name anchors); write the values out or use fewer aliases")
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            key = (key_node.tag, key_node.value)
            if key in lines:
                raise self.error(f"{self.name} sets the key '{key_node.value}' twice, on lines {lines[key]} and "
                                 f"{line}; keep one of them (YAML would silently use the last)")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str, name: str, error: type[Exception] = YamlError) -> Any:
    """Like ``yaml.safe_load`` (invalid YAML still raises ``yaml.YAMLError``), with a key given twice and
    runaway or recursive aliases refused as ``error`` in one sentence starting with ``name``."""
    loader = _Loader(text)
    loader.name, loader.error = name, error
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path, name: str | None = None, error: type[Exception] = YamlError) -> Any:
    """A user-written YAML file's content; every refusal (invalid YAML included) is ``error`` in one sentence
    starting with ``name`` (default ``YAML file <path>``). Reading errors (``OSError``) are the caller's."""
    path = Path(path)
    name = name or f"YAML file {path}"
    text = path.read_text()
    try:
        return safe_load(text, name, error)
    except yaml.YAMLError as err:
        raise error(f"{name} is not valid YAML: {str(err).splitlines()[0]}") from None
