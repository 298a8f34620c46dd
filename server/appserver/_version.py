"""
appserver's version, in one place: the package metadata (setup.cfg) and
C{appserver --version} both read it.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
