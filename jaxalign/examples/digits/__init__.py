"""RAFT on a non-text generator: a class-conditional diffusion model on scikit-learn's 8x8 digits.

RAFT's claim (Dong et al. 2023, arXiv:2304.06767, §5) is that reward-ranked fine-tuning aligns
any generative model; its vision example aligns Stable Diffusion so images match their prompts.
This package is that experiment at laptop scale, through the same generic RAFT core the text
algorithms use (:func:`jaxalign.algorithms.raft.raft_iteration`, its local / global
:class:`~jaxalign.algorithms.raft.Selection`) and the same train step and optimizer
(:func:`jaxalign.train.state.make_minibatch_step`, :func:`jaxalign.train.optim.make_optimizer`):

- :mod:`.data`: the digits, split in two halves: one trains the generator, the other the reward;
- :mod:`.diffusion`: DDPM noise schedule, the denoising loss, the DDIM sampler with
  classifier-free guidance (pure functions);
- :mod:`.denoiser`: the tiny class-conditional flax.nnx MLP that predicts the noise;
- :mod:`.reward`: P(prompted digit | image) under an 11-way classifier (a "not a digit" class)
  times a PCA-density gate, fitted on the other half, and the PCA realism check;
- :mod:`.pipeline`: pre-training, RAFT iterations, held-out evaluation;
- :mod:`.demo`: ``python -m jaxalign.examples.digits`` (``make demo-digits``): the report and a
  PNG grid.
"""
