"""A version's serving graph (model_service/serving_graph.py) in an ONNX Runtime session.

One thread per ``run``: a serving process runs many small passes side by side (one per served model,
plus the event loop), so ONNX Runtime's own thread pools would only compete with them for the cores.
ONNX Runtime releases the GIL while it runs, so a pass on a batcher thread never holds up the loop.

Domain code: no grpc, no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from service_common.errors import IntegrityError

INPUT_NAME = "x"


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # An arena per session keeps the largest batch it ever ran; thousands of mostly idle sessions
    # would each hold theirs. Without it, a pass's buffers go back to malloc when it ends.
    options.enable_cpu_mem_arena = False
    # Nothing to spin for with one thread: a spinning pool only burns the core the loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initializers are not the caller's business
    return options


_OPTIONS = _options()


class GraphSession:
    """One serving graph, ready to run. ``output`` is the graph output ``run`` answers with."""

    def __init__(self, graph: bytes, output: str, where: str) -> None:
        try:
            self._session = ort.InferenceSession(graph, _OPTIONS, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - anything ONNX Runtime refuses is a bad artifact
            raise IntegrityError(f"{where}: ONNX Runtime refused its serving graph ({exc})") from exc
        names = [o.name for o in self._session.get_outputs()]
        if output not in names:
            raise IntegrityError(f"{where}: its serving graph has outputs {names}, expected {output!r}")
        self._outputs = [output]
        self.size = len(graph)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x``: float64 (rows, timesteps, features) in raw units, C-contiguous."""
        result: np.ndarray = self._session.run(self._outputs, {INPUT_NAME: x})[0]
        return result
