"""Baseline backbones (single-task, shared-bottom, MMoE, PLE, MSSM), registered under their names.

``BACKBONES`` maps each name to its (model class, config class) so that ``models.dml`` can register a
``+dml`` variant (and the ablations) for every one of them.
"""

from __future__ import annotations

from torch import nn

from models.base import make_builder
from models.baselines.config import BackboneConfig
from models.baselines.mmoe import MMoE, MMoEConfig
from models.baselines.mssm import MSSM, MSSMConfig
from models.baselines.ple import PLE, PLEConfig
from models.baselines.shared_bottom import SharedBottom
from models.baselines.single_task import SingleTask
from models.registry import register_model

BACKBONES: dict[str, tuple[type[nn.Module], type[BackboneConfig]]] = {
    "single-task": (SingleTask, BackboneConfig),
    "shared-bottom": (SharedBottom, BackboneConfig),
    "mmoe": (MMoE, MMoEConfig),
    "ple": (PLE, PLEConfig),
    "mssm": (MSSM, MSSMConfig),
}

for _name, (_model_cls, _config_cls) in BACKBONES.items():
    register_model(_name)(make_builder(_model_cls, _config_cls))

__all__ = ["BACKBONES", "MMoE", "MSSM", "PLE", "SharedBottom", "SingleTask"]
