"""Benchmarks of hpclaunch against torchrun and DeepSpeed's launcher (issue 7).

A package only so that ``benchmarks/run.py`` and its helpers import each other by one name
whether run as a script or imported by the smoke test; nothing here is installed.
"""
