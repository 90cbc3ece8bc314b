"""pyfpm: the FastCGI Process Manager for Python."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from fpm import finish_request` loads the extension only when asked: setup.py and
    # the CLI import this package before anything is built or forked.
    if name == "finish_request":
        from fpm._worker import finish_request
        return finish_request
    raise AttributeError("module 'fpm' has no attribute %r" % name)
