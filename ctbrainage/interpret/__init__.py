"""Interpretation methods on a model and tensors: attribution maps, lobe-wise perturbation and
U-Noise.
"""
