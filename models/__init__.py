"""Multi-task recommender models (DML, GRec, CSRec, SSMTL and their baselines): training, evaluation, export.

Importing the package registers every model family (explicit imports below populate the registry).
"""

from models import baselines, dml  # noqa: F401  (registration side effects)
from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
