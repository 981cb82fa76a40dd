"""gapferry.connected.mender."""

__all__: list[str] = []
