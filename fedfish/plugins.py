"""User code by name: a registry entry, or ``"package.module:attribute"``.

Flower names its app components this way (``serverapp = "pkg.module:app"``); FedFish names
models, datasets, mask sources and update rules the same way, so a user's code needs no
change to the package, and every process (server, Ray workers, SuperNodes) resolves the
same string to the same object.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def resolve(name: str, registry: Mapping[str, T], what: str) -> T | object:
    """``registry[name]``, else the attribute a ``"package.module:attribute"`` path names.

    Parameters
    ----------
    name : str
        A registered name or an import path.
    registry : Mapping[str, T]
        Registered objects by name.
    what : str
        What is being looked up ("model", "mask source", ...), for the error message.

    Raises
    ------
    ValueError
        Naming the unknown name (with the registered ones), the module that does not import,
        or the missing attribute.
    """
    if name in registry:
        return registry[name]
    if ":" not in name:
        raise ValueError(f"unknown {what} {name!r}; registered: {sorted(registry)}, or give 'package.module:attribute'")
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - ImportError, or whatever the module raises on import
        raise ValueError(f"{what} {name!r}: cannot import {module_name!r}: {type(err).__name__}: {err}") from err
    if not hasattr(module, attribute):
        raise ValueError(f"{what} {name!r}: {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)
