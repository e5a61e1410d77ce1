"""Experiment router: GrowthBook-conformant assignment of users to model variants per stage.

router = Router.from_file("experiments.yaml")
assignments = router.assign("user-42", {"country": "NL"})
"""

from experiment_router.errors import ConfigError, RouterError
from experiment_router.router import Arm, Assignment, Interleaving, Payload, Router
from experiment_router.sticky import InMemoryStickyBucketStore, StickyBucketStore

__all__ = [
    "Arm",
    "Assignment",
    "ConfigError",
    "InMemoryStickyBucketStore",
    "Interleaving",
    "Payload",
    "Router",
    "RouterError",
    "StickyBucketStore",
]
