"""The experiment configs the README shows load as written: a key renamed or dropped in the schema breaks this
test until the README follows (the examples folder has its own tests; the README's blocks had none)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiment_router import Router
from experiment_router.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def yaml_blocks(text: str) -> list[Any]:
    """The parsed ```yaml blocks of a Markdown text, in order."""
    return [yaml.safe_load(block) for block in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)]


def configs_of(blocks: list[Any]) -> list[dict[str, Any]]:
    """Each block as a whole config: a full one as is; a fragment (a list of experiments) under the defaults
    of the first full config, so that it is checked on its own keys."""
    full = [b for b in blocks if isinstance(b, dict) and "defaults" in b]
    configs = list(full)
    for block in blocks:
        if isinstance(block, list):
            assert full, "an experiment fragment without a full config to take the defaults from"
            configs.append({"version": 1, "defaults": full[0]["defaults"], "experiments": block})
    return configs


def test_every_yaml_block_of_the_readme_is_a_valid_experiment_config() -> None:
    configs = configs_of(yaml_blocks(README.read_text()))
    kinds = [e.get("kind", "ab") for c in configs for e in c["experiments"]]
    assert kinds == ["ab", "interleaving"]  # the minimal config and the interleaving fragment
    for config in configs:
        Router.from_dict(config)


def test_a_block_with_an_unknown_key_fails() -> None:
    text = "```yaml\ndefaults: {}\nexperiments: []\nlayers: 2\n```\n"
    with pytest.raises(ConfigError, match="layers"):
        for config in configs_of(yaml_blocks(text)):
            Router.from_dict(config)
