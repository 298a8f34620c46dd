"""
appserver: a real-time application server on Twisted and Autobahn.

One reactor, one shared L{ClientTracker}, three ways for a browser to talk to
Python: static pages, JSON/JSONP Ajax (with a long-poll transport), and
WebSocket push. Applications are written against L{App}.
"""

from .app import App, Context, HTTPError, RouteRequest
from .client import Client
from .envelope import Envelope, ProtocolError
from .settings import Settings
from .tracker import ClientTracker

__all__ = ["App", "Context", "HTTPError", "RouteRequest", "Client", "ClientTracker", "Envelope",
           "ProtocolError", "Settings"]
__version__ = "0.1.0"
