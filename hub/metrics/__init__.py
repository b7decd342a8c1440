"""What the hub tells about itself and the deployment, one job per module:

- ``registry``: this replica's Prometheus metrics, fed by the observer's hooks (hub/observer.py);
- ``cluster``: the deployment read from Redis at one moment, and the one definition of queue depth;
- ``deployment``: a cluster snapshot and the workers' figures as Prometheus series;
- ``stats``: the WebSocket's periodic ``stats`` message, one snapshot per interval per hub.
"""
