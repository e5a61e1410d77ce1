"""Deployment assets and the end-to-end demo (``python -m deploy.demo``)."""
