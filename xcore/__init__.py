"""xcore: a pure peer-to-peer, end-to-end encrypted storage network.

Importing this package has no side effects: no sockets, no threads, no
global state. See DESIGN.md for the layout.
"""

__version__ = "0.1.0"
