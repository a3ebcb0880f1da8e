"""localcloud: a local stand-in for Cloud Run (Admin API v2 over REST) and Cloud Monitoring.

It imports nothing of the portal. Start it with `python -m localcloud` or, in tests, with
`localcloud.server.LocalCloud(state_dir).start()`.
"""
