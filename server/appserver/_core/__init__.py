"""
The core, bottom to top: values (envelopes, outbound queues, bounds, event
hooks, names, the stream log with its per-stream history), the client, the
backplane interfaces, the memory backplane and the tracker. Nothing here
knows about HTTP or WebSockets, and nothing imports from above.

Private: applications import from L{appserver}.
"""
