"""Storage layer: SQLAlchemy 2.0 async models, engine, repositories."""
