"""The model registry's names: the networks every stage can build, train, map and cross-validate (:data:`ARCHITECTURES`;
their builders are in :mod:`lithocore.model`), how reports name them, and the key a trained model's files are named by.
Framework-free: choosing or naming a model starts no deep-learning framework."""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "DISPLAY_NAMES", "display_name", "model_name"]

#: The models every stage can build, train, map and cross-validate by name.
ARCHITECTURES = {
    "fcn8s_paper": "the paper's FCN-8s exactly (Table 1: full VGG-19 widths, fc 4096, Table 1's decoder)",
    "fcn8s": "FCN-8s with a width multiplier, Long et al.'s bilinear decoder and optional group normalisation",
    "unet": "a U-Net (five levels, skips by concatenation, bilinear upsampling) with optional group normalisation",
}


#: How the notebooks and reports name each model.
DISPLAY_NAMES = {"fcn8s_paper": "FCN-8s (Table 1)", "fcn8s": "FCN-8s", "unet": "U-Net"}


def display_name(architecture: str) -> str:
    """The name a notebook shows for an architecture ("U-Net", "FCN-8s", ...)."""
    return DISPLAY_NAMES.get(architecture, architecture)


def model_name(meta_or_config: dict) -> str:
    """The registry key of a saved model (``"unet"``, ``"fcn8s"``, ``"fcn8s_paper"``): what its files, scores and
    results are named by. Takes a ``model.json`` or a configuration.

    >>> model_name({"config": {"architecture": "unet"}}), model_name({"architecture": "fcn8s_paper"})
    ('unet', 'fcn8s_paper')
    """
    config = meta_or_config.get("config", meta_or_config)
    return config.get("architecture") or "fcn8s"  # models saved before the registry were FCN-8s
