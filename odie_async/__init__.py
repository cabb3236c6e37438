"""odie_async: bulk instruction-data generation for on-demand information extraction."""

from .exceptions import OdieError

__version__ = "0.1.0"

__all__ = ["OdieError", "__version__"]
