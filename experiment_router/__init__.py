"""experiment_router package."""
