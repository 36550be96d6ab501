"""The jobless role: runs transformations (see docs/jobless.md)."""
