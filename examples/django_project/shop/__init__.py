"""The shop app: orders, the jobs that confirm them, and the task that sends receipts."""
