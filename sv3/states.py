"""Port states shared by the master and the workers; imports nothing from sv3.

A port's life (the worker reports each change to the master):

    NEGOTIATING --(vrings 0 and 1 started)--> ACTIVE
    ACTIVE --(GET_VRING_BASE / ring disabled)--> NEGOTIATING
    NEGOTIATING | ACTIVE --(bad guest ring)--> BROKEN
    BROKEN --(front-end restarts the rings: GET_VRING_BASE)--> NEGOTIATING
    any --(connection closed / worker exit)--> GONE (master removes the port)

An uplink (sv3/nic_worker.py) is ACTIVE while its link is up and
LINK_DOWN while it is down (frames for it are dropped and counted).

Forbidden: BROKEN -> ACTIVE directly (a broken ring is never touched again
until the front-end stops and restarts it).
"""
NEGOTIATING = "negotiating"
ACTIVE = "active"
BROKEN = "broken"
GONE = "gone"
LINK_DOWN = "link-down"
