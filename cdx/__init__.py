"""cdx: distill a latent diffusion model into a one-step consistency student and ship it on-device."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cdx")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
