"""
The C{twistd appserver} plugin.

Kept to a single L{ServiceMaker} naming its module as a string so that loading
the plugin (which twistd does for every plugin at every start) imports nothing
of appserver's and, above all, not the reactor.
"""

from twisted.application.service import ServiceMaker

appserver = ServiceMaker(
    "appserver",
    "appserver.tap",
    "Real-time application server: static files, JSON/JSONP Ajax, WebSocket push.",
    "appserver",
)
