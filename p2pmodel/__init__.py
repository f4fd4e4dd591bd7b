"""p2pmodel: fetch a large AI model across the office's internet link once, share it on the LAN."""

__version__ = "0.1.0"
