"""CUDA C++ sources of specsample, shipped as package data (found with importlib.resources)."""
