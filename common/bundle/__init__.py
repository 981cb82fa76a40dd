"""gapferry.common.bundle."""

__all__: list[str] = []
