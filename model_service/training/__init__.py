"""Training: a request is prepared (request.py), then a job (jobs.py) runs its steps on a worker thread:
fit the scalers on the training split (scalers.py), fit the model (fitting.py), score the time-ordered
holdout (holdout.py), make and check the serving graph (graph.py), publish the version (publish.py).

Only the request types are exported here: serving processes parse Train requests without TensorFlow,
which jobs.py and fitting.py import (the trainer process only).
"""

from model_service.training.request import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_PATIENCE,
    DatasetOptions,
    DatasetRequest,
    Prepared,
    Publisher,
    TrainEvent,
    TrainInput,
    TrainOptions,
    TrainStarted,
    prepare,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DatasetOptions",
    "DatasetRequest",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_PATIENCE",
    "Prepared",
    "Publisher",
    "TrainEvent",
    "TrainInput",
    "TrainOptions",
    "TrainStarted",
    "prepare",
]
