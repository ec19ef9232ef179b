"""The layer catalogue: importing this package registers every unit."""

from netc.compiler.layers import (  # noqa: F401
    activations,
    conv,
    data,
    inner_product,
    losses,
    pooling,
    structure,
)
