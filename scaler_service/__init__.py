"""The scaler service: fits scikit-learn scalers on training data only, as immutable versions."""
