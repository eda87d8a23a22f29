"""bonn-serve runtime: the .bonn format, the bit-packed XNOR engine and the BentoML service. Never imports torch."""

from .format import BonnFormatError, read_bonn

__version__ = "0.1.0"
__all__ = ["Engine", "BonnFormatError", "read_bonn", "__version__"]


def __getattr__(name: str):
    if name == "Engine":  # lazy: importing the package must not require the compiled extension
        from .engine import Engine

        return Engine
    raise AttributeError(name)
