"""The analytics consumer group: Kafka events into per-user state (see ``processor``)."""
