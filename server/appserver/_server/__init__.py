"""
Settings, the runtime that wires the core together, admission and dispatch.

Private: applications import from L{appserver}.
"""
