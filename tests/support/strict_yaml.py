"""YAML loading that refuses a mapping with a key twice. PyYAML keeps the last value silently,
and a template that renders `ports:` twice loses the first list without a word from helm,
kubectl or the API server's client-side apply; the chart tests parse with this instead."""
from __future__ import annotations

import yaml


class DuplicateKey(ValueError):
    pass


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise DuplicateKey(f"key {key!r} twice in one mapping at {key_node.start_mark}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all_strict(text: str) -> list:
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d]
