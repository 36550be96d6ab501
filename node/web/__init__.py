"""HTTP plumbing shared by every role: the app class, body reading, JSON answers."""
