"""Multi-task recommender models (DML, GRec, CSRec, SSMTL and their baselines): training, evaluation, export."""

from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
