"""gapferry.isolated.installers."""

__all__: list[str] = []
