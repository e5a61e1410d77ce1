"""Kafka plumbing shared by the event producer and the analytics consumer."""
