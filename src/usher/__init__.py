"""usher: a load balancer written in Python."""

from usher import native

__version__ = "0.1.0"

# Before any other usher module is imported: it decides whether they load compiled or as source.
_mode = native.install()


def compiled() -> bool:
    """True when this process runs the mypyc-compiled hot path, False when it runs pure Python."""
    return _mode.compiled


def build_mode() -> str:
    """The mode in words, e.g. `compiled (mypyc, 10 modules)` or `pure Python (USHER_PURE=1)`."""
    return str(_mode)
