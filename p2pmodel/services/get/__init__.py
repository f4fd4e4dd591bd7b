"""One get, for every front end (see docs/architecture.md, "Flow of one get").

``request``: what a front end asks and gets back (plain data, light imports); ``flow``: carrying
out the one ``core.resolve`` decision of a get, fetching and linking (and the CLI's fast path,
which imports nothing heavy); ``service``: ``GetService``, the one runner; ``reader``: reading a
blob while it arrives (the HF endpoint). This package's own import stays light: the fast path
of ``get`` goes through it.
"""

from .request import GetRequest, GetResult

__all__ = ["GetRequest", "GetResult"]
