"""What both sides share: bundle model, signing and trust, streaming digests, Mender Artifacts, media I/O.

Nothing here talks to a network, knows the Mender API, or imports `gapferry.connected` or
`gapferry.isolated` (ADR 0001).
"""

__all__: list[str] = []
