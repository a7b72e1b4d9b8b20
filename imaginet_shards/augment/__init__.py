"""Perturbations: one spec, two interpreters.

`spec` holds the presets as data (`Preset` and its steps); `decisions` draws a sample's concrete
operations from a preset (pure, seeded); `noise` makes a noise operation's field; `cpu` applies
the operations with OpenCV as the reference does (CPU backend, `perturb`); `dali` builds the same
preset as a DALI graph that executes the host's draws (DALI backend), with its fed values,
per-sample arithmetic and mirrored padding in `dali_nodes`.
"""
