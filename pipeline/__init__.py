"""Bottleneck Pipeline: frozen-CNN features in HDF5, cheap classifiers on top, run by DVC."""

__version__ = "0.1.0"
