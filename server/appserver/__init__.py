"""
appserver: a real-time application server on Twisted and Autobahn.

One reactor, one shared L{ClientTracker}, three ways for a browser to talk to
Python: static pages, JSON/JSONP Ajax (with a long-poll transport), and
WebSocket push. Applications are written against L{App}.

This module is the public API: applications, the bundled apps and the docs
import only from here. Everything under C{appserver._*} is private and may
change without notice (docs/architecture.md shows how it fits together).
"""

from appserver._core.client import Client
from appserver._core.envelope import Envelope, ProtocolError
from appserver._core.names import validate_channel_name, validate_room_name, validate_username
from appserver._core.tracker import ClientTracker
from appserver._server.app import App, Context, HTTPError, RouteRequest
from appserver._server.settings import Settings
from appserver._version import __version__
from appserver._web.websocket import TrackedProtocol
from appserver.tap import build_service

__all__ = ["App", "Context", "HTTPError", "RouteRequest", "Client", "ClientTracker", "Envelope",
           "ProtocolError", "Settings", "TrackedProtocol", "build_service",
           "validate_channel_name", "validate_room_name", "validate_username"]
