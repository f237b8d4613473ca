"""Dataset loading for deqnca."""
from .idx import DataError, load_mnist, load_split, read_idx

__all__ = ["DataError", "load_mnist", "load_split", "read_idx"]
