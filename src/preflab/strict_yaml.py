"""Strict YAML for preflab's config files and the saved config.yaml of a run: yaml.SafeLoader (no tags) with duplicate
keys refused (plain YAML keeps the last value silently) and aliases bounded (an anchor/alias bomb needs many)."""
from __future__ import annotations

import yaml

from preflab.errors import ConfigError

MAX_ALIASES = 100              # YAML aliases per document


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no tags) that refuses duplicate keys and more than MAX_ALIASES aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases (*name); a config needs few, an alias bomb "
                                  "many. Write the values out.")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the constructor reports it
                break
            if first is not None:
                raise ConfigError(f"duplicate key {key!r} (lines {first} and {key_node.start_mark.line + 1}); "
                                  "YAML would keep only the last value. Keep one.")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """Safe YAML (no tags) with duplicate keys refused and aliases bounded."""
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - BoundedLoader is a SafeLoader
