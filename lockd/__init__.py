"""lockd: record a Python/CUDA environment into a signed manifest and verify targets against it."""

__version__ = "0.1.0"
