"""inflora: diagnose where gradient flow is suppressed in a pretrained Transformer, then adapt only there."""
from .errors import InfloraError

__version__ = "0.1.0"
__all__ = ["InfloraError", "__version__"]
