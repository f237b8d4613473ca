"""Dataset loading for deqnca."""
from deqnca.data.idx import DataError, load_mnist, load_split, read_idx

__all__ = ["DataError", "load_mnist", "load_split", "read_idx"]
