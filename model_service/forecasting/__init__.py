"""Forecasting: windows with a horizon, the quantile head, multi-step forecasts and rolling-origin backtests.

No grpc here: the servicer converts protos and calls these.
"""
