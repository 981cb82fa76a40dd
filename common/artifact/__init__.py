"""gapferry.common.artifact."""

__all__: list[str] = []
