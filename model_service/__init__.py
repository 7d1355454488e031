"""The model service: declares, trains and serves stacked Keras LSTMs, scaled by the scaler service."""
