"""gapferry.connected.cli."""

__all__: list[str] = []
