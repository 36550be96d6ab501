"""Executors: run one transformation (bash or Python) in a supervised child process.

``supervise(spec, job_root)`` is the one entry point every backend uses (the local
pool's workers directly, Dask and Slurm through ``node.roles.jobless.runner``).
"""

from .supervisor import become_subreaper, supervise

__all__ = ["become_subreaper", "supervise"]
