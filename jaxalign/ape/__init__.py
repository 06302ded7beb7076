"""APE, automatic prompt engineering (Zhou et al. 2022, "Large Language Models Are Human-Level
Prompt Engineers", arXiv:2211.01910): the model proposes instructions from demonstrations, they
are scored by the log-probability of the desired outputs (or by exact-match execution accuracy),
an adaptive multi-stage filter keeps the promising ones, and the best may be resampled.

Pure pieces: :mod:`~jaxalign.ape.filter` (NumPy), :mod:`~jaxalign.ape.templates` (strings),
:mod:`~jaxalign.ape.tasks` (the shipped tasks), :mod:`~jaxalign.ape.config` (no JAX). The model
side: :mod:`~jaxalign.ape.score`, :mod:`~jaxalign.ape.propose`; the pipeline:
:mod:`~jaxalign.ape.run` (``jaxalign ape --config configs/ape_smollm2.yaml``).
"""
