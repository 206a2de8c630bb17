"""What the server and the sites agree on: the run configuration, the site settings and the message protocol.

Both ``server`` and ``client`` import this package; it imports neither (``common`` is the bottom layer).
"""
