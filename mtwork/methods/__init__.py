"""Methods: importing this package registers every method in ``METHODS`` (see ``mtwork.methods.base``)."""
from mtwork.methods import lora, lv_adapter, multiscale_adapter  # noqa: F401  (imported for registration)
from mtwork.methods.base import METHODS, create_method

__all__ = ["METHODS", "create_method"]
