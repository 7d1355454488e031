"""The Tensor codec lives in the client distribution (lstm_stack_client.codec), which the services
depend on; this module keeps the services' imports (``from service_common import codec``) working."""

from __future__ import annotations

from lstm_stack_client.codec import (
    MAX_ELEMENTS,
    MAX_RANK,
    SUPPORTED,
    from_numpy,
    from_numpy_values,
    require_finite,
    require_representable,
    to_float_array,
    to_numpy,
    uses_values,
)

__all__ = [
    "MAX_ELEMENTS",
    "MAX_RANK",
    "SUPPORTED",
    "from_numpy",
    "from_numpy_values",
    "require_finite",
    "require_representable",
    "to_float_array",
    "to_numpy",
    "uses_values",
]
