"""raylab: audit medical image classifiers for universal adversarial perturbations made from natural images.

Reproduces and scales Minagi, Hirano & Takemoto, "Natural Images Allow Universal
Adversarial Attacks on Medical Image Classification Using Deep Neural Networks
with Transfer Learning", J. Imaging 2022.
"""

__version__ = "0.1.0"
