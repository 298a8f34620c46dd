"""
The Redis backplane, by job. Imported only with C{--backplane redis://}.

Private: applications import from L{appserver}.
"""
