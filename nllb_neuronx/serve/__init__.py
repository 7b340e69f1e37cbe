"""The HTTP translation service: `nllb-neuronx serve` (server.py), its Starlette app (app.py), the text <-> engine
service (service.py), request bodies (schema.py), Prometheus metrics (metrics.py), Ray Serve (ray_serve.py)."""
