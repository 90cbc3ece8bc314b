"""pyfpm: the FastCGI Process Manager for Python."""

__version__ = "0.1.0"
