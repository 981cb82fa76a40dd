"""gapferry.isolated."""

__all__: list[str] = []
