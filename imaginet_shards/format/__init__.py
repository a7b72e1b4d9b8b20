"""The on-disk format: annotation files and their labels, tar members and DALI indexes, the manifest,
and the checks every image passes (format, size, decompression-bomb bounds).

Nothing here does I/O beyond the bytes it is given, except reading annotation files and manifests.
"""
