"""Acknowledgement and escalation (CONTRACT §8): a person acknowledges, a ladder climbs.

- ``ack``: acknowledging a notification (user, API key or staff), idempotent, synced to the
  user's devices, and the end of its ladder.
- ``ladder``: the planner that queues each step as due work, and the alerts a step sends.
- ``steps``: what a due step does, exactly once across nodes.
- ``expiry``: the record of a notification that expired unacknowledged.
- ``service``: one node's bundle, wired into the scheduler, planners, timeline and bus.
"""
