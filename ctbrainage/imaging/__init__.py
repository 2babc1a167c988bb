"""Imaging I/O and preprocessing: CT readers and NIfTI writers, the paper's preprocessing, and
a run's per-subject arrays. Imports only :mod:`ctbrainage.core`.
"""
