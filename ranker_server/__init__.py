"""ranker_server package."""
