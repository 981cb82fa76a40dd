"""gapferry.connected."""

__all__: list[str] = []
