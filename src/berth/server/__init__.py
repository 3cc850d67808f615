"""The realtime adapter: an ASGI app for the Open Inference Protocol v2 and Berth's /v1 JSON."""
