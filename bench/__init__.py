"""Throughput benchmark of chatproj (`python -m bench`, `make bench`).

It drives the stack only through its public protocols (WebSocket clients, the Kafka
topic, Celery tasks by name), so it measures any version of the publish path.
"""
