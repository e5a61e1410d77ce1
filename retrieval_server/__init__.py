"""retrieval_server package."""
