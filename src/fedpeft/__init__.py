"""fedpeft: federated, parameter-efficient fine-tuning of code and text language models."""

__version__ = "0.1.0"
