"""The layer catalogue: importing this package registers every unit.

Each module in this folder holds one or a few small layer units; they are found here, so adding a
layer type means adding a module (or a class to one) — nothing else to edit."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
