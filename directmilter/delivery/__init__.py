"""Delivery confirmation at run time: queueing MDNs and DSNs back through Postfix, tracking, timeouts, replays.

The pure parts (building and parsing MDNs and DSNs) live in :mod:`directmilter.notify`; the store in
:mod:`directmilter.tracking`. This package is the service that uses them from the milter.
"""
