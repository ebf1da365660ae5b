"""hpclaunch: a per-node launcher for distributed PyTorch on HPC clusters.

Kept free of imports: the plain launch path must start in a small multiple of bare Python.
"""

__version__ = "0.1.0"
