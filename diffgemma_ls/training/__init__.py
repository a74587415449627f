"""Training the shipped code model: examples and objective (``model/train.py``, ``diffgemma-ls tune``)."""
