"""Mender Artifacts (format v2/v3): read and verify (`reader`, `signature`), check compatibility
(`compat`), place payloads (`extract`), and write module images (`writer`). Errors: `errors`."""

__all__: list[str] = []
