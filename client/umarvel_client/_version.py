"""The client's version: the server release it was made with (tests hold them equal)."""

__version__ = "0.1.0"
