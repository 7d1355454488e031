"""The seed walkthrough (`make run` / `python -m demo`): both seed examples through the Python client."""
