"""Applications shipped with appserver: the default chat and the demo gallery."""
