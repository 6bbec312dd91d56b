"""b2cal: automated calibration of a particle-physics detector (Belle II model)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("b2cal")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
