"""Clients of the service: the integrator REST client and the command-line socket client."""
