"""An import of a Keras archive in domain terms, and what admitting it costs (no Keras here: serving
processes check these before they hand the archive to the trainer process, importing.py)."""

from __future__ import annotations

from dataclasses import dataclass

from model_service.affine_scalers import AffineScaler
from model_service.cost import Admission, Estimate, mib
from model_service.spec import Head, Optimizer

# Loading holds, per byte of the archive: the bytes received, the temp file's page cache, the loaded
# weights, the service-built copy and the archive saved from it, with room for Keras' own copies.
IMPORT_BYTES_FACTOR = 6


@dataclass(frozen=True)
class ImportRequest:
    """An import in domain terms: the archive, the head it must end in, optional declared input/scalers."""

    model_id: str
    head: Head
    data: bytes
    timesteps: int = 0  # 0 = whatever the model says
    features: int = 0
    optimizer: Optimizer = Optimizer()
    x_scaler: AffineScaler | None = None
    y_scaler: AffineScaler | None = None


def estimate(nbytes: int) -> Estimate:
    """The memory an import of ``nbytes`` takes while it is checked and converted."""

    def explain() -> str:
        return f"{nbytes} bytes of archive x {IMPORT_BYTES_FACTOR} (received, loaded, rebuilt, saved)"

    return Estimate(f"importing a {mib(nbytes)} Keras archive", nbytes * IMPORT_BYTES_FACTOR, explain)


def check_size(admission: Admission | None, nbytes: int) -> None:
    """ResourceExhausted as soon as the bytes received so far could not be imported within the budget."""
    if admission is not None:
        admission.untracked().reserve(estimate(nbytes), "import a smaller model")
