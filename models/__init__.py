"""Multi-task recommender models (DML, GRec, CSRec, SSMTL and their baselines): training, evaluation, export.

Importing the package registers every model family (the explicit imports below populate the registry).
"""

from models import baselines, csrec, dml, grec, sparse_sharing, ssmtl  # noqa: F401  (registration side effects)
from models.registry import create_model, list_models, model_kind, register_model

__all__ = ["create_model", "list_models", "model_kind", "register_model"]
