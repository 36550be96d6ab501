"""seamless-node: the deployment backbone for Seamless content-addressed computation."""

__version__ = "0.1.0"
