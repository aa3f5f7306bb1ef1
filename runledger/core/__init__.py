"""The pure core: specs, builders, validation, statuses. No database, no threads, no clock."""
