"""Imports every module that registers an activation or objective, so names resolve from configs.

Add one import line per new method module.
"""

# ruff: noqa: F401
