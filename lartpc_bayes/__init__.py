"""Bayesian calibration of pixelated LArTPCs through a differentiable detector model.

segments -> :mod:`charge` -> :mod:`readout` (simulate); hits -> :mod:`likelihood` ->
:func:`calibration_model` -> :mod:`inference` -> :mod:`results` (infer). See README.md.
"""

from .model import CalibrationProblem, build_problem, calibration_model

__all__ = ["CalibrationProblem", "build_problem", "calibration_model"]
