"""The embedded stand-in dataset: a small tree that looks like ImagiNet, for tests and the demo.

ImagiNet itself is ~200,000 images; tests and the demo need a small tree with the same source folders
and file names, each source's typical size, aspect and format, the official annotation format, and a
difference between real and synthetic images that a small CNN learns in minutes but that no trivial
statistic (format, size, mean colour, file size) gives away. `sources` says what is imitated, `plan`
which images there are, `render` their pixels, `write` puts them on disk.
"""
from imaginet_shards.sample.plan import SampleItem, SampleOptions, plan_sample
from imaginet_shards.sample.sources import SOURCES, SPLITS
from imaginet_shards.sample.write import SampleSummary, write_sample

__all__ = ["SOURCES", "SPLITS", "SampleItem", "SampleOptions", "SampleSummary", "plan_sample",
           "write_sample"]
