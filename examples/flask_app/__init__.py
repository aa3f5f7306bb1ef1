"""A Flask app that enqueues a welcome-email workflow in its signup transaction."""
