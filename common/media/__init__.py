"""gapferry.common.media."""

__all__: list[str] = []
