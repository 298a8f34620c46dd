"""
The core: values (envelopes, queues, stream history), the client, the backplane
interface and the tracker. Nothing here knows about HTTP or WebSockets.

Private: applications import from L{appserver}.
"""
