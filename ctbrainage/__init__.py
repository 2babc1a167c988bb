"""ctbrainage: interpretable brain-age estimation from pediatric head CT.

A reproduction of Sawa et al. 2025 (lobe-wise perturbation of a 3D ResNet age regressor) with an
embedded synthetic pediatric head-CT cohort whose maturation schedule is known.
"""

__version__ = "0.1.0"
