"""``lwm simulate``: a whole learnware market on one machine, evaluated as in the paper.

``config`` (profiles and TOML) -> ``data`` (who holds which real text) -> ``market_process``
(the real server as a child process) -> ``learnwares`` (contributors and federations build
and submit) -> ``users`` (DP search, fetch) -> ``evaluation`` (the user x learnware score
matrix) -> ``contenders`` (Base, Random, Best-single, Learnware, Oracle) -> ``report`` and
``plots``; ``run`` drives the phases.
"""
