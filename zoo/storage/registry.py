"""Registry of zoo architectures: every entry is a LightningCLI config in ``zoo/configs/``.

An entry's name is its config's file name with dashes (``ptb_lstm_small.yaml`` -> ``ptb-lstm-small``).
The config is the single source of truth: ``rnnzoo fit --config`` trains it, and ``create_model``
builds the same network from its ``model.init_args`` without importing Lightning.
"""

import inspect
from pathlib import Path

import yaml
from torch import nn

from zoo.common import tasks

CONFIG_DIR = Path(__file__).parents[1] / "configs"


def list_models() -> list[str]:
    """Names of all zoo entries, sorted."""
    return sorted(p.stem.replace("_", "-") for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name.replace('-', '_')}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown zoo model {name!r}; available: {', '.join(list_models())}")
    return path


def model_config(name: str) -> tuple[type[nn.Module], dict]:
    """The architecture class and its keyword arguments, as the entry's config trains it."""
    config = yaml.safe_load(config_path(name).read_text())
    architecture = tasks.get(config["model"]["class_path"].rpartition(".")[2]).load("architecture")
    accepted = inspect.signature(architecture).parameters
    kwargs = {k: v for k, v in config["model"].get("init_args", {}).items() if k in accepted}
    return architecture, kwargs


def create_model(name: str, **overrides) -> nn.Module:
    """Build the untrained network of zoo entry ``name``; ``overrides`` replace config values.

    Sizes the config leaves to the data (e.g. ``vocab_size``) must be given as overrides.
    """
    architecture, kwargs = model_config(name)
    kwargs.update(overrides)
    missing = [
        p.name
        for p in inspect.signature(architecture).parameters.values()
        if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise TypeError(f"create_model({name!r}) needs {', '.join(missing)} (set by the data at training time)")
    return architecture(**kwargs)
