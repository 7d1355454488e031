"""Training: a request is prepared (request.py), then a job (jobs.py) runs its steps on a worker thread:
fit the scalers on the training split (scalers.py), fit the model (fitting.py), score the time-ordered
holdout (holdout.py), publish the version (publish.py)."""

from model_service.training.fitting import Progress, dataset, fit_model
from model_service.training.jobs import TrainingJob, TrainingManager
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
    "Progress",
    "Publisher",
    "TrainEvent",
    "TrainInput",
    "TrainOptions",
    "TrainStarted",
    "TrainingJob",
    "TrainingManager",
    "dataset",
    "fit_model",
    "prepare",
]
