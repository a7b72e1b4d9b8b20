"""Perturbations: one spec, two interpreters.

`spec` holds the presets as data (`Preset` and its steps); `decisions` draws a sample's concrete
operations from a preset (pure, seeded); `cpu` applies them with OpenCV as the reference does (CPU
backend, `perturb`); `dali` builds the same preset as a DALI graph (DALI backend), with its
per-sample arithmetic and mirrored padding in `dali_nodes`.
"""
