"""One module per algorithm: its config dataclass (``Config``) and ``build_job(cfg) -> Job``.

:mod:`jaxalign.algorithms.registry` is the table of them (name, config section, module).
"""

from jaxalign.algorithms.registry import ALGORITHMS, Algorithm, get, names, register

__all__ = ["ALGORITHMS", "Algorithm", "build_job", "get", "names", "register"]


def build_job(cfg):
    """The :class:`~jaxalign.train.loop.Job` of a loaded run config (``cfg.algorithm``), built
    under the run's logical-axis rules (``mesh.logical_axis_rules``)."""
    from jaxalign.parallel.rules import axis_rules

    with axis_rules(cfg.mesh.logical_axis_rules):
        if cfg.model.lora is None:
            return get(cfg.algorithm).build_job(cfg)
        from jaxalign.algorithms.lora import check_supported, lora_job

        check_supported(cfg)  # model.lora: only the adapters train (README: LoRA)
        return lora_job(get(cfg.algorithm).build_job(cfg), cfg)
