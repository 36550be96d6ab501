"""The job sandbox: what a job may see and do (docs/security.md, "Jobs run sandboxed").

``plan.py`` is the pure part (settings, which paths are shown, masked, or never shown;
the network policy), ``linux.py`` the kernel calls, ``cgroups.py`` one cgroup per job,
``setup.py`` the steps, once per supervising process and per job.
"""
