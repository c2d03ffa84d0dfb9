"""YAML for configs and model cards, read strictly.

PyYAML's safe loader builds no objects, but it still accepts two things a config should
not carry: a repeated key (the last one silently wins, so a typo'd override of a section
goes unnoticed) and aliases that expand to a huge document (`&a [*a, *a, ...]` nested a
few levels is a few hundred bytes that walk as billions of nodes). Both are refused here
with the line to fix; anchors and aliases of ordinary size keep working.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from berg_scale.errors import ConfigError

MAX_NODES = 200_000  # far above any real config; a run config has a few hundred


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding one of base's keys is the point of merging
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it with its own message
            if first is not None:
                raise ConfigError(f"line {line}: key {key!r} is given twice (first on line {first}); keep one")
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Nodes the document has once every alias is expanded, without expanding it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"line {node.start_mark.line + 1}: an alias refers to the node that contains it")
        open_nodes.add(key)
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                break
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml(text: str, origin: str) -> Any:
    """Parse `text` (from `origin`, for messages) into plain Python data, or ConfigError."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise ConfigError(
                f"{origin}: its aliases expand to more than {MAX_NODES:,} values; a config "
                "this large is refused (write the values out, or reuse fewer nested aliases)"
            )
        return loader.construct_document(node)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(origin) else f"{origin}: {message}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply to read as a config") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).replace('"<unicode string>"', origin).split())
        raise ConfigError(f"{origin} is not valid YAML: {detail}") from None
    finally:
        loader.dispose()
