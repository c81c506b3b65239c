"""The bundled presets: YAML files in ``crobim/presets/`` that only set fields of ``CroBIMConfig``."""

from __future__ import annotations

from importlib import resources

from crobim.config.crobim_config import CroBIMConfig

__all__ = ["get_preset", "list_presets"]


def list_presets() -> list[str]:
    """Names of the bundled presets (``crobim/presets/*.yaml``)."""
    folder = resources.files("crobim") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def get_preset(name: str) -> CroBIMConfig:
    """The config of a bundled preset.

    Args:
        name: a preset name such as ``"crobim-tiny"`` (see ``list_presets()``).

    Returns:
        A fresh ``CroBIMConfig``.

    Raises:
        KeyError: if no preset has that name.
    """
    import yaml

    presets = list_presets()
    if name not in presets:
        raise KeyError(f"unknown CroBIM preset {name!r}; available presets: {presets}")
    text = (resources.files("crobim") / "presets" / f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    data.setdefault("name", name)
    return CroBIMConfig.from_dict(data)
