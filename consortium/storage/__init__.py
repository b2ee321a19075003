"""Persistence of the aggregator: SQLAlchemy models, the database extension, the blob store."""
