"""LoRA adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``, the
tensors named as ``peft.PeftModel`` saves them for a causal LM
(``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight``, ``[r, in]``; ``lora_B``
``[out, r]``), so ``PeftModel.from_pretrained(base, dir)`` loads what jaxalign trained and
jaxalign starts from an adapter PEFT trained (``model.lora.adapter``).

A reward model (:class:`~jaxalign.models.heads.ScalarHeadModel`) is saved as PEFT saves a
``SEQ_CLS`` adapter: the same LoRA tensors (``*ForSequenceClassification`` keeps the decoder
under ``model.``) plus its full-rank head as a module to save, ``base_model.model.score.weight``
``[1, hidden]``, which PEFT puts over the base's fresh head when it loads the adapter onto
``AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)``."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model.model.layers"
_KIND = {"lora_a": "lora_A", "lora_b": "lora_B"}
_HEAD = "base_model.model.score.weight"


def _score_head(model):
    """The reward model's head ``Linear`` (``score``), or None for a causal LM."""
    return model.score if hasattr(model, "score") and hasattr(model, "backbone") else None


def _adapter_layers(model):
    from jaxalign.models.lora import targeted

    return [(".".join(path), lin) for path, lin in targeted(model) if lin.lora_a is not None]


def save_peft(model, out_dir, *, base_model: str | None = None) -> Path:
    """Write the adapters of ``model`` (a :class:`~jaxalign.models.llama.CausalLM` with adapters,
    or a reward model: its head too, see the module docstring) as a PEFT LoRA adapter
    directory; returns it."""
    from safetensors.numpy import save_file

    layers = _adapter_layers(model)
    if not layers:
        raise JaxalignError("the model has no LoRA adapters to save")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, lin in layers:
        for attr, kind in _KIND.items():
            arr = np.asarray(jax.device_get(getattr(lin, attr)[...]))
            for i in range(arr.shape[0]):
                tensors[f"{_PREFIX}.{i}.{name}.{kind}.weight"] = np.ascontiguousarray(arr[i])
    head = _score_head(model)
    if head is not None:
        tensors[_HEAD] = np.ascontiguousarray(np.asarray(jax.device_get(head.weight[...])))
    rank = layers[0][1].lora_a.shape[1]
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if head is None else "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": int(rank), "lora_alpha": float(layers[0][1].lora_scale * rank), "lora_dropout": 0.0,
        "target_modules": sorted({name.split(".")[-1] for name, _ in layers}), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "modules_to_save": None if head is None else ["score"],
        "init_lora_weights": True,
    }
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out_dir


def read_peft_config(path) -> dict:
    """``adapter_config.json`` of a PEFT adapter directory, checked to be a plain LoRA adapter
    jaxalign can load; errors name the file and the field."""
    cfg_path = Path(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise JaxalignError(f"{path}: not a PEFT adapter directory (no {CONFIG_NAME})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise JaxalignError(f"{cfg_path}: not valid JSON ({e})") from None
    checks = (("peft_type", "LORA"), ("use_rslora", False), ("fan_in_fan_out", False), ("bias", "none"),
              ("use_dora", False))
    for key, want in checks:
        if cfg.get(key, want) != want:
            raise JaxalignError(f"{cfg_path}: field {key!r} is {cfg.get(key)!r}; jaxalign loads {key}={want!r} only")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise JaxalignError(f"{cfg_path}: field {key!r} is missing")
    return cfg


def _read_tensors(path) -> tuple[Path, dict]:
    """``(weights file, {PEFT name: array})`` of an adapter directory, adapter names (``.default.``)
    dropped as PEFT drops them when it saves."""
    from safetensors.numpy import load_file

    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise JaxalignError(f"{path}: no {WEIGHTS_NAME}")
    return weights, {k.replace(".default.", "."): v for k, v in load_file(str(weights)).items()}


def _assign(var, value) -> None:
    """``var[...] = value`` in ``var``'s dtype, on ``var``'s sharding when it has one."""
    arr = jnp.asarray(value, var[...].dtype)
    sharding = getattr(var[...], "sharding", None)
    var[...] = arr if sharding is None else jax.device_put(arr, sharding)


def load_peft(model, path, *, skip_head: bool = False) -> None:
    """Set the adapters of ``model`` (built with the adapter's rank and targets, see
    :func:`jaxalign.models.lora.add_lora`) from the PEFT adapter directory ``path``, in place;
    a reward model's head too when the adapter holds one (a ``SEQ_CLS`` adapter). ``skip_head``:
    leave that head to :func:`load_peft_head` (the reward model is built around ``model``
    afterwards); without it, a head tensor and a model without a head is an error."""
    weights, tensors = _read_tensors(path)
    n = model.config.num_hidden_layers
    used = set()
    for name, lin in _adapter_layers(model):
        for attr, kind in _KIND.items():
            var = getattr(lin, attr)
            rows = []
            for i in range(n):
                key = f"{_PREFIX}.{i}.{name}.{kind}.weight"
                if key not in tensors:
                    raise JaxalignError(f"{weights}: tensor {key!r} is missing")
                if tensors[key].shape != var.shape[1:]:
                    raise JaxalignError(f"{weights}: tensor {key!r} has shape {tensors[key].shape}, the model "
                                        f"expects {tuple(var.shape[1:])}")
                rows.append(tensors[key])
                used.add(key)
            _assign(var, np.stack(rows))
    if _HEAD in tensors and skip_head:
        used.add(_HEAD)  # the caller puts it on the reward model's head (load_peft_head)
    elif _HEAD in tensors and _score_head(model) is not None:
        _set_head(model, tensors[_HEAD], weights)
        used.add(_HEAD)
    extra = sorted(set(tensors) - used)
    if extra:
        raise JaxalignError(f"{weights}: {len(extra)} tensors this model has no adapter for, e.g. {extra[0]!r} "
                            "(adapters on other modules are not supported)")


def _set_head(model, value, where) -> None:
    head = _score_head(model)
    want = tuple(head.weight.shape)
    if value.shape != want:
        raise JaxalignError(f"{where}: tensor {_HEAD!r} has shape {value.shape}, the reward model's head "
                            f"expects {want}")
    _assign(head.weight, value)


def load_peft_head(model, path) -> bool:
    """Set the reward model ``model``'s head from the PEFT adapter directory ``path`` (a
    ``SEQ_CLS`` adapter's ``score`` module to save), in place; False if the adapter has none."""
    weights, tensors = _read_tensors(path)
    if _HEAD not in tensors:
        return False
    _set_head(model, tensors[_HEAD], weights)
    return True
