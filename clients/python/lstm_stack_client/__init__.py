"""Python client for lstm-stack: the scaler and model gRPC services, numpy in and numpy out.

from lstm_stack_client import connect, model_spec

with connect(scaler_address="127.0.0.1:50051", model_address="127.0.0.1:50052") as stack:
    info = stack.scaler.fit(x_train, "robust")
    run = stack.model.train(model_spec("lstm:16:relu", timesteps=3), x, y, epochs=50)
    model = run.result()
    print(stack.model.predict(model.id, [[50, 60, 70]]).values)
    # Data of any size: uploaded in chunks (a .npy is memory-mapped), trained on by reference.
    data = stack.datasets.upload_series(np.load("minutes.npy", mmap_mode="r"), ["load", "temp"])
    stack.model.train(spec, dataset=data.id, target_columns=["load"], epochs=5).result()
"""

from .channels import channel_credentials, open_channel
from .client import (
    DEFAULT_MODEL_ADDRESS,
    DEFAULT_SCALER_ADDRESS,
    DEFAULT_TIMEOUT,
    DEFAULT_TRAIN_TIMEOUT,
    MAX_MESSAGE_BYTES,
    NO_RETRY,
    Backtest,
    BacktestWindow,
    DatasetClient,
    Evaluation,
    FitTransformResult,
    Forecast,
    LstmStackClient,
    LstmStackError,
    ModelClient,
    Prediction,
    RetryPolicy,
    ScalerClient,
    TrainingCancelled,
    TrainRun,
    connect,
)
from .specs import SpecError, load_model_spec, model_spec, parse_layers, scaler_spec

__all__ = [
    "DEFAULT_MODEL_ADDRESS",
    "DEFAULT_SCALER_ADDRESS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TRAIN_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "DatasetClient",
    "NO_RETRY",
    "Backtest",
    "BacktestWindow",
    "Evaluation",
    "FitTransformResult",
    "Forecast",
    "LstmStackClient",
    "LstmStackError",
    "ModelClient",
    "Prediction",
    "RetryPolicy",
    "ScalerClient",
    "SpecError",
    "TrainRun",
    "TrainingCancelled",
    "channel_credentials",
    "connect",
    "load_model_spec",
    "model_spec",
    "open_channel",
    "parse_layers",
    "scaler_spec",
]
