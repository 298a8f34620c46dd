"""
Sites and transports: framing only, over the runtime.

Private: applications import from L{appserver}.
"""
