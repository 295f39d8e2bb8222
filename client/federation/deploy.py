"""The apps ``flwr run client/federation/app SUPERLINK`` loads (deployment or simulation).

``client/federation/app/pyproject.toml`` names these module-level objects as its
``[tool.flwr.app.components]`` (Flower finds them by a module-level assignment, so they
must stay plain ``name = ...`` lines). Neither closes over a config: each reads ``FED.toml``
at run time, the ServerApp from the run config ``config`` (``flwr run --run-config
"config='/abs/FED.toml'"``, a path on the SuperLink's machine) and each ClientApp from its
SuperNode's node config ``config`` if set, else the same run config. A SuperNode is holder
K of ``[[holders]]`` when started with ``--node-config "partition-id=K"`` (the simulation
engine numbers its SuperNodes so). ``lwm federate`` runs them on a local simulation
SuperLink (``client.federation.run``). See docs/federation.md.
"""

from __future__ import annotations

from client.federation.client_app import make_client_app
from client.federation.server_app import make_server_app

serverapp = make_server_app()
clientapp = make_client_app()
