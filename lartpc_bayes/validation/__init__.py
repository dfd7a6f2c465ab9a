"""Validation: reports (tables, figures) and the talk-000 / robustness / Hessian checks."""
