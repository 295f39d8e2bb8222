"""Several data holders build one learnware together with Flower (DESIGN §8).

``config`` reads ``FED.toml``; ``client_app`` is the holder's ClientApp (LoRA training on
its own texts, its DP spec on request); ``server_app`` runs FedAvg over the adapter tensors
(``strategy``: holders that fail are left out down to ``min_holders``), merges the holders'
specs weighted by n, signs and submits; ``deploy`` holds the apps the Flower app folder
``app/`` names (``flwr run``; docs/federation.md); ``run`` runs that app on one machine
with ``flwr run`` on a local simulation SuperLink (Ray); ``result`` carries what the
ServerApp made back to the caller.
"""
