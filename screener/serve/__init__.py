"""The daemon: :func:`.daemon.compose` wires every stage in one place, :class:`.daemon.Daemon`
runs them, worker processes are supervised in :mod:`.workers`, health and metrics are
served by :mod:`.health`."""
