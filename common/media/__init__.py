"""gapferry.common.media: removable media I/O (issue 8).

Find the stick (`detect`), check space and the file size limit before writing (`fsinfo`), copy
one file onto a medium and resume after an interruption (`write`), read back after writing
(`readback`), skip operating-system litter (`junk`), show progress (`progress`), spread a bundle
over several sticks (`span`, bundle_spec/SPAN.md), and eject (`eject`); `cli` is `gapferry media`. Nothing here
knows the bundle format beyond the span index; the writer and reader in common/bundle use these.
"""

__all__: list[str] = []
