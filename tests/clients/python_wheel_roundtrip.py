"""Run by tests/clients/test_python_client_wheel.py with the interpreter of a virtualenv that holds the
lstm-stack-client wheel alone: a live round trip through the installed client, printed as JSON."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from lstm_stack_client import connect, model_spec

from protos.lstm_stack.v1 import model_pb2

WINDOW, HORIZON = 6, 2
SERIES = 10 + 3 * np.sin(2 * np.pi * np.arange(60) / WINDOW)


def main(scaler_address: str, model_address: str) -> None:
    out: dict[str, object] = {}
    with connect(scaler_address=scaler_address, model_address=model_address, timeout=60) as stack:
        stack.model.wait_until_serving(30)
        info = stack.scaler.fit(np.array([[1.0, 2, 3], [40, 50, 60]]), "minmax")
        out["fit"] = {"id": info.id, "version": info.version, "data_max": list(info.statistics.data_max)}
        spec = model_spec("lstm:4", timesteps=WINDOW, features=1)
        run = stack.model.train(spec, series=SERIES, window=WINDOW, horizon=HORIZON, epochs=2, seed=1)
        model = run.result()
        out["train"] = {
            "id": model.id,
            "version": model.version,
            "state": model_pb2.ModelState.Name(model.state),
        }
        prediction = stack.model.predict(model.id, SERIES[:WINDOW].reshape(1, WINDOW, 1))
        out["predict"] = np.asarray(prediction.values).tolist()
        forecast = stack.model.forecast(model.id, SERIES[:30])
        out["forecast"] = {"horizon": forecast.horizon, "shape": list(forecast.point.shape)}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            exported = stack.model.export(model.id, path)
            out["export"] = {"size_bytes": exported.size_bytes, "file_bytes": path.stat().st_size}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
